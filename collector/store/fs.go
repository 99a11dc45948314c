package store

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	"github.com/custodyhq/custody/internal/source"
)

const (
	// Committed evidence is read-only even to its owner, so that a stray
	// write from the collector itself cannot alter it.
	objectMode = 0o440
	dirMode    = 0o750
)

// FS is a Store in a local evidence directory: the collector's default, so
// that it runs with no cloud at all. An object lives at <dir>/<key>.
//
// Writes land in a hidden partial file beside their target and are renamed
// into place without ever replacing an existing file, so a crash at any point
// leaves either nothing or the whole object at the key.
type FS struct {
	root string
}

var (
	_ Store     = (*FS)(nil)
	_ Resumable = (*FS)(nil)
	_ Sweeper   = (*FS)(nil)
)

// NewFS returns a store rooted at dir, creating it (mode 0750) if needed.
func NewFS(dir string) (*FS, error) {
	root, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("store: evidence directory %q: %w", dir, err)
	}
	if _, err := os.Stat(root); errors.Is(err, fs.ErrNotExist) {
		if err := os.MkdirAll(root, dirMode); err != nil {
			return nil, fmt.Errorf("store: create evidence directory: %w", err)
		}
		// MkdirAll's mode is filtered by the umask; evidence directories
		// should not depend on the umask of whoever started the collector.
		if err := os.Chmod(root, dirMode); err != nil {
			return nil, fmt.Errorf("store: create evidence directory: %w", err)
		}
	}
	st, err := os.Stat(root)
	if err != nil {
		return nil, fmt.Errorf("store: evidence directory: %w", err)
	}
	if !st.IsDir() {
		return nil, fmt.Errorf("store: evidence directory %q is not a directory", root)
	}
	return &FS{root: root}, nil
}

// Dir returns the absolute evidence directory.
func (f *FS) Dir() string { return f.root }

func (f *FS) path(key string) string {
	return filepath.Join(f.root, filepath.FromSlash(key))
}

// Create implements Store. The partial file is created at once so that a
// full disk or a permission problem surfaces before any evidence is sent.
func (f *FS) Create(ctx context.Context, key string, _ CreateOptions) (Writer, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := ValidateKey(key); err != nil {
		return nil, err
	}
	dir, file := path.Split(key)
	if err := f.mkdirs(strings.TrimSuffix(dir, "/")); err != nil {
		return nil, fmt.Errorf("store: create %s: %w", key, err)
	}
	// The leading dot cannot start a valid segment, so a partial file can
	// never be mistaken for, or collide with, an object.
	tmp, err := os.CreateTemp(filepath.Dir(f.path(key)), "."+file+".partial-*")
	if err != nil {
		return nil, fmt.Errorf("store: create %s: %w", key, err)
	}
	return newFSWriter(f, key, tmp.Name(), tmp, sha256.New(), 0)
}

// newFSWriter continues the partial file tmp, which holds n bytes whose
// running SHA-256 is h.
func newFSWriter(f *FS, key, tmp string, file *os.File, h hash.Hash, n int64) (*fsWriter, error) {
	hs, err := MarshalHash(h)
	if err != nil {
		file.Close()
		return nil, err
	}
	return &fsWriter{store: f, key: key, final: f.path(key), tmp: tmp, f: file, h: NewDigest(h), n: n,
		durable: fsDurable{n: n, hash: hs}}, nil
}

// mkdirs creates the directories of a key's dir (case/agent/collection)
// with dirMode, and syncs each parent it adds an entry to so that a
// committed object's path survives a crash, not just its file.
func (f *FS) mkdirs(dir string) error {
	cur := f.root
	for seg := range strings.SplitSeq(dir, "/") {
		parent := cur
		cur = filepath.Join(cur, seg)
		err := os.Mkdir(cur, dirMode)
		if errors.Is(err, fs.ErrExist) {
			if st, err := os.Lstat(cur); err != nil || !st.IsDir() {
				return fmt.Errorf("%s exists and is not a directory", cur)
			}
			continue
		}
		if err != nil {
			return err
		}
		if err := os.Chmod(cur, dirMode); err != nil {
			return err
		}
		if err := syncDir(parent); err != nil {
			return err
		}
	}
	return nil
}

// Stat implements Store. It reads the whole object to hash it: the file is
// the only source of truth, and a sidecar digest could drift from it.
func (f *FS) Stat(ctx context.Context, key string) (Info, error) {
	if err := ctx.Err(); err != nil {
		return Info{}, err
	}
	if err := ValidateKey(key); err != nil {
		return Info{}, err
	}
	return f.stat(ctx, key)
}

