package artifact

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// freezeTimeout bounds the wait for a thread to stop. A thread in
// uninterruptible sleep (a hung NFS read) stops only when the sleep ends; the
// capture goes on without it rather than hang with the rest frozen.
const freezeTimeout = 5 * time.Second

// frozenThread is one thread held in a ptrace stop.
type frozenThread struct {
	tid     int
	stopped bool
	// signal was being delivered when the thread stopped; it is handed back
	// at detach so the process sees every signal it was sent.
	signal syscall.Signal
}

// freezer holds a process's threads stopped with PTRACE_SEIZE and
// PTRACE_INTERRUPT. Unlike PTRACE_ATTACH or SIGSTOP this sends the process
// no signal, so nothing it (or its parent, through SIGCHLD) can observe
// changes, and a process already stopped by SIGSTOP stays stopped after
// detach.
//
// Every ptrace request must come from the thread that attached, so a freezer
// lives on one goroutine locked to its OS thread (see runOnLockedThread). If that
// goroutine ends without detaching, its thread exits and the kernel detaches
// every tracee: nothing can leave the process stopped behind us.
type freezer struct {
	pid     int
	threads []*frozenThread
}

// runOnLockedThread runs f on a goroutine locked to a fresh OS thread, and never
// unlocks it: the runtime then ends the thread with the goroutine, which is
// the kernel's guarantee that tracees are detached even if f fails halfway.
func runOnLockedThread[T any](f func() T) T {
	done := make(chan T, 1)
	go func() {
		runtime.LockOSThread()
		done <- f()
	}()
	return <-done
}

// freezeProcess seizes and stops every thread of pid. Threads created while it
// works are found by listing the tasks again until the list is stable: a
// stopped thread cannot create more. The returned freezer may hold fewer
// threads than the process has if some would not stop in time; err is then
// nil and notStopped reports them.
func freezeProcess(ctx context.Context, procRoot string, pid int) (*freezer, error) {
	f := &freezer{pid: pid}
	seen := map[int]bool{}
	deadline := time.Now().Add(freezeTimeout)
	for round := 0; ; round++ {
		tids, err := procTaskIDs(procRoot, pid)
		if err != nil {
			f.thaw()
			return nil, err
		}
		var fresh []*frozenThread
		for _, tid := range tids {
			if seen[tid] {
				continue
			}
			seen[tid] = true
			if err := unix.PtraceSeize(tid); err != nil {
				if err == unix.ESRCH {
					continue // exited since the listing
				}
				f.thaw()
				return nil, err
			}
			t := &frozenThread{tid: tid}
			f.threads = append(f.threads, t)
			fresh = append(fresh, t)
			if err := unix.PtraceInterrupt(tid); err != nil && err != unix.ESRCH {
				f.thaw()
				return nil, fmt.Errorf("interrupt thread %d: %w", tid, err)
			}
		}
		if len(fresh) == 0 || round == 100 {
			break
		}
		if err := f.waitStopped(ctx, fresh, deadline); err != nil {
			f.thaw()
			return nil, err
		}
	}
	// The thread group leader first: a debugger selects the first thread.
	slices.SortStableFunc(f.threads, func(a, b *frozenThread) int {
		switch {
		case a.tid == pid:
			return -1
		case b.tid == pid:
			return 1
		}
		return 0
	})
	return f, nil
}

// waitStopped waits for each thread's ptrace stop, polling so that ctx and
// the deadline are honoured.
func (f *freezer) waitStopped(ctx context.Context, ts []*frozenThread, deadline time.Time) error {
	pending := slices.Clone(ts)
	sleep := 50 * time.Microsecond
	for len(pending) > 0 {
		if err := ctx.Err(); err != nil {
			return err
		}
		if time.Now().After(deadline) {
			return nil // the rest is reported by notStopped
		}
		rest := pending[:0]
		for _, t := range pending {
			var ws unix.WaitStatus
			wpid, err := unix.Wait4(t.tid, &ws, unix.WALL|unix.WNOHANG, nil)
			switch {
			case err == unix.EINTR || (err == nil && wpid == 0):
				rest = append(rest, t)
			case err != nil:
				// ECHILD: the thread is gone; nothing to wait for.
				t.tid = -t.tid
			case ws.Exited() || ws.Signaled():
				t.tid = -t.tid
			case ws.Stopped():
				t.stopped = true
				// A stop with no PTRACE_EVENT_STOP in the status is a
				// signal-delivery stop: the signal would be lost if not
				// handed back at detach.
				if int(ws)>>16 != unix.PTRACE_EVENT_STOP {
					t.signal = ws.StopSignal()
				}
			default:
				rest = append(rest, t)
			}
		}
		pending = rest
		if len(pending) > 0 {
			time.Sleep(sleep)
			sleep = min(2*sleep, 5*time.Millisecond)
		}
	}
	// Threads that exited are dropped.
	f.threads = slices.DeleteFunc(f.threads, func(t *frozenThread) bool { return t.tid < 0 })
	return nil
}

// stopped returns the threads held stopped, leader first.
func (f *freezer) stopped() []*frozenThread {
	var out []*frozenThread
	for _, t := range f.threads {
		if t.stopped {
			out = append(out, t)
		}
	}
	return out
}

func (f *freezer) notStopped() int { return len(f.threads) - len(f.stopped()) }

// thaw detaches every thread, handing back any signal it was stopped in.
// A thread that has not reached its stop cannot be detached by request; it
// is detached by the kernel when the locked thread exits.
func (f *freezer) thaw() error {
	var errs []error
	for _, t := range f.threads {
		if t.tid <= 0 {
			continue
		}
		_, _, e := unix.Syscall6(unix.SYS_PTRACE, unix.PTRACE_DETACH, uintptr(t.tid), 0, uintptr(t.signal), 0, 0)
		if e != 0 && e != unix.ESRCH {
			errs = append(errs, fmt.Errorf("detach thread %d: %w", t.tid, e))
		}
	}
	f.threads = nil
	return errors.Join(errs...)
}

// ptraceRegset reads one register set of a stopped thread with PTRACE_GETREGSET:
// the kernel returns it in exactly the layout of the core note of the same
// type, which is why cores and ptrace share the NT_* numbers.
func ptraceRegset(tid int, typ int, size int) ([]byte, error) {
	buf := make([]byte, size)
	iov := unix.Iovec{Base: &buf[0]}
	iov.SetLen(size)
	_, _, e := unix.Syscall6(unix.SYS_PTRACE, unix.PTRACE_GETREGSET, uintptr(tid), uintptr(typ), uintptr(unsafe.Pointer(&iov)), 0, 0)
	runtime.KeepAlive(buf)
	if e != 0 {
		return nil, e
	}
	return buf[:iov.Len], nil
}
