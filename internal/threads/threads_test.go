package threads

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"
)

// threadStat reads field n (1-based, as in proc(5)) of every thread's
// /proc/self/task/TID/stat: the kernel's own account, not the syscall
// under test.
func threadStat(t *testing.T, n int) map[int]int {
	t.Helper()
	paths, err := filepath.Glob("/proc/self/task/*/stat")
	if err != nil {
		t.Fatal(err)
	}
	out := map[int]int{}
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			continue // exited
		}
		// Fields after the command (which may hold spaces) start at ") ",
		// with field 3.
		f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
		v, err := strconv.Atoi(f[n-3])
		if err != nil {
			t.Fatalf("%s field %d: %v", p, n, err)
		}
		tid, _ := strconv.Atoi(filepath.Base(filepath.Dir(p)))
		out[tid] = v
	}
	return out
}

const (
	statNice   = 19
	statPolicy = 41
)

// moreThreads makes the runtime start threads: blocking syscalls on many
// goroutines pull in new Ms.
func moreThreads() {
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var st unix.Stat_t
			for range 1000 {
				unix.Stat("/", &st)
			}
		}()
	}
	wg.Wait()
}

// Every thread ends up under SCHED_BATCH at the nice value it had, and
// threads the runtime starts afterwards inherit the policy. Moving to
// SCHED_BATCH needs no privilege, so this runs anywhere.
func TestBatchEveryThreadKeepingNice(t *testing.T) {
	moreThreads()
	nice := threadStat(t, statNice)
	if err := Each(Batch); err != nil {
		t.Fatal(err)
	}
	moreThreads()
	policy := threadStat(t, statPolicy)
	if len(policy) < 2 {
		t.Fatalf("only %d threads to look at", len(policy))
	}
	for tid, p := range policy {
		if p != unix.SCHED_BATCH {
			t.Errorf("thread %d under policy %d, want SCHED_BATCH (%d); all: %v", tid, p, unix.SCHED_BATCH, policy)
		}
	}
	after := threadStat(t, statNice)
	for tid, n := range nice {
		if m, ok := after[tid]; ok && m != n {
			t.Errorf("thread %d went from nice %d to %d", tid, n, m)
		}
	}
	// A second pass finds nothing to change and is not an error.
	if err := Each(Batch); err != nil {
		t.Fatal(err)
	}
}

func TestEachVisitsEveryThreadOnce(t *testing.T) {
	moreThreads()
	before := threadStat(t, statNice)
	seen := map[int]int{}
	if err := Each(func(tid int) error { seen[tid]++; return nil }); err != nil {
		t.Fatal(err)
	}
	// Threads alive before and after must have been visited; one started
	// since may or may not have been.
	for tid := range threadStat(t, statNice) {
		if _, old := before[tid]; old && seen[tid] != 1 {
			t.Errorf("thread %d visited %d times", tid, seen[tid])
		}
	}
	if seen[unix.Gettid()] != 1 {
		t.Errorf("the calling thread %d was not visited: %v", unix.Gettid(), seen)
	}
}

func TestEachStopsAtAnError(t *testing.T) {
	calls := 0
	err := Each(func(int) error { calls++; return unix.EPERM })
	if err != unix.EPERM || calls != 1 {
		t.Errorf("Each returned %v after %d calls, want EPERM after 1", err, calls)
	}
	// A thread that exited (ESRCH) is skipped, not an error.
	if err := Each(func(int) error { return unix.ESRCH }); err != nil {
		t.Errorf("ESRCH: %v", err)
	}
}