func (f *FS) stat(ctx context.Context, key string) (Info, error) {
	file, st, err := f.open(key)
	if err != nil {
		return Info{}, err
	}
	defer file.Close()
	h := sha256.New()
	n, err := io.Copy(h, source.NewReader(ctx, file))
	if err != nil {
		return Info{}, fmt.Errorf("store: stat %s: %w", key, err)
	}
	return Info{
		Key:      key,
		Size:     n,
		SHA256:   hex.EncodeToString(h.Sum(nil)),
		Location: f.path(key),
		ModTime:  st.ModTime(),
	}, nil
}

// Open implements Store.
func (f *FS) Open(ctx context.Context, key string) (io.ReadCloser, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := ValidateKey(key); err != nil {
		return nil, err
	}
	file, _, err := f.open(key)
	return file, err
}

// open opens a committed object. Only regular files count: a symlink or a
// FIFO planted in the evidence directory is not evidence this store wrote,
// and following it could read (or block on) something outside the store.
func (f *FS) open(key string) (*os.File, fs.FileInfo, error) {
	if !f.realDirs(path.Dir(key)) {
		return nil, nil, fmt.Errorf("%w: %s", ErrNotFound, key)
	}
	p := f.path(key)
	st, err := os.Lstat(p)
	if errors.Is(err, fs.ErrNotExist) || err == nil && !st.Mode().IsRegular() {
		return nil, nil, fmt.Errorf("%w: %s", ErrNotFound, key)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("store: open %s: %w", key, err)
	}
	file, err := openNoFollow(p)
	if err != nil {
		return nil, nil, fmt.Errorf("store: open %s: %w", key, err)
	}
	if st, err = file.Stat(); err != nil || !st.Mode().IsRegular() {
		file.Close()
		return nil, nil, fmt.Errorf("%w: %s", ErrNotFound, key)
	}
	return file, st, nil
}

// realDirs reports whether every segment of dir (a key's directory or a
// List prefix) is a directory rather than a symlink, which could lead out of
// the evidence directory.
func (f *FS) realDirs(dir string) bool {
	cur := f.root
	for seg := range strings.SplitSeq(dir, "/") {
		cur = filepath.Join(cur, seg)
		if st, err := os.Lstat(cur); err != nil || !st.IsDir() {
			return false
		}
	}
	return true
}

// List implements Store. Anything that is not an object this store could
// have written (partial files, symlinks, foreign files such as lost+found)
// is skipped rather than reported, since the directory is shared with
// humans and their tools.
func (f *FS) List(ctx context.Context, prefix string) ([]Info, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := ValidatePrefix(prefix); err != nil {
		return nil, err
	}
	start := f.root
	if prefix != "" {
		if !f.realDirs(prefix) {
			return []Info{}, nil
		}
		start = f.path(prefix)
	}
	infos := []Info{}
	err := filepath.WalkDir(start, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if p == start && errors.Is(err, fs.ErrNotExist) {
				return fs.SkipAll
			}
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if p == start {
			return nil
		}
		rel, err := filepath.Rel(f.root, p)
		if err != nil {
			return err
		}
		key := filepath.ToSlash(rel)
		depth := strings.Count(key, "/") + 1
		if d.IsDir() {
			if depth >= KeySegments || ValidatePrefix(key) != nil {
				return fs.SkipDir
			}
			return nil
		}
		if depth != KeySegments || !d.Type().IsRegular() || ValidateKey(key) != nil {
			return nil
		}
		st, err := d.Info()
		if errors.Is(err, fs.ErrNotExist) {
			return nil // removed while we walked
		}
		if err != nil {
			return err
		}
		infos = append(infos, Info{Key: key, Size: st.Size(), Location: p, ModTime: st.ModTime()})
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("store: list %q: %w", prefix, err)
	}
	// WalkDir's per-directory order is not key order: "a/..." walks before
	// "a-1/..." but sorts after it.
	slices.SortFunc(infos, func(a, b Info) int { return strings.Compare(a.Key, b.Key) })
	return infos, nil
}

type fsWriter struct {
	store *FS
	key   string
	final string
	tmp   string

	mu        sync.Mutex
	f         *os.File // nil once the write is finished
	h         *Digest
	n         int64
	broken    error // a Write failed part way: the file no longer ends on a Write boundary
	committed *Info

	// durable is the last size and digest state known to be on disk, and
	// syncing the background sync that will make a later one durable.
	durable fsDurable
	syncing *fsSync
}

// fsDurable is a size of the partial file and the digest state at that size.
type fsDurable struct {
	n    int64
	hash []byte
}

// fsSync is one background fsync of the partial file. err is set before
// done closes, and read only after.
type fsSync struct {
	to   fsDurable
	done chan struct{}
	err  error
}

