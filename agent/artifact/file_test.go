package artifact

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"github.com/custodyhq/custody/internal/testenv"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

func TestFileRoundTrip(t *testing.T) {
	// Not a multiple of the buffer size, so the last short read is covered.
	want := make([]byte, 2*fileBufSize+12345)
	rand.Read(want)
	path := filepath.Join(t.TempDir(), "evidence.img")
	if err := os.WriteFile(path, want, 0o600); err != nil {
		t.Fatal(err)
	}

	got, res := collect(t, "file", Env{}, Params{"path": path})
	if sha256.Sum256(got) != sha256.Sum256(want) || !bytes.Equal(got, want) {
		t.Fatalf("streamed %d bytes differing from the %d on disk", len(got), len(want))
	}
	if res.Source != "file:"+path || res.Records != 0 || len(res.Warnings) != 0 {
		t.Errorf("Result = %+v", res)
	}

	size, err := FileSize(path)
	if err != nil || size != int64(len(want)) {
		t.Errorf("FileSize = %d, %v; want %d", size, err, len(want))
	}
}

func TestFileEmpty(t *testing.T) {
	path := filepath.Join(t.TempDir(), "empty")
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	got, _ := collect(t, "file", Env{}, Params{"path": path})
	if len(got) != 0 {
		t.Errorf("empty file streamed %d bytes", len(got))
	}
}

// TestFileFollowsSymlink matters because /proc/<pid>/exe, a symlink, is how a
// deleted binary is captured.
func TestFileFollowsSymlink(t *testing.T) {
	dir := t.TempDir()
	target := filepath.Join(dir, "target")
	if err := os.WriteFile(target, []byte("payload"), 0o600); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "link")
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
	got, _ := collect(t, "file", Env{}, Params{"path": link})
	if string(got) != "payload" {
		t.Errorf("got %q through the symlink", got)
	}
}

func TestFileErrors(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(dir, "missing")
	tests := []struct {
		name   string
		params Params
		is     error
		says   []string
	}{
		{"no path", Params{}, ErrBadParam, []string{"requires path"}},
		{"relative path", Params{"path": "etc/passwd"}, ErrBadParam, []string{`"etc/passwd"`, "not absolute"}},
		{"directory", Params{"path": dir}, ErrBadParam, []string{dir, "directory"}},
		{"missing file", Params{"path": missing}, fs.ErrNotExist, []string{missing}},
		// A FIFO would block the open forever; it must be refused, not opened.
		{"named pipe", Params{"path": fifo}, ErrBadParam, []string{fifo, "named pipe"}},
		{"character device", Params{"path": "/dev/null"}, ErrBadParam, []string{"/dev/null", "character device"}},
		{"unknown param", Params{"path": "/etc/hostname", "offset": "1"}, ErrBadParam, []string{`"offset"`}},
	}
	k, _ := Lookup("file")
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var buf bytes.Buffer
			_, err := k.Collect(context.Background(), Env{}, tt.params, &buf)
			if !errors.Is(err, tt.is) {
				t.Fatalf("error = %v, want %v", err, tt.is)
			}
			for _, s := range tt.says {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not mention %s", err, s)
				}
			}
			if buf.Len() != 0 {
				t.Errorf("wrote %d bytes on error", buf.Len())
			}
			if p := tt.params["path"]; p != "" && len(tt.params) == 1 {
				if _, err := FileSize(p); !errors.Is(err, tt.is) {
					t.Errorf("FileSize(%q) error = %v, want %v", p, err, tt.is)
				}
			}
		})
	}
}

// cancelAfterFirstWrite cancels the capture as soon as the first chunk
// arrives, like a responder aborting a collection.
type cancelAfterFirstWrite struct {
	cancel context.CancelFunc
	n      int
}

func (w *cancelAfterFirstWrite) Write(p []byte) (int, error) {
	w.n += len(p)
	w.cancel()
	return len(p), nil
}

func TestFileCancelled(t *testing.T) {
	path := filepath.Join(t.TempDir(), "big")
	if err := os.WriteFile(path, make([]byte, 4*fileBufSize), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	w := &cancelAfterFirstWrite{cancel: cancel}
	k, _ := Lookup("file")
	_, err := k.Collect(ctx, Env{}, Params{"path": path}, w)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("error = %v, want context.Canceled", err)
	}
	if w.n != fileBufSize {
		t.Errorf("wrote %d bytes after cancelling at the first chunk, want %d", w.n, fileBufSize)
	}
}

// TestFileBlockDevice captures a loop device backed by a known file: stat
// reports a block device's size as 0, so both the size hint and the stream
// have to come from the device itself.
func TestFileBlockDevice(t *testing.T) {
	if os.Geteuid() != 0 {
		testenv.Skip(t, "attaching a loop device needs root")
	}
	losetup, err := exec.LookPath("losetup")
	if err != nil {
		testenv.Skip(t, "losetup (util-linux) is not installed")
	}
	want := make([]byte, 3*fileBufSize)
	rand.Read(want)
	backing := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(backing, want, 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(losetup, "--find", "--show", "--read-only", backing).Output()
	if err != nil {
		testenv.Skip(t, "no loop device available: %v", err)
	}
	dev := strings.TrimSpace(string(out))
	t.Cleanup(func() {
		if out, err := exec.Command(losetup, "--detach", dev).CombinedOutput(); err != nil {
			t.Errorf("losetup --detach %s: %v: %s", dev, err, out)
		}
	})

	size, err := FileSize(dev)
	if err != nil || size != int64(len(want)) {
		t.Errorf("FileSize(%s) = %d, %v; want %d", dev, size, err, len(want))
	}
	got, res := collect(t, "file", Env{}, Params{"path": dev})
	if sha256.Sum256(got) != sha256.Sum256(want) {
		t.Errorf("device %s streamed %d bytes differing from its %d-byte backing file", dev, len(got), len(want))
	}
	if res.Source != "file:"+dev {
		t.Errorf("Source = %q", res.Source)
	}
}
