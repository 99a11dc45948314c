package main

import (
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"
)

// threadNice reads the nice value of every thread of this process from
// /proc (the kernel's own account, not the syscall under test).
func threadNice(t *testing.T) map[int]int { return threadStat(t, 19) }

// threadStat reads field n (1-based, as in proc(5)) of every thread's stat.
func threadStat(t *testing.T, n int) map[int]int {
	t.Helper()
	dirs, err := filepath.Glob("/proc/self/task/*/stat")
	if err != nil {
		t.Fatal(err)
	}
	out := map[int]int{}
	for _, p := range dirs {
		b, err := os.ReadFile(p)
		if err != nil {
			continue // exited
		}
		// Fields after the command (which may hold spaces) start at ") ".
		rest := string(b[strings.LastIndexByte(string(b), ')')+2:])
		f := strings.Fields(rest)
		v, _ := strconv.Atoi(f[n-3]) // f[0] is field 3
		tid, _ := strconv.Atoi(filepath.Base(filepath.Dir(p)))
		out[tid] = v
	}
	return out
}

// Every thread ends up nicer and under SCHED_BATCH, and threads the runtime
// starts afterwards inherit both; I/O goes to the lowest best-effort level.
// Lowering one's own priority needs no privilege, so this runs anywhere.
func TestLimitsLowerEveryThreadsPriority(t *testing.T) {
	before := threadNice(t)
	base := before[unix.Gettid()]
	if base > 19-5 {
		t.Skipf("the test process is already at nice %d", base)
	}
	l := limits{nice: 5, ioClass: "best-effort", sched: "batch"}
	if err := l.apply(slog.New(slog.DiscardHandler)); err != nil {
		t.Fatal(err)
	}
	// Make the runtime start more threads after the change.
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var st unix.Stat_t
			for range 1000 {
				unix.Stat("/", &st) // blocking syscalls pull in new Ms
			}
		}()
	}
	wg.Wait()
	after := threadNice(t)
	if len(after) < 2 {
		t.Fatalf("only %d threads to look at", len(after))
	}
	for tid, n := range after {
		if n != base+5 {
			t.Errorf("thread %d at nice %d, want %d (all: %v)", tid, n, base+5, after)
		}
	}
	for tid, p := range threadStat(t, 41) {
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
