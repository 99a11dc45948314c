package store_test

import (
	"context"
	"crypto/sha256"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/custodyhq/custody/collector/store"
	"github.com/custodyhq/custody/collector/store/storetest"
)

func TestFS(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store {
		s, err := store.NewFS(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		return s
	})
}

func newFS(t *testing.T) (*store.FS, string) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "evidence")
	s, err := store.NewFS(dir)
	if err != nil {
		t.Fatal(err)
	}
	return s, dir
}

func put(t *testing.T, s store.Store, key string, data []byte) (store.Info, error) {
	t.Helper()
	w, err := s.Create(t.Context(), key, store.CreateOptions{ExpectedSize: int64(len(data))})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Abort(t.Context())
	if _, err := w.Write(data); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(data)
	return w.Commit(t.Context(), int64(len(data)), sum[:])
}

func mustPut(t *testing.T, s store.Store, key string, data []byte) store.Info {
	t.Helper()
	info, err := put(t, s, key, data)
	if err != nil {
		t.Fatal(err)
	}
	return info
}

func mode(t *testing.T, path string) fs.FileMode {
	t.Helper()
	st, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	return st.Mode().Perm()
}

func TestFSModes(t *testing.T) {
	s, dir := newFS(t)
	info := mustPut(t, s, "case-1/agent-1/col-1/processes.jsonl", []byte("{}\n"))
	want := map[string]fs.FileMode{
		dir:                                  0o750,
		filepath.Join(dir, "case-1"):         0o750,
		filepath.Join(dir, "case-1/agent-1"): 0o750,
		filepath.Join(dir, "case-1/agent-1/col-1"):                 0o750,
		filepath.Join(dir, "case-1/agent-1/col-1/processes.jsonl"): 0o440,
	}
	got := map[string]fs.FileMode{}
	for p := range want {
		got[p] = mode(t, p)
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("modes (-want +got):\n%s", diff)
	}
	if want := filepath.Join(dir, "case-1/agent-1/col-1/processes.jsonl"); info.Location != want {
		t.Errorf("Location = %q, want %q", info.Location, want)
	}
}

func TestFSRelativeDirGivesAbsoluteLocation(t *testing.T) {
	tmp := t.TempDir()
	t.Chdir(tmp)
	s, err := store.NewFS("evidence")
	if err != nil {
		t.Fatal(err)
	}
	info := mustPut(t, s, "c/a/x/f", []byte("x"))
	if want := filepath.Join(tmp, "evidence", "c/a/x/f"); info.Location != want {
		t.Errorf("Location = %q, want %q", info.Location, want)
	}
}

