package threads

import (
	"testing"

	"golang.org/x/sys/unix"

	"github.com/custodyhq/custody/internal/threads/threadtest"
)

// Every thread ends up under SCHED_BATCH at the nice value it had, and
// threads the runtime starts afterwards inherit the policy. Moving to
// SCHED_BATCH needs no privilege, so this runs anywhere.
func TestBatchEveryThreadKeepingNice(t *testing.T) {
	threadtest.MoreThreads()
	nice := threadtest.Stat(t, threadtest.FieldNice)
	if err := Each(Batch); err != nil {
		t.Fatal(err)
	}
	threadtest.MoreThreads()
	policy := threadtest.Stat(t, threadtest.FieldPolicy)
	if len(policy) < 2 {
		t.Fatalf("only %d threads to look at", len(policy))
	}
	for tid, p := range policy {
		if p != unix.SCHED_BATCH {
			t.Errorf("thread %d under policy %d, want SCHED_BATCH (%d); all: %v", tid, p, unix.SCHED_BATCH, policy)
		}
	}
	after := threadtest.Stat(t, threadtest.FieldNice)
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
	threadtest.MoreThreads()
	before := threadtest.Stat(t, threadtest.FieldNice)
	seen := map[int]int{}
	if err := Each(func(tid int) error { seen[tid]++; return nil }); err != nil {
		t.Fatal(err)
	}
	// Threads alive before and after must have been visited; one started
	// since may or may not have been.
	for tid := range threadtest.Stat(t, threadtest.FieldNice) {
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
