package artifact

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

var (
	// ErrPtraceDenied is returned for a process whose memory the kernel's
	// ptrace access check refuses: the agent holds no CAP_SYS_PTRACE and the
	// process belongs to another user or holds capabilities the agent lacks.
	ErrPtraceDenied = errors.New("ptrace access denied")
	// ErrPtraceScope is returned when Yama's kernel.yama.ptrace_scope is what
	// refuses: 1 and 2 admit only a tracer with CAP_SYS_PTRACE (1 also a
	// parent), 3 admits nobody until reboot.
	ErrPtraceScope = errors.New("ptrace refused by Yama ptrace_scope")
	// ErrNoProcess is returned when the selection matches no process.
	ErrNoProcess = errors.New("no process to capture")
	// ErrProcessGone is returned for a process that exited before its
	// capture began.
	ErrProcessGone = errors.New("process exited")
)

// capSysPtraceBit is CAP_SYS_PTRACE's bit number.
const capSysPtraceBit = 19

// agentHasCapSysPtrace reports whether the agent holds CAP_SYS_PTRACE in its
// effective set: in a Fargate sidecar, the one capability that can be added.
func agentHasCapSysPtrace() bool {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return false
	}
	return data[0].Effective&(1<<capSysPtraceBit) != 0
}

// yamaPtraceScope returns kernel.yama.ptrace_scope, or -1 without Yama.
func yamaPtraceScope(procRoot string) int {
	b, err := readSmall(filepath.Join(procRoot, "sys", "kernel", "yama", "ptrace_scope"))
	if err != nil {
		return -1
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return -1
	}
	return n
}

// ptraceError names why the kernel refused op on pid, when err is a
// permission error; otherwise it only adds the context. scope is Yama's
// ptrace_scope (-1 without Yama) and hasCap whether the agent holds
// CAP_SYS_PTRACE: the two facts that tell a responder what to change.
func ptraceError(pid int, op string, err error, scope int, hasCap bool) error {
	if !errors.Is(err, syscall.EPERM) && !errors.Is(err, syscall.EACCES) {
		return fmt.Errorf("pid %d: %s: %w", pid, op, err)
	}
	switch {
	case scope >= 3:
		return fmt.Errorf("pid %d: %s: %w=%d: no process may be traced until reboot, whatever its capabilities (%w)", pid, op, ErrPtraceScope, scope, err)
	case scope >= 1 && !hasCap:
		return fmt.Errorf("pid %d: %s: %w=%d: only a tracer holding CAP_SYS_PTRACE may read this process; grant the agent CAP_SYS_PTRACE (%w)", pid, op, ErrPtraceScope, scope, err)
	case !hasCap:
		return fmt.Errorf("pid %d: %s: %w: the agent lacks CAP_SYS_PTRACE and the process runs as another user, is not dumpable, or holds capabilities the agent lacks (%w)", pid, op, ErrPtraceDenied, err)
	default:
		return fmt.Errorf("pid %d: %s: %w despite CAP_SYS_PTRACE: a security module (SELinux, AppArmor), seccomp, or a process in an ancestor user namespace (%w)", pid, op, ErrPtraceDenied, err)
	}
}

// procMemReader reads another process's memory.
//
// The fast path is process_vm_readv, which copies straight into our buffer.
// It names the process by pid, and a pid can be reused once its process has
// exited, so every read is followed by a check of a pidfd, which always
// refers to the process it was opened for: memory that reached us while the
// process was alive is that process's memory. Without pidfds (kernels before
// 5.3) or when seccomp forbids process_vm_readv (container runtimes' default
// profiles do without CAP_SYS_PTRACE), reads go through /proc/PID/mem, whose
// open file is tied to the process's address space and so needs no check.
type procMemReader struct {
	pid   int
	mem   *os.File // nil when only process_vm_readv may be used
	pidfd int      // -1 without
	vm    bool
}

