package procbpf

import (
	"bufio"
	_ "embed"
	"encoding/binary"
	"fmt"
	"io"
	"syscall"
)

//go:embed tasks.bpf.o
var tasksObject []byte

// Namespace kinds, in the order of Task.NS and of tasks.bpf.c.
const (
	NSCgroup = iota
	NSIPC
	NSMnt
	NSNet
	NSPID
	NSUser
	NSUTS
	nsCount
)

// Bits of Task.Present past the namespaces'.
const (
	HaveLoginUID = nsCount + iota
	HaveExe
	HaveCwd
	HaveRoot
)

// Task is one process: what its /proc/PID/{exe,cwd,root} links, its
// /proc/PID/ns/* links and /proc/PID/loginuid say. A value whose bit is
// not in Present was not established (a kernel thread has no exe; an
// exiting process no namespaces) and must be read through /proc.
type Task struct {
	PID      int
	Present  uint32
	NS       [nsCount]uint64 // namespace inodes, by NS* kind
	LoginUID uint64
	Exe      string
	Cwd      string
	Root     string
	// The errno d_path failed with for each path (0: the path is valid).
	ExeErr, CwdErr, RootErr syscall.Errno
}

// Has reports whether bit (an NS* kind or a Have* bit) is present.
func (t Task) Has(bit int) bool { return t.Present&(1<<bit) != 0 }

// taskRecordSize is struct task_rec in tasks.bpf.c.
const taskRecordSize = 4 + 4 + 4*nsCount + 4 + 3*4

// Tasks is an open iteration over every process.
type Tasks struct {
	iter *iterator
	r    *TaskReader
}

// OpenTasks loads the iterator and starts an iteration; procRoot must be
// the host's /proc as this process sees it.
func OpenTasks(procRoot string) (*Tasks, error) {
	it, err := openIterator(procRoot, tasksObject, "custody_tasks", "task")
	if err != nil {
		return nil, err
	}
	return &Tasks{iter: it, r: NewTaskReader(it.rc)}, nil
}

// Next returns the next process, or io.EOF after the last.
func (t *Tasks) Next() (Task, error) { return t.r.Next() }

// Close ends the iteration and unloads the program.
func (t *Tasks) Close() error { return t.iter.close() }

// AppendTask appends t as tasks.bpf.c writes it: the encoder the parser's
// tests and fuzzing are checked against.
func AppendTask(b []byte, t Task) []byte {
	le := binary.LittleEndian
	b = le.AppendUint32(b, uint32(t.PID))
	b = le.AppendUint32(b, t.Present)
	for _, ns := range t.NS {
		b = le.AppendUint32(b, uint32(ns))
	}
	b = le.AppendUint32(b, uint32(t.LoginUID))
	paths := []struct {
		s   string
		err syscall.Errno
	}{{t.Exe, t.ExeErr}, {t.Cwd, t.CwdErr}, {t.Root, t.RootErr}}
	for _, p := range paths {
		if p.err != 0 {
			b = le.AppendUint32(b, uint32(-int32(p.err)))
		} else {
			b = le.AppendUint32(b, uint32(len(p.s)))
		}
	}
	for _, p := range paths {
		if p.err == 0 {
			b = append(b, p.s...)
		}
	}
	return b
}

// TaskReader parses the task iterator's records.
type TaskReader struct {
	br  *bufio.Reader
	hdr [taskRecordSize]byte
	buf []byte
	n   int
}

// NewTaskReader parses records from r.
func NewTaskReader(r io.Reader) *TaskReader {
	return &TaskReader{br: bufio.NewReaderSize(r, 64<<10), buf: make([]byte, maxPath)}
}

// Next parses one record; io.EOF after the last whole record.
func (r *TaskReader) Next() (Task, error) {
	if _, err := io.ReadFull(r.br, r.hdr[:]); err != nil {
		if err == io.ErrUnexpectedEOF {
			return Task{}, fmt.Errorf("%w: task record %d header", ErrTruncated, r.n)
		}
		return Task{}, err
	}
	le := binary.LittleEndian
	t := Task{PID: int(le.Uint32(r.hdr[0:])), Present: le.Uint32(r.hdr[4:])}
	if t.Present >= 1<<(HaveRoot+1) {
		return Task{}, fmt.Errorf("bpf: task record %d: unknown present bits %#x", r.n, t.Present)
	}
	for i := range t.NS {
		t.NS[i] = uint64(le.Uint32(r.hdr[8+4*i:]))
	}
	off := 8 + 4*nsCount
	t.LoginUID = uint64(le.Uint32(r.hdr[off:]))
	for i, dst := range []struct {
		s   *string
		err *syscall.Errno
	}{{&t.Exe, &t.ExeErr}, {&t.Cwd, &t.CwdErr}, {&t.Root, &t.RootErr}} {
		var err error
		if *dst.s, *dst.err, err = readPath(r.br, r.buf, int32(le.Uint32(r.hdr[off+4+4*i:])), maxPath-1); err != nil {
			return Task{}, fmt.Errorf("bpf: task record %d: %w", r.n, err)
		}
	}
	r.n++
	return t, nil
}
