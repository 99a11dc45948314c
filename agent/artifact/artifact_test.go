package artifact

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden from the current output")

// fixedNow makes collected_at reproducible in golden files.
func fixedNow() time.Time { return time.Date(2025, 3, 14, 15, 9, 26, 535897932, time.UTC) }

// fakeEnv points every source at the committed fake host under testdata.
func fakeEnv() Env {
	return Env{
		ProcRoot: filepath.Join("testdata", "proc"),
		SysRoot:  filepath.Join("testdata", "sys"),
		HostRoot: "testdata",
		Now:      fixedNow,
	}
}

// golden compares got with testdata/name, or rewrites it under -update.
func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if diff := cmp.Diff(string(want), string(got)); diff != "" {
		t.Errorf("%s mismatch (-want +got), go test -update if intended:\n%s", path, diff)
	}
}

func TestNames(t *testing.T) {
	names := Names()
	if !slices.IsSorted(names) || len(slices.Compact(slices.Clone(names))) != len(names) {
		t.Errorf("Names() = %v, want sorted and without duplicates", names)
	}
	// The artifacts every agent has had since the first release.
	for _, want := range []string{"file", "host", "processes"} {
		if !slices.Contains(names, want) {
			t.Errorf("Names() = %v, missing %q", names, want)
		}
	}
}

func TestLookup(t *testing.T) {
	for _, name := range Names() {
		k, err := Lookup(name)
		if err != nil {
			t.Fatalf("Lookup(%q): %v", name, err)
		}
		if k.Name != name || k.Ext == "" || k.Doc == "" || k.Collect == nil {
			t.Errorf("Lookup(%q) = incomplete Kind %+v", name, k)
		}
	}

	_, err := Lookup("memory")
	if !errors.Is(err, ErrUnknownArtifact) {
		t.Fatalf("Lookup(memory) error = %v, want ErrUnknownArtifact", err)
	}
	for _, s := range []string{`"memory"`, strings.Join(Names(), ", ")} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("Lookup(memory) error %q does not mention %s", err, s)
		}
	}
}

func TestLookupReturnsACopy(t *testing.T) {
	k, err := Lookup("file")
	if err != nil {
		t.Fatal(err)
	}
	k.Params[0] = "tampered"
	again, _ := Lookup("file")
	if diff := cmp.Diff([]string{"path"}, again.Params); diff != "" {
		t.Errorf("the table changed through a looked-up Kind (-want +got):\n%s", diff)
	}
}

func TestCheckParams(t *testing.T) {
	tests := []struct {
		kind    string
		params  Params
		wantErr string // substring; "" means no error
	}{
		{"host", nil, ""},
		{"host", Params{}, ""},
		{"host", Params{"path": "/etc"}, `"path" (accepts: none)`},
		{"file", Params{"path": "/x"}, ""},
		{"file", Params{"path": "/x", "pth": "/y"}, `does not accept "pth" (accepts: path)`},
		// The first unknown name in sorted order is the one reported, so the
		// message does not depend on map iteration order.
		{"processes", Params{"zz": "", "aa": ""}, `"aa"`},
	}
	for _, tt := range tests {
		k, err := Lookup(tt.kind)
		if err != nil {
			t.Fatal(err)
		}
		err = k.CheckParams(tt.params)
		if tt.wantErr == "" {
			if err != nil {
				t.Errorf("%s.CheckParams(%v) = %v, want nil", tt.kind, tt.params, err)
			}
			continue
		}
		if !errors.Is(err, ErrBadParam) || !strings.Contains(err.Error(), tt.wantErr) {
			t.Errorf("%s.CheckParams(%v) = %v, want ErrBadParam mentioning %s", tt.kind, tt.params, err, tt.wantErr)
		}
	}
}

func TestCollectChecksParams(t *testing.T) {
	k, _ := Lookup("host")
	var buf bytes.Buffer
	_, err := k.Collect(context.Background(), fakeEnv(), Params{"verbose": "1"}, &buf)
	if !errors.Is(err, ErrBadParam) {
		t.Errorf("Collect with unknown param: error = %v, want ErrBadParam", err)
	}
	if buf.Len() != 0 {
		t.Errorf("Collect with unknown param wrote %d bytes, want none", buf.Len())
	}
}

func TestEnvDefaults(t *testing.T) {
	e := Env{}.withDefaults()
	if e.ProcRoot != "/proc" || e.SysRoot != "/sys" || e.HostRoot != "/" || e.Logger == nil || e.Now == nil {
		t.Errorf("Env{}.withDefaults() = %+v", e)
	}
	custom := Env{ProcRoot: "/host/proc", Now: fixedNow}.withDefaults()
	if custom.ProcRoot != "/host/proc" || !custom.Now().Equal(fixedNow()) {
		t.Errorf("withDefaults overrode set fields: %+v", custom)
	}
}

func TestWarningsCapped(t *testing.T) {
	w := warnings{log: Env{}.withDefaults().Logger}
	for i := range maxWarnings + 7 {
		w.add("warning %d", i)
	}
	got := w.result()
	if len(got) != maxWarnings+1 {
		t.Fatalf("got %d warnings, want %d", len(got), maxWarnings+1)
	}
	if last := got[len(got)-1]; last != "7 more warnings suppressed" {
		t.Errorf("last warning = %q", last)
	}
}

func TestReadSmallCapped(t *testing.T) {
	path := filepath.Join(t.TempDir(), "big")
	if err := os.WriteFile(path, bytes.Repeat([]byte("x"), maxSmallFile+1), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := readSmall(path); err == nil {
		t.Error("readSmall of an oversized file succeeded")
	}
}

// copyTree copies dir, symlinks included, so a test can damage a private
// copy of the fake /proc.
func copyTree(t *testing.T, src, dst string) {
	t.Helper()
	err := filepath.WalkDir(src, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, path)
		target := filepath.Join(dst, rel)
		switch {
		case d.Type()&fs.ModeSymlink != 0:
			link, err := os.Readlink(path)
			if err != nil {
				return err
			}
			return os.Symlink(link, target)
		case d.IsDir():
			return os.MkdirAll(target, 0o755)
		default:
			in, err := os.Open(path)
			if err != nil {
				return err
			}
			defer in.Close()
			out, err := os.OpenFile(target, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
			if err != nil {
				return err
			}
			if _, err := io.Copy(out, in); err != nil {
				out.Close()
				return err
			}
			return out.Close()
		}
	})
	if err != nil {
		t.Fatal(err)
	}
}