func (w *fsWriter) Write(p []byte) (int, error) { return w.WriteTee(p, nil) }

// WriteTee implements TeeWriter: the bytes written go into the store's
// digest and, in the same pass, into h (if not nil).
func (w *fsWriter) WriteTee(p []byte, h hash.Hash) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.f == nil {
		return 0, fmt.Errorf("store: write %s: %w", w.key, os.ErrClosed)
	}
	if w.broken != nil {
		return 0, w.broken
	}
	n, err := w.f.Write(p)
	w.h.Write(p[:n], h)
	w.n += int64(n)
	if err != nil {
		w.broken = fmt.Errorf("store: write %s: %w", w.key, err)
		return n, w.broken
	}
	return n, nil
}

// Commit implements Writer. Whatever the outcome, the write is finished: on
// any failure the partial file is removed, so no failed upload leaves
// debris beside the evidence.
func (w *fsWriter) Commit(ctx context.Context, size int64, sum []byte) (Info, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.committed != nil {
		return *w.committed, nil
	}
	if w.f == nil {
		return Info{}, fmt.Errorf("store: commit %s: %w", w.key, os.ErrClosed)
	}
	w.awaitSync()
	info, err := w.commit(ctx, size, sum)
	if err != nil {
		w.discard()
		return Info{}, err
	}
	w.committed = &info
	return info, nil
}

func (w *fsWriter) commit(ctx context.Context, size int64, sum []byte) (Info, error) {
	if err := ctx.Err(); err != nil {
		return Info{}, err
	}
	if w.broken != nil {
		return Info{}, w.broken
	}
	got := w.h.Sum()
	if size != w.n || !bytes.Equal(sum, got) {
		return Info{}, fmt.Errorf("%w: %s: want %d bytes sha256 %x, wrote %d bytes sha256 %x",
			ErrDigestMismatch, w.key, size, sum, w.n, got)
	}
	// The data must be on disk before the name is: otherwise a crash can
	// leave a committed name pointing at a short or empty file.
	if err := w.f.Sync(); err != nil {
		return Info{}, fmt.Errorf("store: commit %s: %w", w.key, err)
	}
	if err := w.f.Chmod(objectMode); err != nil {
		return Info{}, fmt.Errorf("store: commit %s: %w", w.key, err)
	}
	st, err := w.f.Stat()
	if err != nil {
		return Info{}, fmt.Errorf("store: commit %s: %w", w.key, err)
	}
	err = w.f.Close()
	w.f = nil
	if err != nil {
		return Info{}, fmt.Errorf("store: commit %s: %w", w.key, err)
	}
	info := Info{
		Key:      w.key,
		Size:     w.n,
		SHA256:   hex.EncodeToString(got),
		Location: w.final,
		ModTime:  st.ModTime(),
	}
	switch err := renameNoReplace(w.tmp, w.final); {
	case errors.Is(err, fs.ErrExist):
		return w.existing(ctx, info)
	case err != nil:
		return Info{}, fmt.Errorf("store: commit %s: %w", w.key, err)
	}
	if err := syncDir(filepath.Dir(w.final)); err != nil {
		return Info{}, fmt.Errorf("store: commit %s: %w", w.key, err)
	}
	return info, nil
}

// existing decides the outcome of a commit that lost the race for its key
// (or repeats an earlier upload): the same bytes are a successful idempotent
// put, anything else must not replace the evidence already there.
func (w *fsWriter) existing(ctx context.Context, ours Info) (Info, error) {
	theirs, err := w.store.stat(ctx, w.key)
	if err != nil {
		return Info{}, fmt.Errorf("store: commit %s: %w", w.key, err)
	}
	if theirs.Size != ours.Size || theirs.SHA256 != ours.SHA256 {
		return Info{}, fmt.Errorf("%w: %s holds %d bytes sha256 %s, refusing %d bytes sha256 %s",
			ErrExists, w.key, theirs.Size, theirs.SHA256, ours.Size, ours.SHA256)
	}
	if err := os.Remove(w.tmp); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return Info{}, fmt.Errorf("store: commit %s: %w", w.key, err)
	}
	return theirs, nil
}

// Abort implements Writer.
func (w *fsWriter) Abort(context.Context) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.committed != nil {
		return nil
	}
	return w.discard()
}

func (w *fsWriter) discard() error {
	w.awaitSync()
	var errs []error
	if w.f != nil {
		errs = append(errs, w.f.Close())
		w.f = nil
	}
	if err := os.Remove(w.tmp); err != nil && !errors.Is(err, fs.ErrNotExist) {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("store: abort %s: %w", w.key, err)
	}
	return nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}
