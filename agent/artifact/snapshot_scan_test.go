package artifact

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// fixtureDirs are the parts of testdata the fake /proc tree links into
// (relative links, so that a copy of the whole set still resolves).
var fixtureDirs = []string{"proc", "etc", "usr", "dev", "tmp", "var", "containerfs"}

// copyFixture copies the fake host into a private directory a test may
// damage, and returns an Env pointing at it.
func copyFixture(t *testing.T, dir string) Env {
	t.Helper()
	for _, d := range fixtureDirs {
		copyTree(t, filepath.Join("testdata", d), filepath.Join(dir, d))
	}
	env := fakeEnv()
	env.ProcRoot, env.SysRoot, env.HostRoot = filepath.Join(dir, "proc"), filepath.Join(dir, "sys"), dir
	return env
}

// decodeLines decodes JSON Lines into records of type T, failing on any
// line that is not one complete JSON value.
func decodeLines[T any](t *testing.T, out []byte) []T {
	t.Helper()
	var recs []T
	for _, l := range lines(t, out) {
		var r T
		if err := json.Unmarshal(l, &r); err != nil {
			t.Fatalf("%q: %v", l, err)
		}
		recs = append(recs, r)
	}
	return recs
}

func TestSnapshotOrdered(t *testing.T) {
	for _, workers := range []int{1, 3, 8} {
		var got []int
		err := snapshotOrdered(context.Background(), workers, 500, func(_ *scratch, i int) int {
			if i%7 == 0 {
				time.Sleep(time.Microsecond) // perturb completion order
			}
			return i * 2
		}, func(v int) error {
			got = append(got, v)
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		want := make([]int, 500)
		for i := range want {
			want[i] = i * 2
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("workers=%d: results out of order (-want +got):\n%s", workers, diff)
		}
	}
}

// TestSnapshotOrderedStops checks that an emit error or a cancellation
// ends the scan early, returns the cause and leaves no goroutine behind.
func TestSnapshotOrderedStops(t *testing.T) {
	before := runtime.NumGoroutine()
	boom := errors.New("disk full")
	var reads atomic.Int64
	err := snapshotOrdered(context.Background(), 4, 100000, func(_ *scratch, i int) int {
		reads.Add(1)
		return i
	}, func(v int) error {
		if v == 10 {
			return boom
		}
		return nil
	})
	if !errors.Is(err, boom) {
		t.Errorf("err = %v, want the emit error", err)
	}
	if n := reads.Load(); n > 1000 {
		t.Errorf("%d reads after the emit error at 10: the scan did not stop", n)
	}

	ctx, cancel := context.WithCancel(context.Background())
	err = snapshotOrdered(ctx, 2, 100000, func(_ *scratch, i int) int { return i }, func(v int) error {
		if v == 5 {
			cancel()
		}
		return nil
	})
	if !errors.Is(err, context.Canceled) {
		t.Errorf("err = %v, want context.Canceled", err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > before {
		t.Errorf("%d goroutines after the scans, %d before: a worker or producer leaked", n, before)
	}
}

func TestSnapshotPIDs(t *testing.T) {
	pids, err := snapshotPIDs(filepath.Join("testdata", "proc"))
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]int{1, 2, 777, 778, 4242, 31337}, pids); diff != "" {
		t.Errorf("pids (-want +got):\n%s", diff)
	}
}

func TestParseNSLink(t *testing.T) {
	tests := []struct {
		kind, target string
		want         uint64
		wantErr      bool
	}{
		{"net", "net:[4026531840]", 4026531840, false},
		{"pid", "pid:[1]", 1, false},
		{"net", "mnt:[4026531840]", 0, true},
		{"net", "net:[x]", 0, true},
		{"net", "net:4026531840", 0, true},
		{"net", "", 0, true},
	}
	for _, tt := range tests {
		got, err := parseNSLink(tt.kind, tt.target)
		if (err != nil) != tt.wantErr || got != tt.want {
			t.Errorf("parseNSLink(%q, %q) = %d, %v; want %d, error %v", tt.kind, tt.target, got, err, tt.want, tt.wantErr)
		}
	}
}

// TestDeletedTarget covers the one case the suffix alone gets wrong: a
// file that really is called "x (deleted)".
func TestDeletedTarget(t *testing.T) {
	dir := t.TempDir()
	proc := filepath.Join(dir, "proc")
	if err := os.MkdirAll(filepath.Join(proc, "5"), 0o755); err != nil {
		t.Fatal(err)
	}
	rootfs := filepath.Join(dir, "rootfs")
	if err := os.MkdirAll(rootfs, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(rootfs, filepath.Join(proc, "5", "root")); err != nil {
		t.Fatal(err)
	}
	literal := filepath.Join(rootfs, "notes (deleted)")
	if err := os.WriteFile(literal, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	var st syscall.Stat_t
	if err := syscall.Stat(literal, &st); err != nil {
		t.Fatal(err)
	}
	same := &fileID{dev: st.Dev, ino: st.Ino}
	other := &fileID{dev: st.Dev, ino: st.Ino + 1}
	p := newSnapProc(proc, 5)
	tests := []struct {
		target      string
		st          *fileID
		wantPath    string
		wantDeleted bool
	}{
		{"/bin/sh", nil, "/bin/sh", false},
		{"/bin/sh (deleted)", nil, "/bin/sh", true},
		{"/notes (deleted)", same, "/notes (deleted)", false},
		{"/notes (deleted)", other, "/notes", true},
		{"/gone (deleted)", same, "/gone", true},
	}
	for _, tt := range tests {
		path, deleted := deletedTarget(p, tt.target, tt.st)
		if path != tt.wantPath || deleted != tt.wantDeleted {
			t.Errorf("deletedTarget(%q) = %q, %v; want %q, %v", tt.target, path, deleted, tt.wantPath, tt.wantDeleted)
		}
	}
}

func TestDevString(t *testing.T) {
	for _, tt := range []struct {
		major, minor uint32
		want         string
	}{{254, 1, "fe:01"}, {0, 0, "00:00"}, {259, 3, "103:03"}, {8, 300, "08:12c"}} {
		if got := devString(uint64(mkdev(tt.major, tt.minor))); got != tt.want {
			t.Errorf("devString(%d:%d) = %q, want %q", tt.major, tt.minor, got, tt.want)
		}
	}
}

func mkdev(major, minor uint32) uint64 {
	return uint64(minor&0xff) | uint64(major&0xfff)<<8 | uint64(minor&^0xff)<<12 | uint64(major&^0xfff)<<32
}

func TestSnapshotRegistered(t *testing.T) {
	for _, name := range []string{"processes", "sockets", "open_files", "memory_maps", "files"} {
		if !slices.Contains(Names(), name) {
			t.Errorf("%s is not registered", name)
		}
	}
}