// openProcMemReader opens pid's memory. The open of /proc/PID/mem is the
// kernel's ptrace access check (PTRACE_MODE_ATTACH), so a permission
// problem surfaces here, before anything is written. startTicks, from the
// selection, proves the open file belongs to the process selected rather
// than a successor with the same pid.
//
// ownNS says that procRoot is the procfs of the agent's own pid namespace;
// only then does a pid from it name the same process to process_vm_readv
// and pidfd_open. A host /proc mounted into a container at /host/proc holds
// the host's pids, and those go through /proc/PID/mem alone.
func openProcMemReader(procRoot string, pid int, startTicks uint64, ownNS bool) (*procMemReader, error) {
	m := &procMemReader{pid: pid, pidfd: -1}
	if ownNS {
		if fd, err := unix.PidfdOpen(pid, 0); err == nil {
			m.pidfd, m.vm = fd, true
		}
	}
	mem, err := os.Open(filepath.Join(procRoot, strconv.Itoa(pid), "mem"))
	switch {
	case err == nil:
		m.mem = mem
	case errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ESRCH):
		m.Close()
		return nil, fmt.Errorf("pid %d: %w", pid, ErrProcessGone)
	case m.vm && (errors.Is(err, syscall.EACCES) || errors.Is(err, syscall.EPERM)):
		// /proc/PID/mem is mode 0600 and owned by the target's user, so an
		// agent of another uid holding CAP_SYS_PTRACE but not
		// CAP_DAC_OVERRIDE — a non-root sidecar — cannot open it, while
		// process_vm_readv, checked by ptrace rules alone, works. Whether
		// it does is settled by probe before anything is written.
	default:
		m.Close()
		return nil, ptraceError(pid, "open memory", err, yamaPtraceScope(procRoot), agentHasCapSysPtrace())
	}
	// Checked after both opens: if the process still has the start time
	// it was selected with, both handles name it.
	if st, err := procMemStartTicks(procRoot, pid); err != nil || st != startTicks {
		m.Close()
		return nil, fmt.Errorf("pid %d: %w (its pid now names another process)", pid, ErrProcessGone)
	}
	return m, nil
}

func (m *procMemReader) method() string {
	if m.vm {
		return "process_vm_readv"
	}
	return "/proc/PID/mem"
}

func (m *procMemReader) Close() error {
	if m.pidfd >= 0 {
		unix.Close(m.pidfd)
		m.pidfd = -1
	}
	if m.mem == nil {
		return nil
	}
	return m.mem.Close()
}

// probe reads one byte of the first regions that should be readable, so
// that a permission problem, or a process that has just exited, is reported
// as such before the core is begun, not discovered as a core full of
// unreadable pages.
func (m *procMemReader) probe(regions []procRegion) error {
	var b [1]byte
	tried := 0
	for _, r := range regions {
		if !r.Read || r.kernelSpecial() {
			continue
		}
		_, err := m.ReadAt(b[:], r.Start)
		if err == nil {
			return nil
		}
		if errors.Is(err, errProcExited) || errors.Is(err, syscall.EPERM) || errors.Is(err, syscall.EACCES) {
			return err
		}
		if tried++; tried == 3 {
			return nil
		}
	}
	return nil
}

// procRootIsOwn reports whether procRoot is the procfs of the agent's pid
// namespace: its "self" link then names the agent by the agent's own pid.
func procRootIsOwn(procRoot string) bool {
	l, err := os.Readlink(filepath.Join(procRoot, "self"))
	return err == nil && l == strconv.Itoa(os.Getpid())
}

// errProcExited marks a read that found the process gone.
var errProcExited = errors.New("process exited during capture")

// exited polls the pidfd: readable means the process has exited.
func (m *procMemReader) exited() bool {
	if m.pidfd < 0 {
		return false
	}
	fds := []unix.PollFd{{Fd: int32(m.pidfd), Events: unix.POLLIN}}
	for {
		n, err := unix.Poll(fds, 0)
		if err == unix.EINTR {
			continue
		}
		return err == nil && n > 0
	}
}

