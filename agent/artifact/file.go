package artifact

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"

	"github.com/custodyhq/custody/internal/source"
)

func init() {
	register(Kind{
		Name:    "file",
		Bulk:    true,
		Ext:     "bin",
		Doc:     "one regular file or block device, byte for byte (path=/absolute/path)",
		Params:  []string{"path"},
		Collect: collectFile,
		CollectAt: func(ctx context.Context, env Env, p Params, offset int64, w io.Writer) (Result, error) {
			return collectFileAt(ctx, p, offset, w)
		},
	})
}

// fileBufSize is the read size: large enough that a disk image streams at
// device speed, small enough that cancellation is noticed within one read.
const fileBufSize = 1 << 20

func collectFile(ctx context.Context, _ Env, p Params, w io.Writer) (Result, error) {
	return collectFileAt(ctx, p, 0, w)
}

func collectFileAt(ctx context.Context, p Params, offset int64, w io.Writer) (Result, error) {
	path := p["path"]
	res := Result{Source: "file:" + path}
	if err := checkFilePath(path); err != nil {
		return res, err
	}
	f, err := openEvidence(path)
	if err != nil {
		return res, err
	}
	defer f.Close()
	if offset > 0 {
		if _, err := f.Seek(offset, io.SeekStart); err != nil {
			return res, fmt.Errorf("file %q: seek to %d: %w", path, offset, err)
		}
	}

	// A writer that reads for itself (the chunk writer) takes the file's
	// bytes straight into its chunk; otherwise they go through a buffer.
	src := source.NewReader(ctx, f)
	if rf, ok := w.(io.ReaderFrom); ok {
		_, err = rf.ReadFrom(src)
	} else {
		_, err = io.CopyBuffer(struct{ io.Writer }{w}, src, make([]byte, fileBufSize))
	}
	switch rerr := src.Err(); {
	case err == nil:
		return res, nil
	case rerr != nil && rerr == ctx.Err():
		return res, rerr
	case rerr != nil:
		return res, fmt.Errorf("file %q: read: %w", path, rerr)
	default:
		return res, fmt.Errorf("file %q: write: %w", path, err)
	}
}

// FileSize returns the size the file artifact expects to stream from path,
// for the uploader to size its upload. A block device reports size 0 through
// stat, so its size comes from seeking to its end.
func FileSize(path string) (int64, error) {
	if err := checkFilePath(path); err != nil {
		return 0, err
	}
	fi, err := os.Stat(path)
	if err != nil {
		return 0, fmt.Errorf("file %q: %w", path, err)
	}
	if err := checkCapturable(path, fi); err != nil {
		return 0, err
	}
	if fi.Mode().IsRegular() {
		return fi.Size(), nil
	}
	f, err := openEvidence(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	n, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		return 0, fmt.Errorf("file %q: size of block device: %w", path, err)
	}
	return n, nil
}

func checkFilePath(path string) error {
	if path == "" {
		return fmt.Errorf("%w: artifact \"file\" requires path", ErrBadParam)
	}
	// A relative path would resolve against the agent's working directory,
	// which the responder neither sees nor controls.
	if !filepath.IsAbs(path) {
		return fmt.Errorf("%w: path %q is not absolute", ErrBadParam, path)
	}
	return nil
}

// checkCapturable admits regular files and block devices only. Anything else
// either has no end (a character device such as /dev/zero), blocks the open
// forever (a FIFO nobody writes to) or is not a byte stream (a directory or
// socket).
func checkCapturable(path string, fi fs.FileInfo) error {
	m := fi.Mode()
	if m.IsRegular() || m&fs.ModeDevice != 0 && m&fs.ModeCharDevice == 0 {
		return nil
	}
	kind := "special file"
	switch {
	case m.IsDir():
		kind = "directory"
	case m&fs.ModeCharDevice != 0:
		kind = "character device"
	case m&fs.ModeNamedPipe != 0:
		kind = "named pipe"
	case m&fs.ModeSocket != 0:
		kind = "socket"
	}
	return fmt.Errorf("%w: path %q is a %s, not a regular file or block device", ErrBadParam, path, kind)
}

// openEvidence opens path for reading without disturbing it more than
// reading must. Symlinks are followed on purpose: /proc/<pid>/exe is how a
// deleted binary is still reachable.
func openEvidence(path string) (*os.File, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("file %q: %w", path, err)
	}
	if err := checkCapturable(path, fi); err != nil {
		return nil, err
	}
	// O_NONBLOCK keeps the open from hanging if the path is swapped for a
	// FIFO after the check above; regular files and block devices ignore it.
	// O_NOATIME keeps the access time, itself evidence, as it was; the
	// kernel grants it only to the file's owner or CAP_FOWNER.
	const flags = os.O_RDONLY | syscall.O_NONBLOCK | syscall.O_NOCTTY
	f, err := os.OpenFile(path, flags|syscall.O_NOATIME, 0)
	if errors.Is(err, syscall.EPERM) {
		f, err = os.OpenFile(path, flags, 0)
	}
	if err != nil {
		return nil, fmt.Errorf("file %q: %w", path, err)
	}
	got, err := f.Stat()
	if err == nil {
		err = checkCapturable(path, got)
	}
	if err == nil && !os.SameFile(fi, got) {
		err = fmt.Errorf("file %q: replaced while being opened", path)
	}
	if err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}
