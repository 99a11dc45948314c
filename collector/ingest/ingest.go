// Package ingest turns an agent's chunk stream into a stored, verified
// object: every chunk is decompressed and re-hashed before a byte of it is
// written, the collector keeps its own hash of the whole raw stream and of
// the stored bytes, and the object becomes visible only when the trailer
// agrees with what was verified.
package ingest

import (
	"context"
	"crypto/sha256"
	"fmt"
	"hash"

	"github.com/custodyhq/custody/collector/store"
	"github.com/custodyhq/custody/internal/chunk"
)

// Upload is one artifact being received. It is not safe for concurrent use;
// one stream drives it.
type Upload struct {
	key        string
	v          *chunk.Verifier
	w          store.Writer
	stored     hash.Hash
	storedSize int64
	done       bool
}

// Result is what the collector itself established about a finished upload.
type Result struct {
	Info       store.Info
	RawSize    int64
	RawSHA256  []byte
	StoredSize int64
	Stored     []byte // SHA-256 of the stored bytes
	Chunks     uint64
}

// Begin starts receiving an object at key.
func Begin(ctx context.Context, st store.Store, key string, expectedSize int64, compressed bool) (*Upload, error) {
	v, err := chunk.NewVerifier(compressed)
	if err != nil {
		return nil, err
	}
	ct := "application/octet-stream"
	if compressed {
		ct = "application/zstd"
	}
	w, err := st.Create(ctx, key, store.CreateOptions{ExpectedSize: expectedSize, ContentType: ct})
	if err != nil {
		v.Close()
		return nil, fmt.Errorf("ingest: %s: %w", key, err)
	}
	return &Upload{key: key, v: v, w: w, stored: sha256.New()}, nil
}

// Write verifies one chunk and appends its frame, as received, to the
// object. A chunk that fails verification writes nothing.
func (u *Upload) Write(c chunk.Chunk) error {
	if _, err := u.v.Verify(c); err != nil {
		return fmt.Errorf("ingest: %s: %w", u.key, err)
	}
	if _, err := u.w.Write(c.Data); err != nil {
		return fmt.Errorf("ingest: %s: store write: %w", u.key, err)
	}
	u.stored.Write(c.Data)
	u.storedSize += int64(len(c.Data))
	return nil
}

// Committed is the raw offset below which every byte is verified and written.
func (u *Upload) Committed() int64 { return u.v.Committed() }

// Chunks is the number of verified chunks.
func (u *Upload) Chunks() uint64 { return u.v.Next() }

// Finish checks the trailer and commits the object.
func (u *Upload) Finish(ctx context.Context, t chunk.Trailer) (Result, error) {
	if err := u.v.Finish(t); err != nil {
		return Result{}, fmt.Errorf("ingest: %s: %w", u.key, err)
	}
	sum := u.stored.Sum(nil)
	info, err := u.w.Commit(ctx, u.storedSize, sum)
	if err != nil {
		return Result{}, fmt.Errorf("ingest: %s: commit: %w", u.key, err)
	}
	u.done = true
	u.v.Close()
	return Result{Info: info, RawSize: u.v.Committed(), RawSHA256: u.v.Sum(), StoredSize: u.storedSize, Stored: sum, Chunks: u.v.Next()}, nil
}

// Abort discards everything written; it is a no-op after a successful Finish.
func (u *Upload) Abort(ctx context.Context) {
	if u.done {
		return
	}
	u.done = true
	u.v.Close()
	u.w.Abort(ctx)
}
