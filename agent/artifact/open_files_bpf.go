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
	"context"
	"fmt"
	"io"
	"io/fs"
	"strconv"
	"syscall"

	"github.com/custodyhq/custody/agent/procbpf"
)

// Values of the open_files "method" parameter.
const (
	methodAuto   = "auto"   // the BPF iterator where it loads, else /proc
	methodBPF    = "bpf"    // the iterator or an error
	methodProcfs = "procfs" // /proc only
)

func parseReadMethod(p Params) (string, error) {
	switch m := p["method"]; m {
	case "", methodAuto:
		return methodAuto, nil
	case methodBPF, methodProcfs:
		return m, nil
	default:
		return "", fmt.Errorf("%w: method %q (want auto, bpf or procfs)", ErrBadParam, m)
	}
}

// pidStream cuts an iterator's stream, which is in pid order, into one
// piece per process. It is used from one goroutine (the scan's prep).
type pidStream[T any] struct {
	it interface{ Next() (T, error) }
	// pid says whose a record is.
	pid  func(T) int
	next T
	have bool
	err  error // io.EOF at the end; anything else stopped the stream early
}

// take returns the records the iterator reported for pid; ok is false
// when it reported none, or the stream failed before or within pid's
// records, and pid must be read through /proc.
func (b *pidStream[T]) take(pid int) (recs []T, ok bool) {
	for {
		if !b.have {
			if b.err != nil {
				break
			}
			r, err := b.it.Next()
			if err != nil {
				b.err = err
				if err != io.EOF {
					return nil, false // a torn piece is not a process's
				}
				break
			}
			b.next, b.have = r, true
		}
		if p := b.pid(b.next); p > pid {
			break
		} else if p == pid {
			recs = append(recs, b.next)
		}
		// Lower pids were not in the listing (born after it) or came
		// out of order; their processes are read through /proc.
		b.have = false
	}
	return recs, len(recs) > 0
}

// failed is the error that stopped the stream early, or nil.
func (b *pidStream[T]) failed() error {
	if b.err == nil || b.err == io.EOF {
		return nil
	}
	return b.err
}

// bpfDetails records in a scan's details how it read /proc: the method,
// why the iterator was not used, or why it stopped early (the processes
// after that were read through /proc).
func bpfDetails(res *Result, used bool, unavailable, failed error) {
	if res.Details == nil {
		return
	}
	res.Details["method"] = methodProcfs
	if used {
		res.Details["method"] = "bpf_iter"
	}
	if failed != nil {
		res.Details["bpf_error"] = failed.Error()
		res.Warnings = append(res.Warnings, "bpf iterator stopped early, the rest was read through /proc: "+failed.Error())
	}
	if unavailable != nil {
		res.Details["bpf_unavailable"] = unavailable.Error()
	}
}

// openIterator opens an iterator for a scan by method: nil and the reason
// when auto falls back to /proc, an error when method bpf cannot have it.
func openIterator[I any](ctx context.Context, env Env, name, method string, open func(string) (I, error)) (it I, ok bool, unavailable, err error) {
	if method == methodProcfs || ctx.Err() != nil {
		return it, false, nil, nil
	}
	if env.ProcRoot != "/proc" {
		unavailable = fmt.Errorf("bpf: procfs root is %s, not the live /proc", env.ProcRoot)
	} else if it, unavailable = open(env.ProcRoot); unavailable == nil {
		return it, true, nil, nil
	}
	if method == methodBPF {
		return it, false, nil, fmt.Errorf("%s: method bpf: %w", name, unavailable)
	}
	return it, false, unavailable, nil
}

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
