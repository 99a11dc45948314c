package store

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
)

// TestNoReplace covers both ways of publishing a partial file, since
// the fallback only runs on filesystems without RENAME_NOREPLACE.
func TestNoReplace(t *testing.T) {
	for _, tc := range []struct {
		name    string
		publish func(oldpath, newpath string) error
	}{
		{"rename", renameNoReplace},
		{"link", linkNoReplace},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			tmp, final := filepath.Join(dir, ".f.partial-1"), filepath.Join(dir, "f")
			if err := os.WriteFile(tmp, []byte("first"), 0o600); err != nil {
				t.Fatal(err)
			}
			if err := tc.publish(tmp, final); err != nil {
				t.Fatalf("publish: %v", err)
			}
			if _, err := os.Lstat(tmp); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("partial name still present after publish: %v", err)
			}
			if err := os.WriteFile(tmp, []byte("second"), 0o600); err != nil {
				t.Fatal(err)
			}
			if err := tc.publish(tmp, final); !errors.Is(err, fs.ErrExist) {
				t.Errorf("publish over an existing object = %v, want fs.ErrExist", err)
			}
			if got, _ := os.ReadFile(final); string(got) != "first" {
				t.Errorf("object = %q after a refused publish, want %q", got, "first")
			}
		})
	}
}
