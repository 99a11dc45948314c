package artifact

// open_files through a BPF iterator (agent/procbpf): the kernel walks every
// process's descriptor table once and hands over, per descriptor, what
// readlink of /proc/PID/fd/N and /proc/PID/fdinfo/N would have said. What
// the iterator does not give (stat of files on disk, a deleted name's
// check, a socket owner's container) is still read through /proc, once per
// file rather than per descriptor. A process the iterator did not report
// (a kernel thread, one born or gone mid-scan, or any the kernel skipped)
// is read through /proc as before, so the iterator can only make a scan
// faster, never smaller.

import (
	"io/fs"
	"strconv"
	"syscall"

	"github.com/custodyhq/custody/agent/procbpf"
)

// readOpenFilesBPF turns the iterator's records for p into open_files
// records, exactly as readOpenFiles would have written them.
func readOpenFilesBPF(p snapProc, s *scratch, files *openFileCache, sockets bool, fds []procbpf.File) procBatch {
	out := newProcBatch(p.pid)
	dir := lazyFDDir{p: p, fd: -1}
	defer dir.close()
	var sp *sockProc
	if sockets {
		sp = &sockProc{pid: p.pid, netns: fds[0].NetNS}
	}
	for _, f := range fds {
		fd := f.FD
		name := strconv.Itoa(fd)
		rec := openFileRecord{PID: p.pid, FD: &fd, FlagNames: []string{}}
		if f.PathErr != 0 {
			rec.Error = "path: " + (&fs.PathError{Op: "readlink", Path: p.dir + "/fd/" + name, Err: f.PathErr}).Error()
			addRecord(out, rec, rec.Error)
			continue
		}
		rec.setFDInfo(s, fdInfo{Pos: f.Pos, Flags: f.Flags, MntID: f.MntID, Inode: f.Inode, HasIno: true})
		rec = describeOpenFile(p, s, rec, f.Path, nil, func(rec openFileRecord) (openFileStat, error) {
			fdDir, err := dir.open()
			if err != nil {
				return openFileStat{}, err
			}
			return statOpenFile(fdDir, p.dir, name, rec, files)
		})
		sp.noteSocket(fd, rec)
		addRecord(out, rec, rec.Error)
	}
	b := out.done()
	if sp != nil {
		if len(sp.sockets) > 0 {
			// The name is the iterator's (the task's comm, as
			// /proc/PID/comm shows it); the container needs the cgroup.
			sp.name = fds[0].Comm
			if h, err := openProc(p); err == nil {
				sp.container = socketOwnerContainer(h, s)
				h.close()
			}
		}
		b.sock = sp
	}
	return b
}

// lazyFDDir opens /proc/PID/fd on first use: with the stat cache, most
// processes never need it.
type lazyFDDir struct {
	p   snapProc
	fd  int
	err error
}

func (d *lazyFDDir) open() (int, error) {
	if d.fd >= 0 || d.err != nil {
		return d.fd, d.err
	}
	fd, err := retryEINTR(func() (int, error) {
		return syscall.Open(d.p.dir+"/fd", syscall.O_RDONLY|syscall.O_DIRECTORY|syscall.O_CLOEXEC, 0)
	})
	if err != nil {
		d.err = &fs.PathError{Op: "open", Path: d.p.dir + "/fd", Err: err}
		return -1, d.err
	}
	d.fd = fd
	return fd, nil
}

func (d *lazyFDDir) close() {
	if d.fd >= 0 {
		syscall.Close(d.fd)
	}
}
