package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"
)

// fsState is what an fs checkpoint records. The partial file is named
// relative to the key's directory, so a state cannot point anywhere else.
type fsState struct {
	V       int    `json:"v"`
	Store   string `json:"store"`
	Key     string `json:"key"`
	Partial string `json:"partial"`
	Size    int64  `json:"size"`
	SHA256  []byte `json:"sha256_state"`
}

const fsStateVersion = 1

// partialPrefix is how every partial file of the object file starts.
func partialPrefix(file string) string { return "." + file + ".partial-" }

// Checkpoint implements ResumableWriter. Syncing is slow next to the
// writes (about 12 ms for 13 MiB here), so it runs in the background while
// the writes go on: Checkpoint starts a sync of everything written so far
// and returns what the previous one made durable, first waiting for it if
// it is still running. The durable size lags by one checkpoint, as the
// contract allows; two Checkpoints with no Write between them cover
// everything written. The partial file stays where it is; a crash leaves
// it for Resume (or for the startup Sweep, if the collector no longer
// tracks it).
func (w *fsWriter) Checkpoint(ctx context.Context) ([]byte, int64, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if err := ctx.Err(); err != nil {
		return nil, 0, err
	}
	if w.f == nil {
		return nil, 0, fmt.Errorf("store: checkpoint %s: %w", w.key, os.ErrClosed)
	}
	if w.broken != nil {
		return nil, 0, w.broken
	}
	if err := w.awaitSync(); err != nil {
		// What the failed sync covered may not be on disk, and a later
		// sync cannot tell: this writer is done for.
		w.broken = fmt.Errorf("store: checkpoint %s: %w", w.key, err)
		return nil, 0, w.broken
	}
	if w.n > w.durable.n {
		hs, err := w.h.MarshalBinary()
		if err != nil {
			return nil, 0, err
		}
		s := &fsSync{to: fsDurable{n: w.n, hash: hs}, done: make(chan struct{})}
		w.syncing = s
		go func(f *os.File) {
			s.err = f.Sync()
			close(s.done)
		}(w.f)
	}
	state, err := json.Marshal(fsState{V: fsStateVersion, Store: "fs", Key: w.key, Partial: filepath.Base(w.tmp), Size: w.durable.n, SHA256: w.durable.hash})
	if err != nil {
		return nil, 0, err
	}
	return state, w.durable.n, nil
}

// awaitSync waits for the background sync, if one runs, and makes what it
// synced durable. It is called with mu held: the sync itself never takes it.
func (w *fsWriter) awaitSync() error {
	s := w.syncing
	if s == nil {
		return nil
	}
	<-s.done
	w.syncing = nil
	if s.err != nil {
		return s.err
	}
	w.durable = s.to
	return nil
}

