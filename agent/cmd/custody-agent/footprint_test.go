package main

import (
	"log/slog"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/custodyhq/custody/internal/threads/threadtest"
)

// Every thread ends up nicer and under SCHED_BATCH, and threads the runtime
// starts afterwards inherit both; I/O goes to the lowest best-effort level.
// Lowering one's own priority needs no privilege, so this runs anywhere.
func TestLimitsLowerEveryThreadsPriority(t *testing.T) {
	before := threadtest.Stat(t, threadtest.FieldNice)
	base := before[unix.Gettid()]
	if base > 19-5 {
		t.Skipf("the test process is already at nice %d", base)
	}
	l := limits{nice: 5, ioClass: "best-effort", sched: "batch"}
	if err := l.apply(slog.New(slog.DiscardHandler)); err != nil {
		t.Fatal(err)
	}
	// Make the runtime start more threads after the change.
	threadtest.MoreThreads()
	after := threadtest.Stat(t, threadtest.FieldNice)
	if len(after) < 2 {
		t.Fatalf("only %d threads to look at", len(after))
	}
	for tid, n := range after {
		if n != base+5 {
			t.Errorf("thread %d at nice %d, want %d (all: %v)", tid, n, base+5, after)
		}
	}
	for tid, p := range threadtest.Stat(t, threadtest.FieldPolicy) {
		if p != unix.SCHED_BATCH {
			t.Errorf("thread %d under scheduling policy %d, want SCHED_BATCH", tid, p)
		}
	}
	for tid := range after {
		prio, _, errno := unix.Syscall(unix.SYS_IOPRIO_GET, ioprioWhoProcess, uintptr(tid), 0)
		if errno == unix.ESRCH {
			continue
		}
		if errno != 0 || int(prio) != ioprioClassBE<<ioprioClassShift|7 {
			t.Errorf("thread %d I/O priority %#x (%v), want best-effort level 7", tid, prio, errno)
		}
	}
}

func TestLimitsRefuseRaisingPriority(t *testing.T) {
	for _, l := range []limits{{nice: -5}, {nice: 25}, {ioClass: "realtime"}, {sched: "fifo"}} {
		if err := l.apply(slog.New(slog.DiscardHandler)); err == nil {
			t.Errorf("%+v accepted", l)
		}
	}
}
