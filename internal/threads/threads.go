// Package threads changes scheduling settings on every thread of this
// process. Linux keeps nice, I/O priority and scheduling policy per thread,
// and a new thread inherits them from the thread that clones it; the Go
// runtime clones new threads from existing ones, so once every thread has a
// setting, threads started later have it too.
package threads

import (
	"errors"
	"fmt"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// Each calls fn for every thread of this process. Threads the runtime
// starts while it runs may have been cloned before fn reached their parent,
// so it walks the thread list again until a pass finds no thread it has not
// seen. A thread that exits before fn reaches it is not an error.
func Each(fn func(tid int) error) error {
	seen := map[int]bool{}
	for pass := 0; pass < 5; pass++ {
		d, err := os.Open("/proc/self/task")
		if err != nil {
			return fmt.Errorf("threads: %w", err)
		}
		names, err := d.Readdirnames(-1)
		d.Close()
		if err != nil {
			return fmt.Errorf("threads: /proc/self/task: %w", err)
		}
		fresh := 0
		for _, n := range names {
			tid, err := strconv.Atoi(n)
			if err != nil || seen[tid] {
				continue
			}
			seen[tid] = true
			fresh++
			if err := fn(tid); err != nil && !errors.Is(err, unix.ESRCH) {
				return err
			}
		}
		if fresh == 0 {
			return nil
		}
	}
	return nil
}

// Batch puts thread tid under SCHED_BATCH and leaves its nice value as it
// is. The kernel then treats the thread as CPU-bound: when it wakes it does
// not preempt the thread running on that CPU, but waits for that thread's
// slice to end. A process doing bulk work on many threads (hashing,
// compressing, moving bytes between goroutines) stops preempting itself
// every time a socket becomes readable, and a background process stops
// cutting into a busy host's workload on every wakeup. Lowering a thread to
// SCHED_BATCH needs no privilege (sched(7)).
func Batch(tid int) error {
	attr, err := unix.SchedGetAttr(tid, 0)
	if err != nil {
		return fmt.Errorf("sched_getattr: %w", err)
	}
	if attr.Policy == unix.SCHED_BATCH {
		return nil
	}
	// Only a thread under SCHED_OTHER is moved: a real-time or SCHED_IDLE
	// thread was put there on purpose by whoever started the process.
	if attr.Policy != unix.SCHED_NORMAL {
		return nil
	}
	batch := &unix.SchedAttr{Size: unix.SizeofSchedAttr, Policy: unix.SCHED_BATCH, Nice: attr.Nice}
	if err := unix.SchedSetAttr(tid, batch, 0); err != nil {
		return fmt.Errorf("sched_setattr SCHED_BATCH: %w", err)
	}
	return nil
}
