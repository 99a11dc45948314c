// Package ingest turns an agent's chunk stream into a stored, verified
// object: every chunk is decompressed and re-hashed before a byte of it is
// written, the collector keeps its own hash of the whole raw stream and of
// the stored bytes, and the object becomes visible only when the trailer
// agrees with what was verified.
//
// On a resumable store an upload can be checkpointed: the checkpoint pairs
// the store's durable state with the stream position (sequence, raw offset,
// raw hash state) at exactly that durable point, so after a disconnect or a
// collector restart the same object continues where it durably stood,
// and no byte is stored twice.
package ingest

import (
	"context"
	"crypto/sha256"
	"encoding"
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
	// ledger holds the stream position after every chunk written since the
	// last checkpoint, so a checkpoint can name the position matching the
	// store's durable size, which may lag what was written.
	ledger []mark
	done   bool
}

type mark struct {
	stored     int64
	storedHash []byte
	pos        chunk.Position
}

// Checkpoint is everything needed to continue an upload later.
type Checkpoint struct {
	StoreState []byte
	// Stored is the durable size of the stored object.
	Stored     int64
	StoredHash []byte
	Position   chunk.Position
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
	u := &Upload{key: key, v: v, w: w, stored: sha256.New()}
	u.ledger = []mark{u.mark()}
	return u, nil
}

// Resume continues an upload from a checkpoint.
func Resume(ctx context.Context, st store.Resumable, key string, cp Checkpoint, compressed bool) (*Upload, error) {
	v, err := chunk.NewVerifierAt(compressed, cp.Position)
	if err != nil {
		return nil, err
	}
	w, durable, err := st.Resume(ctx, key, cp.StoreState)
	if err != nil {
		v.Close()
		return nil, fmt.Errorf("ingest: resume %s: %w", key, err)
	}
	if durable != cp.Stored {
		w.Abort(ctx)
		v.Close()
		return nil, fmt.Errorf("ingest: resume %s: store holds %d durable bytes, checkpoint says %d", key, durable, cp.Stored)
	}
	stored := sha256.New()
	if err := stored.(encoding.BinaryUnmarshaler).UnmarshalBinary(cp.StoredHash); err != nil {
		w.Abort(ctx)
		v.Close()
		return nil, fmt.Errorf("ingest: resume %s: stored hash state: %w", key, err)
	}
	u := &Upload{key: key, v: v, w: w, stored: stored, storedSize: cp.Stored}
	u.ledger = []mark{u.mark()}
	return u, nil
}

func (u *Upload) mark() mark {
	hs, _ := u.stored.(encoding.BinaryMarshaler).MarshalBinary()
	return mark{stored: u.storedSize, storedHash: hs, pos: u.v.Position()}
}

// Write verifies one chunk and appends its frame, as received, to the
// object. A chunk that fails verification writes nothing.
func (u *Upload) Write(c chunk.Chunk) error {
	if err := u.v.Check(c); err != nil {
		return fmt.Errorf("ingest: %s: %w", u.key, err)
	}
	// The stored bytes are hashed here and by the store, each for its own
	// check; a store that can does both in one pass.
	if tw, ok := u.w.(store.TeeWriter); ok {
		if _, err := tw.WriteTee(c.Data, u.stored); err != nil {
			return fmt.Errorf("ingest: %s: store write: %w", u.key, err)
		}
	} else {
		if _, err := u.w.Write(c.Data); err != nil {
			return fmt.Errorf("ingest: %s: store write: %w", u.key, err)
		}
		u.stored.Write(c.Data)
	}
	u.storedSize += int64(len(c.Data))
	if _, ok := u.w.(store.ResumableWriter); ok {
		u.ledger = append(u.ledger, u.mark())
	}
	return nil
}

// Resumable reports whether the upload can be checkpointed.
func (u *Upload) Resumable() bool {
	_, ok := u.w.(store.ResumableWriter)
	return ok
}

// Checkpoint makes what the store can durable and returns the matching
// stream position.
func (u *Upload) Checkpoint(ctx context.Context) (Checkpoint, error) {
	rw, ok := u.w.(store.ResumableWriter)
	if !ok {
		return Checkpoint{}, fmt.Errorf("ingest: %s: store cannot checkpoint", u.key)
	}
	state, durable, err := rw.Checkpoint(ctx)
	if err != nil {
		return Checkpoint{}, fmt.Errorf("ingest: %s: checkpoint: %w", u.key, err)
	}
	for i, m := range u.ledger {
		if m.stored == durable {
			u.ledger = u.ledger[i:]
			return Checkpoint{StoreState: state, Stored: durable, StoredHash: m.storedHash, Position: m.pos}, nil
		}
	}
	return Checkpoint{}, fmt.Errorf("ingest: %s: store made %d bytes durable, which is not a chunk boundary", u.key, durable)
}

// Committed is the raw offset below which every byte is verified and written.
func (u *Upload) Committed() int64 { return u.v.Committed() }

// Chunks is the number of verified chunks.
func (u *Upload) Chunks() uint64 { return u.v.Next() }

// RawSum is the SHA-256 of the raw bytes verified so far.
func (u *Upload) RawSum() []byte { return u.v.Sum() }

// Position is where the verified stream stands.
func (u *Upload) Position() chunk.Position { return u.v.Position() }

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

// Suspend releases the upload without discarding it, so that a later
// Resume from the last checkpoint continues it. For a store that cannot
// resume it is Abort.
func (u *Upload) Suspend(ctx context.Context) {
	if u.done {
		return
	}
	if !u.Resumable() {
		u.Abort(ctx)
		return
	}
	u.done = true
	u.v.Close()
}
