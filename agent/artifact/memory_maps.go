package artifact

import (
	"bytes"
	"context"
	"io"
	"io/fs"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

func init() {
	register(Kind{
		Name:    "memory_maps",
		Ext:     "jsonl",
		Doc:     "one JSON line per memory mapping of every process (osquery process_memory_map columns)",
		Collect: collectMemoryMaps,
	})
}

// memoryMapRecord is one mapping. start and end are hex strings, as osquery
// gives them, because addresses above 2^53 do not survive a JSON number in
// most readers. pseudo marks a mapping with a name but no file (inode 0):
// [heap], [stack], [vdso], [anon:name]. deleted means the kernel marks the
// mapped file unlinked, the trace of a library or binary removed after it
// was mapped.
type memoryMapRecord struct {
	PID         int     `json:"pid"`
	Start       string  `json:"start"`
	End         string  `json:"end"`
	Size        *uint64 `json:"size"`
	Permissions string  `json:"permissions"`
	Offset      *uint64 `json:"offset"`
	Device      string  `json:"device"`
	Inode       *uint64 `json:"inode"`
	Path        string  `json:"path"`
	Pseudo      bool    `json:"pseudo"`
	Deleted     bool    `json:"deleted"`
	Error       string  `json:"error,omitempty"`
}

// maxMapsLineLen bounds one line of /proc/PID/maps: a PATH_MAX path plus the
// fixed columns, with room to spare.
const maxMapsLineLen = 16 << 10

func collectMemoryMaps(ctx context.Context, env Env, _ Params, w io.Writer) (Result, error) {
	return scanProcesses(ctx, env, w, "memory_maps", "mappings", readMemoryMaps, nil)
}

func readMemoryMaps(p snapProc, s *scratch) procBatch {
	out := newProcBatch(p.pid)
	tableError := func(err error) procBatch {
		if p.gone(err) {
			return procBatch{pid: p.pid, gone: true}
		}
		addMap(out, memoryMapRecord{PID: p.pid, Error: "maps: " + err.Error()}, "maps: "+err.Error())
		return out.done()
	}
	h, err := openProc(p)
	if err != nil {
		return tableError(err)
	}
	defer h.close()
	err = eachMapsLine(h, s, func(line []byte) {
		m, err := parseMemoryMapLine(string(line))
		if err != nil {
			addMap(out, memoryMapRecord{PID: p.pid, Error: err.Error()}, err.Error())
			return
		}
		size := m.End - m.Start
		rec := memoryMapRecord{
			PID: p.pid, Start: "0x" + strconv.FormatUint(m.Start, 16), End: "0x" + strconv.FormatUint(m.End, 16),
			Size: &size, Permissions: m.Perms, Offset: &m.Offset, Device: m.Device, Inode: &m.Inode,
			Path: m.Path, Pseudo: m.Inode == 0 && m.Path != "",
		}
		if m.Inode != 0 {
			rec.Path, rec.Deleted = deletedTarget(p, m.Path, nil)
		} else if strings.HasPrefix(m.Path, "/") {
			// Shared anonymous memory ("/dev/zero (deleted)", "/SYSV...")
			// has inode 0 on some kernels; it is no file a responder can
			// fetch, so the kernel's marker stays part of the name.
			rec.Pseudo = false
		}
		addMap(out, rec, "")
	})
	if err != nil {
		if out.b.records == 0 {
			return tableError(err)
		}
		// A process that exits mid-read ends its maps early; what was
		// read stands. Anything else is said on one more record.
		if !p.gone(err) {
			addMap(out, memoryMapRecord{PID: p.pid, Error: "maps: " + err.Error()}, "maps: "+err.Error())
		}
	}
	return out.done()
}

// eachMapsLine reads /proc/PID/maps line by line through s's buffer. A
// line longer than maxMapsLineLen (no real one is) is cut there.
func eachMapsLine(h procHandle, s *scratch, fn func([]byte)) error {
	display := h.dir + "/maps"
	fd, err := retryEINTR(func() (int, error) {
		return unix.Openat(h.fd, "maps", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	})
	if err != nil {
		return &fs.PathError{Op: "open", Path: display, Err: err}
	}
	defer unix.Close(fd)
	if len(s.file) < 4*maxMapsLineLen {
		s.file = make([]byte, 4*maxMapsLineLen)
	}
	buf, n := s.file, 0
	for {
		m, err := retryEINTR(func() (int, error) { return unix.Read(fd, buf[n:]) })
		if err != nil {
			return &fs.PathError{Op: "read", Path: display, Err: err}
		}
		n += m
		start := 0
		for {
			i := bytes.IndexByte(buf[start:n], '\n')
			if i < 0 {
				break
			}
			fn(buf[start : start+i])
			start += i + 1
		}
		if m == 0 {
			if start < n {
				fn(buf[start:n]) // a last line without a newline
			}
			return nil
		}
		n = copy(buf, buf[start:n])
		if n >= maxMapsLineLen {
			fn(buf[:maxMapsLineLen])
			n = 0
		}
	}
}