func TestFSPartialFile(t *testing.T) {
	s, dir := newFS(t)
	w, err := s.Create(t.Context(), "c/a/x/memory.lime", store.CreateOptions{ExpectedSize: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Abort(t.Context())
	if _, err := w.Write([]byte("EMiL")); err != nil {
		t.Fatal(err)
	}
	names := readDir(t, filepath.Join(dir, "c/a/x"))
	if len(names) != 1 || !regexp.MustCompile(`^\.memory\.lime\.partial-.+$`).MatchString(names[0]) {
		t.Fatalf("collection directory holds %q, want one .memory.lime.partial-* file", names)
	}
	if got := mode(t, filepath.Join(dir, "c/a/x", names[0])); got != 0o600 {
		t.Errorf("partial file mode = %v, want 0600", got)
	}
}

func readDir(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

// TestFSNoPartialsLeft checks that no way a write can end leaves a partial
// file beside the evidence.
func TestFSNoPartialsLeft(t *testing.T) {
	data := []byte("evidence")
	sum := sha256.Sum256(data)
	canceled, cancel := context.WithCancel(context.Background())
	cancel()
	for _, tc := range []struct {
		name   string
		finish func(w store.Writer) error
	}{
		{"abort", func(w store.Writer) error { return w.Abort(t.Context()) }},
		{"wrong-size", func(w store.Writer) error {
			_, err := w.Commit(t.Context(), int64(len(data))+1, sum[:])
			return err
		}},
		{"wrong-hash", func(w store.Writer) error {
			_, err := w.Commit(t.Context(), int64(len(data)), make([]byte, 32))
			return err
		}},
		{"canceled-commit", func(w store.Writer) error {
			_, err := w.Commit(canceled, int64(len(data)), sum[:])
			return err
		}},
		{"commit", func(w store.Writer) error {
			_, err := w.Commit(t.Context(), int64(len(data)), sum[:])
			return err
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, dir := newFS(t)
			w, err := s.Create(t.Context(), "c/a/x/f", store.CreateOptions{ExpectedSize: -1})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := w.Write(data); err != nil {
				t.Fatal(err)
			}
			_ = tc.finish(w) // the outcome is the suite's business; debris is ours
			for _, n := range readDir(t, filepath.Join(dir, "c/a/x")) {
				if n != "f" {
					t.Errorf("left %q in the collection directory", n)
				}
			}
		})
	}
	t.Run("exists-and-idempotent", func(t *testing.T) {
		s, dir := newFS(t)
		mustPut(t, s, "c/a/x/f", data)
		mustPut(t, s, "c/a/x/f", data)
		if _, err := put(t, s, "c/a/x/f", []byte("other")); !errors.Is(err, store.ErrExists) {
			t.Fatalf("put of other content = %v, want ErrExists", err)
		}
		if diff := cmp.Diff([]string{"f"}, readDir(t, filepath.Join(dir, "c/a/x"))); diff != "" {
			t.Errorf("collection directory (-want +got):\n%s", diff)
		}
	})
}

// TestFSForeignFiles checks that what the store did not write — files a
// human dropped in, symlinks pointing out of the directory — is never
// served or listed as evidence.
func TestFSForeignFiles(t *testing.T) {
	s, dir := newFS(t)
	mustPut(t, s, "c/a/x/f", []byte("evidence"))
	outside := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(outside, []byte("not evidence"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"lost+found", "c/a/x/g/h", "c/a/y.d"} {
		if err := os.MkdirAll(filepath.Join(dir, p), 0o750); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range []string{"README", "c/a/notes", "c/a/x/notes.txt~", "c/a/x/.f.partial-1", "lost+found/x"} {
		if err := os.WriteFile(filepath.Join(dir, p), []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink(outside, filepath.Join(dir, "c/a/x/link")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Dir(outside), filepath.Join(dir, "c/a/z")); err != nil {
		t.Fatal(err)
	}

	for _, k := range []string{"c/a/x/link", "c/a/x/g", "c/a/z/secret"} {
		if _, err := s.Stat(t.Context(), k); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("Stat(%s) = %v, want ErrNotFound", k, err)
		}
	}
	if w, err := s.Create(t.Context(), "c/a/z/new", store.CreateOptions{ExpectedSize: -1}); err == nil {
		w.Abort(t.Context())
		t.Error("Create through a symlinked directory succeeded")
	}
	if _, err := s.Open(t.Context(), "c/a/x/link"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("Open(c/a/x/link) = %v, want ErrNotFound", err)
	}
	infos, err := s.List(t.Context(), "")
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	for _, info := range infos {
		keys = append(keys, info.Key)
	}
	if diff := cmp.Diff([]string{"c/a/x/f"}, keys); diff != "" {
		t.Errorf("List keys (-want +got):\n%s", diff)
	}
}

func TestNewFSNotADirectory(t *testing.T) {
	p := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(p, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := store.NewFS(p); err == nil {
		t.Error("NewFS on a regular file succeeded")
	}
}

func TestFSResumable(t *testing.T) {
	storetest.RunResumable(t, storetest.ResumeOptions{Size: 1 << 20, Write: 32 << 10}, func(t *testing.T) (store.Resumable, func(t *testing.T) store.Resumable) {
		dir := t.TempDir()
		s, err := store.NewFS(dir)
		if err != nil {
			t.Fatal(err)
		}
		return s, func(t *testing.T) store.Resumable {
			s, err := store.NewFS(dir)
			if err != nil {
				t.Fatal(err)
			}
			return s
		}
	})
}
