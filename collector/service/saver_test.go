package service

import (
	"errors"
	"testing"
)

// The saver runs one write at a time, in order, off the caller; the first
// failure is kept and stops later writes.
func TestSaver(t *testing.T) {
	var sv saver
	if sv.busy() {
		t.Fatal("an unused saver is busy")
	}
	if err := sv.wait(); err != nil {
		t.Fatalf("wait with nothing written: %v", err)
	}

	release := make(chan struct{})
	var order []int
	if err := sv.start(func() error { <-release; order = append(order, 1); return nil }); err != nil {
		t.Fatal(err)
	}
	if !sv.busy() {
		t.Fatal("busy is false while a write is blocked")
	}
	// start waits for the write in flight: the second write runs after it.
	started := make(chan error)
	go func() {
		started <- sv.start(func() error { order = append(order, 2); return nil })
	}()
	select {
	case <-started:
		t.Fatal("a second write started while the first was still running")
	default:
	}
	close(release)
	if err := <-started; err != nil {
		t.Fatal(err)
	}
	if err := sv.wait(); err != nil {
		t.Fatal(err)
	}
	wantBothWritten(t, &sv, order, "after wait")

	broken := errors.New("disk full")
	if err := sv.start(func() error { return broken }); err != nil {
		t.Fatal(err)
	}
	ran := false
	if err := sv.start(func() error { ran = true; return nil }); !errors.Is(err, broken) {
		t.Fatalf("start after a failed write: %v, want %v", err, broken)
	}
	if ran {
		t.Fatal("a write ran after an earlier one failed")
	}
	if err := sv.wait(); !errors.Is(err, broken) {
		t.Fatalf("wait after a failed write: %v, want %v", err, broken)
	}
}

// Inline, the saver writes on the caller's goroutine once the write in
// flight is done, and returns that write's own error.
func TestSaverInline(t *testing.T) {
	var sv saver
	release := make(chan struct{})
	var order []int
	sv.start(func() error { <-release; order = append(order, 1); return nil })
	sv.inline = true
	go close(release)
	if err := sv.start(func() error { order = append(order, 2); return nil }); err != nil {
		t.Fatal(err)
	}
	// No wait: the inline write is done when start returns.
	wantBothWritten(t, &sv, order, "when an inline start returned")
	broken := errors.New("disk full")
	if err := sv.start(func() error { return broken }); !errors.Is(err, broken) {
		t.Fatalf("inline start of a failing write: %v, want %v", err, broken)
	}
}

// wantBothWritten checks that writes 1 and 2 ran, in that order, and that
// none is still running, at the point named by when.
func wantBothWritten(t *testing.T, sv *saver, order []int, when string) {
	t.Helper()
	if len(order) != 2 || order[0] != 1 || order[1] != 2 {
		t.Fatalf("writes done %s: %v, want [1 2]", when, order)
	}
	if sv.busy() {
		t.Fatalf("busy %s", when)
	}
}
