package store

import (
	"bytes"
	"crypto/sha256"
	"encoding"
	"hash"

	"github.com/custodyhq/custody/internal/sha256x2"
)

// Digest is a writer's running SHA-256 of the bytes it stored. A
// TeeWriter's caller keeps its own running SHA-256 of the same bytes; while
// the caller's digest is in the same state as the writer's, the writer
// lets it stand for both (it shares it), so one state is hashed instead of
// two.
//
// Sharing never changes a result. The writer records the shared digest's
// state after each of its writes; if the caller wrote anything else into
// it, or stops passing it, the writer goes back to a digest of its own
// restored from that record.
type Digest struct {
	own    hash.Hash // the digest while not sharing
	shared hash.Hash // the caller's digest, standing for this one
	state  []byte    // shared's state after the last write through it
	buf    []byte
}

// NewDigest returns a digest that continues h (a crypto/sha256 digest).
func NewDigest(h hash.Hash) *Digest { return &Digest{own: h} }

// Write adds p to the digest and, in the same pass, to tee (the caller's
// running digest, nil if none).
func (d *Digest) Write(p []byte, tee hash.Hash) {
	if d.shared != nil && (tee != d.shared || !d.untouched()) {
		d.unshare()
	}
	if d.shared == nil && tee != nil && d.sameState(tee) {
		d.shared = tee
	}
	switch {
	case d.shared != nil:
		d.shared.Write(p)
		d.state = appendState(d.state[:0], d.shared)
	case tee != nil:
		sha256x2.WriteBoth(d.own, tee, p)
	default:
		d.own.Write(p)
	}
}

// Sum returns the SHA-256 of everything written.
func (d *Digest) Sum() []byte {
	if d.shared != nil && d.untouched() {
		return d.shared.Sum(nil)
	}
	return d.hash().Sum(nil)
}

// MarshalBinary returns the digest's state, for a checkpoint.
func (d *Digest) MarshalBinary() ([]byte, error) {
	if d.shared != nil {
		return bytes.Clone(d.state), nil
	}
	return MarshalHash(d.own)
}

// hash is the digest as a hash.Hash of its own, no longer shared.
func (d *Digest) hash() hash.Hash {
	if d.shared != nil {
		d.unshare()
	}
	return d.own
}

func (d *Digest) untouched() bool {
	d.buf = appendState(d.buf[:0], d.shared)
	return bytes.Equal(d.buf, d.state)
}

func (d *Digest) sameState(h hash.Hash) bool {
	d.buf = appendState(d.buf[:0], h)
	d.state = appendState(d.state[:0], d.own)
	return d.buf != nil && bytes.Equal(d.buf, d.state)
}

// unshare gives the digest its own state again, as recorded after its last
// write through the shared one.
func (d *Digest) unshare() {
	h := sha256.New()
	if err := h.(encoding.BinaryUnmarshaler).UnmarshalBinary(d.state); err != nil {
		panic("store: digest: restoring a crypto/sha256 state: " + err.Error()) // the state is crypto/sha256's own
	}
	d.own, d.shared = h, nil
}

// appendState appends h's marshalled state to b; nil if h cannot say.
func appendState(b []byte, h hash.Hash) []byte {
	if a, ok := h.(encoding.BinaryAppender); ok {
		if out, err := a.AppendBinary(b); err == nil {
			return out
		}
		return nil
	}
	if m, ok := h.(encoding.BinaryMarshaler); ok {
		if out, err := m.MarshalBinary(); err == nil {
			return append(b, out...)
		}
	}
	return nil
}