func parseFSState(state []byte) (fsState, error) {
	var st fsState
	if err := json.Unmarshal(state, &st); err != nil {
		return st, fmt.Errorf("store: fs checkpoint state: %w", err)
	}
	if st.V != fsStateVersion || st.Store != "fs" {
		return st, fmt.Errorf("store: not an fs checkpoint state (store %q, version %d)", st.Store, st.V)
	}
	if err := ValidateKey(st.Key); err != nil {
		return st, fmt.Errorf("store: fs checkpoint state: %w", err)
	}
	file := path.Base(st.Key)
	if !strings.HasPrefix(st.Partial, partialPrefix(file)) || strings.ContainsAny(st.Partial, `/\`) {
		return st, fmt.Errorf("store: fs checkpoint state: %q is not a partial file of %s", st.Partial, st.Key)
	}
	if st.Size < 0 {
		return st, fmt.Errorf("store: fs checkpoint state: size %d", st.Size)
	}
	return st, nil
}

// Resume implements Resumable. It reopens the partial file named in the
// state, drops whatever was written after the checkpoint, and continues
// the running hash from the state rather than rereading the file.
func (f *FS) Resume(ctx context.Context, key string, state []byte) (ResumableWriter, int64, error) {
	if err := ctx.Err(); err != nil {
		return nil, 0, err
	}
	if err := ValidateKey(key); err != nil {
		return nil, 0, err
	}
	st, err := parseFSState(state)
	if err != nil {
		return nil, 0, err
	}
	if st.Key != key {
		return nil, 0, fmt.Errorf("store: resume %s: checkpoint is for %s", key, st.Key)
	}
	h, err := ResumeHash(st.SHA256, st.Size)
	if err != nil {
		return nil, 0, fmt.Errorf("store: resume %s: %w", key, err)
	}
	if !f.realDirs(path.Dir(key)) {
		return nil, 0, fmt.Errorf("%w: resume %s: no partial file", ErrNotFound, key)
	}
	tmp := filepath.Join(filepath.Dir(f.path(key)), st.Partial)
	file, err := openPartial(tmp)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, 0, fmt.Errorf("%w: resume %s: partial file %s is gone (aborted or committed)", ErrNotFound, key, st.Partial)
	}
	if err != nil {
		return nil, 0, fmt.Errorf("store: resume %s: %w", key, err)
	}
	fi, err := file.Stat()
	if err == nil && !fi.Mode().IsRegular() {
		err = fmt.Errorf("%s is not a regular file", tmp)
	}
	if err == nil && fi.Size() < st.Size {
		// Checkpoint synced these bytes; a shorter file lost evidence.
		err = fmt.Errorf("%w: partial file %s holds %d bytes, checkpoint says %d", ErrNotFound, st.Partial, fi.Size(), st.Size)
	}
	if err == nil {
		err = file.Truncate(st.Size)
	}
	if err == nil {
		_, err = file.Seek(st.Size, io.SeekStart)
	}
	if err != nil {
		file.Close()
		return nil, 0, fmt.Errorf("store: resume %s: %w", key, err)
	}
	w, err := newFSWriter(f, key, tmp, file, h, st.Size)
	if err != nil {
		return nil, 0, fmt.Errorf("store: resume %s: %w", key, err)
	}
	return w, st.Size, nil
}

// Sweep implements Sweeper: it removes partial files last written before
// before that no kept checkpoint names. Committed objects are never
// touched: only hidden ".<file>.partial-*" files in collection directories.
func (f *FS) Sweep(ctx context.Context, keep [][]byte, before time.Time) (int, error) {
	kept := map[string]bool{}
	for _, state := range keep {
		st, err := parseFSState(state)
		if err != nil {
			return 0, fmt.Errorf("store: sweep: %w", err)
		}
		kept[filepath.Join(filepath.Dir(f.path(st.Key)), st.Partial)] = true
	}
	swept := 0
	err := filepath.WalkDir(f.root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if p == f.root {
			return nil
		}
		rel, err := filepath.Rel(f.root, p)
		if err != nil {
			return err
		}
		rel = filepath.ToSlash(rel)
		depth := strings.Count(rel, "/") + 1
		if d.IsDir() {
			if depth >= KeySegments || ValidatePrefix(rel) != nil {
				return fs.SkipDir
			}
			return nil
		}
		name := d.Name()
		if depth != KeySegments || !d.Type().IsRegular() || kept[p] || !isPartialName(name) {
			return nil
		}
		info, err := d.Info()
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if err != nil {
			return err
		}
		if !info.ModTime().Before(before) {
			return nil
		}
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		swept++
		return nil
	})
	if err != nil {
		return swept, fmt.Errorf("store: sweep %s: %w", f.root, err)
	}
	return swept, nil
}

// isPartialName reports whether name is ".<valid file segment>.partial-*".
func isPartialName(name string) bool {
	rest, ok := strings.CutPrefix(name, ".")
	if !ok {
		return false
	}
	i := strings.LastIndex(rest, ".partial-")
	return i > 0 && checkSegment(rest[:i]) == nil
}
