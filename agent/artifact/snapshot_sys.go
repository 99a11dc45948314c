package artifact

// Reading /proc is most of a snapshot's cost, and most of that is system
// calls: a busy host has tens of thousands of descriptors, each worth a
// readlink, an fdinfo read and a stat. Two things make those calls cheap:
//
//   - Every file of a process is opened relative to one descriptor of its
//     /proc/PID directory (openat, readlinkat, fstatat), so the kernel does
//     not walk /proc and look the pid up again for each file.
//   - Files are opened with raw system calls into reused buffers. A file
//     opened through os costs an fstat, four fcntls and a failed epoll_ctl
//     besides the open, read and close, plus a finalizer; on a /proc file
//     read once that is overhead, not safety.

import (
	"errors"
	"io/fs"
	"slices"
	"strconv"

	"golang.org/x/sys/unix"
)

// procHandle is an open /proc/PID directory.
type procHandle struct {
	snapProc
	fd int
}

// openProc opens p's directory. O_PATH: the descriptor is only ever a
// base for *at calls, which needs no read permission on the directory.
func openProc(p snapProc) (procHandle, error) {
	fd, err := retryEINTR(func() (int, error) {
		return unix.Open(p.dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	})
	if err != nil {
		return procHandle{snapProc: p, fd: -1}, &fs.PathError{Op: "open", Path: p.dir, Err: err}
	}
	return procHandle{snapProc: p, fd: fd}, nil
}

func (h procHandle) close() {
	if h.fd >= 0 {
		unix.Close(h.fd)
	}
}

func retryEINTR(f func() (int, error)) (int, error) {
	for {
		n, err := f()
		if !errors.Is(err, unix.EINTR) {
			return n, err
		}
	}
}

// scratch is one worker's reusable buffers.
type scratch struct {
	file []byte // file contents
	link []byte // link targets
	dir  []byte // getdents
	// Text that repeats across records, made once per worker: fdinfo
	// flags and device numbers take a handful of values on a host.
	flags map[uint64]flagText
	devs  map[uint64]string
}

// flagText is an fdinfo flags value as open_files writes it.
type flagText struct {
	octal, access string
	names         []string // shared between records: never modified
}

func (s *scratch) flagText(flags uint64) flagText {
	if ft, ok := s.flags[flags]; ok {
		return ft
	}
	ft := flagText{octal: "0" + strconv.FormatUint(flags, 8)}
	ft.access, ft.names = describeOpenFlags(flags)
	if s.flags == nil {
		s.flags = map[uint64]flagText{}
	}
	s.flags[flags] = ft
	return ft
}

func (s *scratch) devString(dev uint64) string {
	if d, ok := s.devs[dev]; ok {
		return d
	}
	d := devString(dev)
	if s.devs == nil {
		s.devs = map[uint64]string{}
	}
	s.devs[dev] = d
	return d
}

// newScratch allocates a worker's buffers, once per scan: a sync.Pool
// would be emptied by every garbage collection, and a scan allocates
// enough to collect often.
func newScratch() *scratch {
	return &scratch{file: make([]byte, 4*maxMapsLineLen), link: make([]byte, unix.PathMax+64), dir: make([]byte, 16<<10)}
}

// readFile reads name below dirfd, at most max bytes, into s.file (grown
// as needed). The result aliases s.file: it is valid until the next read.
// A short read is the end: seq_file and single_open files, which is
// nearly all of /proc, fill every read they can; the files that are not
// (cmdline, environ) are read until a read returns nothing.
func (s *scratch) readFile(dirfd int, name, display string, max int, untilEOF bool) (data []byte, truncated bool, err error) {
	fd, err := retryEINTR(func() (int, error) {
		return unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_CLOEXEC|unix.O_NOCTTY, 0)
	})
	if err != nil {
		return nil, false, &fs.PathError{Op: "open", Path: display, Err: err}
	}
	defer unix.Close(fd)
	n := 0
	for {
		if n == len(s.file) {
			if n > max {
				break
			}
			grown := make([]byte, min(2*len(s.file), max+1))
			copy(grown, s.file[:n])
			s.file = grown
		}
		m, err := retryEINTR(func() (int, error) { return unix.Read(fd, s.file[n:]) })
		if err != nil {
			return nil, false, &fs.PathError{Op: "read", Path: display, Err: err}
		}
		n += m
		if m == 0 || (!untilEOF && n < len(s.file)) {
			break
		}
	}
	if n > max {
		return s.file[:max], true, nil
	}
	return s.file[:n], false, nil
}

func (h procHandle) read(s *scratch, name string, max int) ([]byte, bool, error) {
	return s.readFile(h.fd, name, h.dir+"/"+name, max, false)
}

// readStream is read for files that are not seq_files and may return
// short reads before their end (cmdline, environ).
func (h procHandle) readStream(s *scratch, name string, max int) ([]byte, bool, error) {
	return s.readFile(h.fd, name, h.dir+"/"+name, max, true)
}

// readlink returns the target of name below dirfd.
func (s *scratch) readlink(dirfd int, name, display string) (string, error) {
	for {
		n, err := unix.Readlinkat(dirfd, name, s.link)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return "", &fs.PathError{Op: "readlink", Path: display, Err: err}
		}
		if n < len(s.link) {
			return string(s.link[:n]), nil
		}
		// A target may exceed PATH_MAX (the kernel builds it from the
		// dentry, not from a path anyone passed).
		if len(s.link) >= 1<<20 {
			return string(s.link[:n]), nil
		}
		s.link = make([]byte, 2*len(s.link))
	}
}

func (h procHandle) readlink(s *scratch, name string) (string, error) {
	return s.readlink(h.fd, name, h.dir+"/"+name)
}

// stat follows name below dirfd (for /proc/PID/fd/N: to the open file).
func statAt(dirfd int, name, display string, st *unix.Stat_t) error {
	for {
		err := unix.Fstatat(dirfd, name, st, 0)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return &fs.PathError{Op: "stat", Path: display, Err: err}
		}
		return nil
	}
}

// openSubdir opens a directory below the process directory for listing
// and as a base for *at calls.
func (h procHandle) openSubdir(name string) (int, error) {
	fd, err := retryEINTR(func() (int, error) {
		return unix.Openat(h.fd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	})
	if err != nil {
		return -1, &fs.PathError{Op: "open", Path: h.dir + "/" + name, Err: err}
	}
	return fd, nil
}

// listNumeric lists the numeric names of an open directory, sorted: the
// descriptors of /proc/PID/fd.
func (s *scratch) listNumeric(dirfd int, display string) ([]int, error) {
	var nums []int
	var names []string
	for {
		n, err := unix.ReadDirent(dirfd, s.dir)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return nil, &fs.PathError{Op: "readdirent", Path: display, Err: err}
		}
		if n <= 0 {
			break
		}
		names = names[:0]
		_, _, names = unix.ParseDirent(s.dir[:n], -1, names)
		for _, name := range names {
			if v, err := strconv.Atoi(name); err == nil {
				nums = append(nums, v)
			}
		}
	}
	slices.Sort(nums)
	return nums, nil
}

// fileID is a file's identity as stat gives it.
type fileID struct{ dev, ino uint64 }

// namespace reads the inode of the process's namespace of kind.
func (h procHandle) namespace(s *scratch, kind string) (uint64, error) {
	target, err := h.readlink(s, "ns/"+kind)
	if err != nil {
		return 0, err
	}
	return parseNSLink(kind, target)
}
