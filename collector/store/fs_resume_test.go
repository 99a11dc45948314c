package store_test

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/custodyhq/custody/collector/store"
)

// crashed starts a write, checkpoints it (twice: the fs store's durable
// size lags one checkpoint) and drops the writer without
// Commit or Abort, as a killed collector would, returning the state.
func crashed(t *testing.T, s *store.FS, key string, data []byte) []byte {
	t.Helper()
	w, err := s.Create(t.Context(), key, store.CreateOptions{ExpectedSize: -1})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(data); err != nil {
		t.Fatal(err)
	}
	// The first checkpoint starts syncing what was written and reports
	// what was durable before; the second, with no write between, reports
	// everything.
	rw := w.(store.ResumableWriter)
	if _, durable, err := rw.Checkpoint(t.Context()); err != nil || durable != 0 {
		t.Fatalf("first fs checkpoint: durable %d, %v; want 0 (the sync it started has not been waited for)", durable, err)
	}
	state, durable, err := rw.Checkpoint(t.Context())
	if err != nil || durable != int64(len(data)) {
		t.Fatalf("second fs checkpoint: durable %d, %v; want %d", durable, err, len(data))
	}
	return state
}

func partials(t *testing.T, dir string) []string {
	t.Helper()
	var names []string
	for _, n := range readDir(t, dir) {
		if strings.HasPrefix(n, ".") {
			names = append(names, n)
		}
	}
	slices.Sort(names)
	return names
}

// TestFSPartialSurvivesCrash: the partial file of a checkpointed write is
// still there for Resume after the writer is gone, and is hidden from
// List, Stat and Open meanwhile.
func TestFSPartialSurvivesCrash(t *testing.T) {
	s, dir := newFS(t)
	crashed(t, s, "c/a/x/memory.lime", []byte("EMiL"))
	if got := partials(t, filepath.Join(dir, "c/a/x")); len(got) != 1 {
		t.Fatalf("partial files after a crash: %q, want one", got)
	}
	infos, err := s.List(t.Context(), "c/a/x")
	if err != nil || len(infos) != 0 {
		t.Errorf("List = %v, %v; want nothing", infos, err)
	}
	if _, err := s.Stat(t.Context(), "c/a/x/memory.lime"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("Stat = %v, want ErrNotFound", err)
	}
}

// TestFSResumeDamagedPartial: a partial file that lost checkpointed bytes,
// or was replaced by a symlink, is not resumed.
func TestFSResumeDamagedPartial(t *testing.T) {
	for _, tc := range []struct {
		name   string
		damage func(t *testing.T, partial string)
		is     error
	}{
		{"truncated", func(t *testing.T, p string) {
			if err := os.Truncate(p, 2); err != nil {
				t.Fatal(err)
			}
		}, store.ErrNotFound},
		{"removed", func(t *testing.T, p string) {
			if err := os.Remove(p); err != nil {
				t.Fatal(err)
			}
		}, store.ErrNotFound},
		{"symlink", func(t *testing.T, p string) {
			outside := filepath.Join(t.TempDir(), "outside")
			if err := os.WriteFile(outside, []byte("EMiL and more"), 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.Remove(p); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(outside, p); err != nil {
				t.Fatal(err)
			}
		}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, dir := newFS(t)
			state := crashed(t, s, "c/a/x/memory.lime", []byte("EMiL"))
			names := partials(t, filepath.Join(dir, "c/a/x"))
			tc.damage(t, filepath.Join(dir, "c/a/x", names[0]))
			w, _, err := s.Resume(t.Context(), "c/a/x/memory.lime", state)
			if err == nil {
				w.Abort(t.Context())
				t.Fatal("Resume of a damaged partial file succeeded")
			}
			if tc.is != nil && !errors.Is(err, tc.is) {
				t.Errorf("Resume = %v, want %v", err, tc.is)
			}
		})
	}
}

// TestFSResumeStateCannotEscape: a state naming a file outside its key's
// directory, or another object's partial, is refused.
func TestFSResumeStateCannotEscape(t *testing.T) {
	s, _ := newFS(t)
	state := crashed(t, s, "c/a/x/f", []byte("x"))
	for _, partial := range []string{"../../../../etc/passwd", ".g.partial-1", "f", ".f.partial-1/../../y"} {
		bad := strings.Replace(string(state), `"partial":".f.partial-`, `"partial":"`+partial+`","x":"`, 1)
		if w, _, err := s.Resume(t.Context(), "c/a/x/f", []byte(bad)); err == nil {
			w.Abort(t.Context())
			t.Errorf("Resume with partial %q succeeded", partial)
		}
	}
}

