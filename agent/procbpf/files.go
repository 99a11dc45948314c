// Package procbpf reads what the snapshots would otherwise read from /proc
// one system call at a time, with BPF iterators: a program the kernel runs
// once per object (per open file of every process: Files; per process:
// Tasks), writing records into a file the agent reads in large pieces. On
// a host with tens of thousands of descriptors, readlink plus an fdinfo
// open, read and close per descriptor is most of a snapshot's cost; the
// iterator is one pass.
//
// It needs CAP_BPF and CAP_PERFMON (or root), a kernel with BTF and BPF
// iterators, and the agent in the initial PID namespace (the iterator
// reports global pids). Where any of that is missing, Open says why, and
// the caller reads /proc instead.
package procbpf

import (
	"bufio"
	"bytes"
	_ "embed"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strings"
	"syscall"
)

//go:embed files.bpf.o
var filesObject []byte

// File is one descriptor: what readlink of /proc/PID/fd/N and
// /proc/PID/fdinfo/N say about it.
type File struct {
	PID   int
	FD    int
	Flags uint64 // fdinfo's flags: the file's f_flags, O_CLOEXEC from the table
	MntID int64
	Pos   int64
	Inode uint64
	NetNS uint64 // the inode of the process's network namespace
	Path  string // the link target
	// PathErr is the errno d_path failed with (0: Path is valid).
	PathErr syscall.Errno
	Comm    string // the process's /proc/PID/comm, without the newline
}

// recordSize is struct file_rec in files.bpf.c.
const recordSize = 56

// commLen is the kernel's TASK_COMM_LEN.
const commLen = 16

// maxPath bounds a record's path: the program's buffer.
const maxPath = 4096

// Files is an open iteration over every open file of every process.
type Files struct {
	iter *iterator
	r    *Reader
}

// OpenFiles loads the iterator and starts an iteration; procRoot must be
// the host's /proc as this process sees it.
func OpenFiles(procRoot string) (*Files, error) {
	it, err := openIterator(procRoot, filesObject, "custody_files", "task_file")
	if err != nil {
		return nil, err
	}
	return &Files{iter: it, r: NewReader(it.rc)}, nil
}

// Next returns the next descriptor, or io.EOF after the last.
func (f *Files) Next() (File, error) { return f.r.Next() }

// Close ends the iteration and unloads the program.
func (f *Files) Close() error { return f.iter.close() }

// AppendRecord appends f as files.bpf.c writes it: the encoder the
// parser's tests and fuzzing are checked against.
func AppendRecord(b []byte, f File) []byte {
	le := binary.LittleEndian
	b = le.AppendUint32(b, uint32(f.PID))
	b = le.AppendUint32(b, uint32(f.FD))
	b = le.AppendUint32(b, uint32(f.Flags))
	b = le.AppendUint32(b, uint32(int32(f.MntID)))
	b = le.AppendUint64(b, uint64(f.Pos))
	b = le.AppendUint64(b, f.Inode)
	b = le.AppendUint32(b, uint32(f.NetNS))
	if f.PathErr != 0 {
		b = le.AppendUint32(b, uint32(-int32(f.PathErr)))
	} else {
		b = le.AppendUint32(b, uint32(len(f.Path)))
	}
	var comm [commLen]byte
	copy(comm[:], f.Comm)
	b = append(b, comm[:]...)
	if f.PathErr == 0 {
		b = append(b, f.Path...)
	}
	return b
}

// parseComm reads a NUL-padded TASK_COMM_LEN field. The kernel always
// ends the name with a NUL inside it; bytes after the first NUL must be
// NUL too, or the record is not what the program writes.
func parseComm(b []byte) (string, error) {
	i := bytes.IndexByte(b, 0)
	if i < 0 {
		return "", fmt.Errorf("comm %q not NUL-terminated", b)
	}
	for _, c := range b[i:] {
		if c != 0 {
			return "", fmt.Errorf("comm %q has bytes after its end", b)
		}
	}
	return string(b[:i]), nil
}

// readPath reads the path a record's length field n announces: -errno when
// n is negative, nothing when it is 0, else n bytes (at most max), which
// may hold no NUL.
func readPath(br *bufio.Reader, buf []byte, n int32, max int) (string, syscall.Errno, error) {
	switch {
	case n < 0:
		if n < -4095 {
			return "", 0, fmt.Errorf("path error %d out of range", n)
		}
		return "", syscall.Errno(-n), nil
	case int(n) > max:
		return "", 0, fmt.Errorf("path length %d over %d", n, max)
	case n == 0:
		return "", 0, nil
	}
	if _, err := io.ReadFull(br, buf[:n]); err != nil {
		return "", 0, fmt.Errorf("%w: path: %w", ErrTruncated, err)
	}
	path := string(buf[:n])
	if strings.IndexByte(path, 0) >= 0 {
		return "", 0, fmt.Errorf("NUL in path %q", path)
	}
	return path, 0, nil
}

// Reader parses the iterator's records.
type Reader struct {
	br  *bufio.Reader
	hdr [recordSize]byte
	buf []byte
	n   int // records read
}

// NewReader parses records from r.
func NewReader(r io.Reader) *Reader {
	return &Reader{br: bufio.NewReaderSize(r, 256<<10), buf: make([]byte, maxPath)}
}

// ErrTruncated is a record cut short: the iteration ended mid-record.
var ErrTruncated = errors.New("bpf: truncated record")

// Next parses one record; io.EOF after the last whole record.
func (r *Reader) Next() (File, error) {
	if _, err := io.ReadFull(r.br, r.hdr[:]); err != nil {
		if err == io.ErrUnexpectedEOF {
			return File{}, fmt.Errorf("%w: record %d header", ErrTruncated, r.n)
		}
		return File{}, err // io.EOF: the end
	}
	le := binary.LittleEndian
	f := File{
		PID:   int(le.Uint32(r.hdr[0:])),
		FD:    int(le.Uint32(r.hdr[4:])),
		Flags: uint64(le.Uint32(r.hdr[8:])),
		MntID: int64(int32(le.Uint32(r.hdr[12:]))),
		Pos:   int64(le.Uint64(r.hdr[16:])),
		Inode: le.Uint64(r.hdr[24:]),
		NetNS: uint64(le.Uint32(r.hdr[32:])),
	}
	comm, err := parseComm(r.hdr[40:56])
	if err != nil {
		return File{}, fmt.Errorf("bpf: record %d: %w", r.n, err)
	}
	f.Comm = comm
	if f.Path, f.PathErr, err = readPath(r.br, r.buf, int32(le.Uint32(r.hdr[36:])), maxPath); err != nil {
		return File{}, fmt.Errorf("bpf: record %d: %w", r.n, err)
	}
	r.n++
	return f, nil
}