// ReadAt reads up to len(p) bytes at addr. Short of len(p), the byte at
// addr+n could not be read; err says why, and is errProcExited once the process
// is gone.
func (m *procMemReader) ReadAt(p []byte, addr uint64) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if m.vm {
		n, err := m.readVM(p, addr)
		if err == nil || (err != syscall.ENOSYS && err != syscall.EPERM) {
			if n > 0 && m.exited() {
				return 0, errProcExited
			}
			if err == syscall.ESRCH {
				err = errProcExited
			}
			return n, err
		}
		if m.mem == nil {
			return n, err
		}
		// seccomp or an old kernel: fall back for good.
		m.vm = false
	}
	n, err := m.mem.ReadAt(p, int64(addr))
	if err == io.EOF {
		// /proc/PID/mem reads nothing once the address space is gone.
		err = errProcExited
	}
	return n, err
}

func (m *procMemReader) readVM(p []byte, addr uint64) (int, error) {
	local := []unix.Iovec{{Base: &p[0]}}
	local[0].SetLen(len(p))
	remote := []unix.RemoteIovec{{Base: uintptr(addr), Len: len(p)}}
	for {
		n, err := unix.ProcessVMReadv(m.pid, local, remote, 0)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return 0, err
		}
		if n < len(p) {
			return n, syscall.EFAULT
		}
		return n, nil
	}
}

// procSkipLog collects the unreadable ranges of a capture, merging neighbours
// with the same reason. Past max entries it merges regardless of the gap,
// so the list over-reports rather than grows without bound: a range listed
// as unreadable that was in fact read is a smaller lie than a missing one.
type procSkipLog struct {
	ranges []Range
	max    int
	merged bool
}

func (s *procSkipLog) add(start, end uint64, reason string) {
	if n := len(s.ranges); n > 0 {
		last := &s.ranges[n-1]
		if last.End == start && last.Reason == reason {
			last.End = end
			return
		}
		if n >= s.max {
			last.End = end
			if !s.merged {
				last.Reason += " (and further unreadable ranges up to End: the list is capped)"
				s.merged = true
			}
			return
		}
	}
	s.ranges = append(s.ranges, Range{Start: start, End: end, Reason: reason})
}

// coreStreamer copies segments of one process's memory to w, standing in
// zeros for whatever cannot be read and logging each such range.
type coreStreamer struct {
	src interface {
		ReadAt([]byte, uint64) (int, error)
	}
	w        io.Writer
	buf      []byte
	zeros    []byte
	pageSize uint64
	skips    *procSkipLog
	label    string // "pid 42 (nginx)" for skip reasons
	gone     bool   // the process has exited: no more reads
	read     uint64 // bytes read from the process
}

func (s *coreStreamer) stream(ctx context.Context, start, end uint64) error {
	addr := start
	for addr < end {
		if err := ctx.Err(); err != nil {
			return err
		}
		if s.gone {
			s.skips.add(addr, end, s.label+": "+errProcExited.Error())
			return s.fill(end - addr)
		}
		want := min(uint64(len(s.buf)), end-addr)
		n, err := s.src.ReadAt(s.buf[:want], addr)
		if n > 0 {
			if _, werr := s.w.Write(s.buf[:n]); werr != nil {
				return werr
			}
			addr += uint64(n)
			s.read += uint64(n)
		}
		if uint64(n) == want {
			continue
		}
		if errors.Is(err, errProcExited) {
			s.gone = true
			continue
		}
		// One page at addr is unreadable: a mapping truncated under us, a
		// file page beyond EOF, memory unmapped since the maps were read.
		// The next read starts at the page after it.
		next := min(end, (addr/s.pageSize+1)*s.pageSize)
		reason := "unreadable"
		if err != nil {
			reason = "unreadable: " + err.Error()
		}
		s.skips.add(addr, next, s.label+": "+reason)
		if err := s.fill(next - addr); err != nil {
			return err
		}
		addr = next
	}
	return nil
}

func (s *coreStreamer) fill(n uint64) error {
	for n > 0 {
		k := min(n, uint64(len(s.zeros)))
		if _, err := s.w.Write(s.zeros[:k]); err != nil {
			return err
		}
		n -= k
	}
	return nil
}