// TestFSSweep: the startup sweep removes the partial files of writes that
// started before the cutoff and are not tracked; it leaves tracked and
// newer partials and every committed object alone.
func TestFSSweep(t *testing.T) {
	s, dir := newFS(t)
	mustPut(t, s, "c/a/x/kept-object", []byte("evidence"))
	crashed(t, s, "c/a/x/lost-1", []byte("1"))
	crashed(t, s, "c/a/y/lost-2", []byte("2"))
	tracked := crashed(t, s, "c/a/x/tracked", []byte("3"))
	// A hidden file that is not a partial of a valid object name.
	if err := os.WriteFile(filepath.Join(dir, "c/a/x/.notes"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	old := time.Now().Add(-time.Hour)
	for _, d := range []string{"c/a/x", "c/a/y"} {
		for _, n := range readDir(t, filepath.Join(dir, d)) {
			os.Chtimes(filepath.Join(dir, d, n), old, old)
		}
	}
	cutoff := time.Now().Add(-time.Minute)
	late := crashed(t, s, "c/a/x/late", []byte("4"))

	n, err := s.Sweep(t.Context(), [][]byte{tracked}, cutoff)
	if err != nil {
		t.Fatal(err)
	}
	if n != 2 {
		t.Errorf("swept %d, want 2", n)
	}
	var left []string
	for _, d := range []string{"c/a/x", "c/a/y"} {
		for _, name := range readDir(t, filepath.Join(dir, d)) {
			left = append(left, d+"/"+strings.Split(name, ".partial-")[0])
		}
	}
	slices.Sort(left)
	if diff := cmp.Diff([]string{"c/a/x/.late", "c/a/x/.notes", "c/a/x/.tracked", "c/a/x/kept-object"}, left); diff != "" {
		t.Errorf("left after the sweep (-want +got):\n%s", diff)
	}
	for key, state := range map[string][]byte{"c/a/x/tracked": tracked, "c/a/x/late": late} {
		w, _, err := s.Resume(t.Context(), key, state)
		if err != nil {
			t.Errorf("Resume(%s) after the sweep: %v", key, err)
			continue
		}
		w.Abort(t.Context())
	}
	if _, err := s.Sweep(t.Context(), [][]byte{[]byte("{}")}, cutoff); err == nil {
		t.Error("Sweep with an unparsable state succeeded")
	}
}

// TestFSCheckpointLagsOneSync: an fs checkpoint reports what the sync the
// previous one started made durable, writes go on meanwhile, and resuming
// from a lagging state drops exactly the bytes after it.
func TestFSCheckpointLagsOneSync(t *testing.T) {
	ctx := t.Context()
	s, _ := newFS(t)
	const key = "c/a/x/memory.lime"
	w, err := s.Create(ctx, key, store.CreateOptions{ExpectedSize: -1})
	if err != nil {
		t.Fatal(err)
	}
	rw := w.(store.ResumableWriter)
	write := func(p string) {
		t.Helper()
		if _, err := rw.Write([]byte(p)); err != nil {
			t.Fatal(err)
		}
	}
	checkpoint := func(want int64) []byte {
		t.Helper()
		state, durable, err := rw.Checkpoint(ctx)
		if err != nil || durable != want {
			t.Fatalf("Checkpoint: durable %d, %v; want %d", durable, err, want)
		}
		return state
	}
	write("EMiL")
	checkpoint(0) // starts syncing 4 bytes
	write("first range")
	state := checkpoint(4) // starts syncing 15
	write("lost")          // written after the state's sync began: not in it

	r, durable, err := s.Resume(ctx, key, state)
	if err != nil || durable != 4 {
		t.Fatalf("Resume: durable %d, %v; want 4", durable, err)
	}
	// rw is left as a crashed collector leaves it: aborting it would
	// remove the partial file the resumed writer continues.
	if _, err := r.Write([]byte("first range")); err != nil {
		t.Fatal(err)
	}
	want := []byte("EMiLfirst range")
	sum := sha256.Sum256(want)
	info, err := r.Commit(ctx, int64(len(want)), sum[:])
	if err != nil {
		t.Fatalf("Commit after resume: %v", err)
	}
	got, err := os.ReadFile(info.Location)
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("stored %q, %v; want %q", got, err, want)
	}
}
