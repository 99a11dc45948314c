package main

import (
	"fmt"
	"log/slog"
	"runtime"
	"runtime/debug"

	"github.com/spf13/pflag"
	"golang.org/x/sys/unix"

	"github.com/custodyhq/custody/internal/threads"
)

// limits keep the agent a polite guest on a production host: few threads
// for Go code, a soft memory limit the garbage collector works to stay
// under, a lower CPU and I/O priority than the workload it is
// investigating, whatever is being captured, and the SCHED_BATCH policy, so
// that an agent thread becoming runnable waits for the CPU instead of
// preempting the workload's thread on it.
//
// The default memory limit is what a capture needs with room to spare:
// buffers for one 4 MiB chunk being read, one being compressed and three in
// flight. Without it the garbage collector's heap goal doubles whatever is
// live, and a physical memory capture measured 124 MiB peak RSS in a 256
// MiB guest (71 MiB with the limit, same throughput: scripts/vm).
type limits struct {
	procs    int
	memLimit int64
	nice     int
	ioClass  string
	sched    string
}

const defaultMemLimitMiB = 64

func (l *limits) addFlags(f *pflag.FlagSet) {
	f.IntVar(&l.procs, "max-procs", 2, "GOMAXPROCS: CPU threads the agent may use (0: all)")
	f.Int64Var(&l.memLimit, "memory-limit-mib", defaultMemLimitMiB, "soft memory limit (GOMEMLIMIT) in MiB; 0 disables")
	f.IntVar(&l.nice, "nice", 10, "CPU niceness added to the agent's threads, 0-19 (0 leaves it)")
	f.StringVar(&l.ioClass, "io-class", "best-effort", "I/O scheduling class: best-effort (lowest level, 7), idle, or none (leave it)")
	f.StringVar(&l.sched, "sched", "batch", "CPU scheduling policy: batch (the agent's threads never preempt the host's on waking) or normal (leave it)")
}

// I/O priority classes and ioprio_set's "which" (linux/ioprio.h).
const (
	ioprioClassShift = 13
	ioprioClassBE    = 2
	ioprioClassIdle  = 3
	ioprioWhoProcess = 1
)

func (l *limits) apply(log *slog.Logger) error {
	if l.nice < 0 || l.nice > 19 {
		return fmt.Errorf("--nice %d: want 0 to 19 (the agent only ever lowers its priority)", l.nice)
	}
	var ioprio int
	switch l.ioClass {
	case "best-effort":
		ioprio = ioprioClassBE<<ioprioClassShift | 7
	case "idle":
		ioprio = ioprioClassIdle << ioprioClassShift
	case "none", "":
	default:
		return fmt.Errorf("--io-class %q: want best-effort, idle or none", l.ioClass)
	}
	batch := false
	switch l.sched {
	case "batch":
		batch = true
	case "normal", "":
	default:
		return fmt.Errorf("--sched %q: want batch or normal", l.sched)
	}
	if l.procs > 0 {
		runtime.GOMAXPROCS(l.procs)
	}
	if l.memLimit > 0 {
		debug.SetMemoryLimit(l.memLimit << 20)
	}
	if err := deprioritize(l.nice, ioprio, batch); err != nil {
		// Not fatal: a seccomp profile may forbid it, and capturing
		// evidence matters more than being polite about it.
		log.Warn("could not lower the agent's priority", "err", err)
	}
	return nil
}

// deprioritize adds nice to every thread of the process, sets ioprio
// (0: leave it) on each and, with batch, moves each to SCHED_BATCH.
func deprioritize(nice, ioprio int, batch bool) error {
	if nice == 0 && ioprio == 0 && !batch {
		return nil
	}
	return threads.Each(func(tid int) error {
		if nice != 0 {
			cur, err := unix.Getpriority(unix.PRIO_PROCESS, tid)
			if err != nil {
				return nil // the thread exited
			}
			// The raw syscall returns 20 - nice.
			if err := unix.Setpriority(unix.PRIO_PROCESS, tid, min(19, 20-cur+nice)); err != nil {
				return fmt.Errorf("setpriority: %w", err)
			}
		}
		if ioprio != 0 {
			if _, _, errno := unix.Syscall(unix.SYS_IOPRIO_SET, ioprioWhoProcess, uintptr(tid), uintptr(ioprio)); errno != 0 {
				return fmt.Errorf("ioprio_set: %w", errno)
			}
		}
		if batch {
			return threads.Batch(tid)
		}
		return nil
	})
}
