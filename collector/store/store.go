// Package store defines the evidence store: the one contract every backend
// (a local evidence directory, S3) implements, so that ingest can write
// evidence without knowing where it ends up. The contract is enforced by the
// acceptance suite in package storetest, which every implementation runs.
//
// A store never overwrites evidence and never exposes half-written objects: a
// Writer hashes while it writes and makes the object visible only when the
// size and SHA-256 it saw match what the caller expected.
package store

import (
	"context"
	"crypto/sha256"
	"encoding"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"io"
	"strings"
	"time"
)

var (
	// ErrNotFound means no committed object exists at the key.
	ErrNotFound = errors.New("store: object not found")
	// ErrExists means the key already holds different content; evidence is
	// never overwritten.
	ErrExists = errors.New("store: object exists with different content")
	// ErrBadKey means a key or prefix is outside the key layout.
	ErrBadKey = errors.New("store: bad key")
	// ErrDigestMismatch means the bytes written are not the bytes the caller
	// vouched for at Commit.
	ErrDigestMismatch = errors.New("store: digest mismatch")
)

// KeySegments is the number of segments in a key:
// <case-id>/<agent-id>/<collection-id>/<file>.
const KeySegments = 4

// maxSegment bounds a segment so that a partial file name built from it
// (".<file>.partial-<random>") still fits in a 255-byte file name.
const maxSegment = 128

// Key joins the four parts of an evidence key, rejecting any part that is not
// a valid segment.
func Key(caseID, agentID, collectionID, file string) (string, error) {
	for _, s := range []struct{ name, v string }{
		{"case id", caseID},
		{"agent id", agentID},
		{"collection id", collectionID},
		{"file", file},
	} {
		if err := checkSegment(s.v); err != nil {
			return "", fmt.Errorf("%w: %s %q: %s", ErrBadKey, s.name, s.v, err)
		}
	}
	return caseID + "/" + agentID + "/" + collectionID + "/" + file, nil
}

// ValidateKey reports whether key is exactly four valid segments joined by
// "/". Backends call it on every operation because keys reach them from
// agents and responders, and a key is also a path on disk.
func ValidateKey(key string) error {
	return validateSegments(key, KeySegments, KeySegments)
}

// ValidatePrefix reports whether prefix is a List prefix: "" (everything) or
// one to three whole segments ("case", "case/agent", "case/agent/collection"),
// with no leading or trailing slash.
func ValidatePrefix(prefix string) error {
	if prefix == "" {
		return nil
	}
	return validateSegments(prefix, 1, KeySegments-1)
}

func validateSegments(s string, lo, hi int) error {
	segs := strings.Split(s, "/")
	if len(segs) < lo || len(segs) > hi {
		if lo == hi {
			return fmt.Errorf("%w %q: %d segments, want %d (case/agent/collection/file)", ErrBadKey, s, len(segs), lo)
		}
		return fmt.Errorf("%w %q: %d segments, want %d to %d", ErrBadKey, s, len(segs), lo, hi)
	}
	for i, seg := range segs {
		if err := checkSegment(seg); err != nil {
			return fmt.Errorf("%w %q: segment %d %q: %s", ErrBadKey, s, i+1, seg, err)
		}
	}
	return nil
}

// checkSegment enforces ^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$ without "..".
// The leading alphanumeric keeps segments from ever being ".", ".." or a
// hidden file, which is what lets the fs backend mark partial files with a
// leading dot; ".." anywhere is refused so that no key even looks like a
// traversal to a human or a tool reading it.
func checkSegment(seg string) error {
	if seg == "" {
		return errors.New("empty")
	}
	if len(seg) > maxSegment {
		return fmt.Errorf("longer than %d bytes", maxSegment)
	}
	for i := 0; i < len(seg); i++ {
		c := seg[i]
		alnum := 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9'
		switch {
		case alnum:
		case i == 0:
			return errors.New("must start with a letter or digit")
		case c == '.' || c == '_' || c == '-':
		default:
			return fmt.Errorf("byte %q not allowed (want A-Z a-z 0-9 . _ -)", c)
		}
	}
	if strings.Contains(seg, "..") {
		return errors.New(`contains ".."`)
	}
	return nil
}

// Store is an evidence store. Implementations must pass storetest.Run and be
// safe for concurrent use.
type Store interface {
	// Create starts writing the object at key. Nothing is visible at key
	// until Commit succeeds.
	Create(ctx context.Context, key string, opts CreateOptions) (Writer, error)
	// Stat returns the committed object at key, with its SHA-256.
	Stat(ctx context.Context, key string) (Info, error)
	// Open streams the committed object at key.
	Open(ctx context.Context, key string) (io.ReadCloser, error)
	// List returns the committed objects under a prefix of whole segments
	// ("case/agent/collection"; see ValidatePrefix), sorted by key. A prefix
	// with no objects yields an empty list, not ErrNotFound. Info.SHA256 may
	// be empty: computing it costs a read of every object on fs and a
	// request per object on S3, so callers that need it call Stat.
	List(ctx context.Context, prefix string) ([]Info, error)
}

// CreateOptions carries what a backend may use to lay out or label an
// object. Backends that have no use for a field ignore it.
type CreateOptions struct {
	// ExpectedSize is a hint for sizing multipart uploads; -1 if unknown.
	ExpectedSize int64
	ContentType  string
	Tags         map[string]string
}

// Writer writes one object. It is not safe for concurrent Writes, but Abort
// may be called from another goroutine, for example when the upload's
// context ends. Callers should always defer Abort: it is a no-op after a
// successful Commit.
type Writer interface {
	io.Writer
	// Commit makes the object visible at its key iff exactly size bytes with
	// SHA-256 sha256 were written; otherwise it returns ErrDigestMismatch and
	// nothing is visible.
	//
	// Commit is an idempotent put: if the key already holds an object with
	// the same size and SHA-256, Commit succeeds and returns its Info; if it
	// holds different content, Commit returns ErrExists (evidence is never
	// overwritten).
	Commit(ctx context.Context, size int64, sha256 []byte) (Info, error)
	// Abort discards the write. It is safe after Commit (a no-op) and when
	// called twice.
	Abort(ctx context.Context) error
}

// TeeWriter is a Writer that can also feed its caller's running SHA-256
// of the object in the same pass as its own digest. Both must have taken
// the same bytes; the caller's digest then takes exactly what was written.
type TeeWriter interface {
	WriteTee(p []byte, h hash.Hash) (int, error)
}

// Info describes a committed object.
type Info struct {
	Key  string
	Size int64
	// SHA256 is lowercase hex. List may leave it empty; Stat and Commit set it.
	SHA256 string
	// Location is where a human finds the object: an absolute file path for
	// fs, s3://bucket/key for S3.
	Location  string
	VersionID string // empty for fs
	ETag      string // empty for fs
	ModTime   time.Time
}

// Resumable is implemented by stores that can continue an interrupted write
// after the collector itself restarted (issue: resumable uploads). The
// collector persists the state a Checkpoint returns (in its database) and,
// after a restart, hands it to Resume to continue the very same object.
type Resumable interface {
	Store
	// Resume reopens the write described by state (from Checkpoint). The
	// returned writer continues at exactly the returned durable size: bytes
	// written after the checkpoint are gone. ErrNotFound if the backing
	// partial object (fs partial file, S3 multipart upload) no longer exists.
	Resume(ctx context.Context, key string, state []byte) (w ResumableWriter, durable int64, err error)
}

// ResumableWriter is a Writer whose progress can be made durable.
//
// Each Write call is an indivisible unit: a checkpoint never splits one.
// (The collector writes one verified zstd frame per Write, so a durable
// size always falls on a chunk boundary, which maps to a raw offset the
// agent can resume from.)
type ResumableWriter interface {
	Writer
	// Checkpoint makes durable as much as the backend can, and returns the
	// state Resume needs and the number of bytes it covers. The durable size
	// may lag what was written (an S3 part is sent only once it reaches the
	// part size; the fs store syncs in the background and reports what the
	// previous Checkpoint's sync covered); it always equals the total of
	// some prefix of Write calls. A second Checkpoint with no Write since
	// the first covers all that the backend can make durable now.
	// The state includes the running SHA-256 of the durable bytes, so Commit
	// after Resume checks the whole object without rereading it.
	Checkpoint(ctx context.Context) (state []byte, durable int64, err error)
}

// Sweeper is implemented by stores whose interrupted writes leave something
// behind after a crash (an fs partial file, an S3 multipart upload that is
// billed until aborted). The collector calls Sweep once at startup, before
// it serves, with the Checkpoint states it still tracks.
type Sweeper interface {
	// Sweep discards every partial write that started before before and is
	// not described by one of the states in keep (from Checkpoint). It
	// returns how many it discarded. States it cannot parse are an error,
	// not a reason to sweep less carefully: nothing is discarded then.
	Sweep(ctx context.Context, keep [][]byte, before time.Time) (int, error)
}

// MarshalHash returns the running state of a SHA-256 from crypto/sha256, for
// a checkpoint.
func MarshalHash(h hash.Hash) ([]byte, error) {
	m, ok := h.(encoding.BinaryMarshaler)
	if !ok {
		return nil, fmt.Errorf("store: %T cannot be checkpointed", h)
	}
	return m.MarshalBinary()
}

// ResumeHash restores a running SHA-256 from MarshalHash's state and checks
// that it covers exactly size bytes, so a state paired with the wrong size
// (or a truncated file) is caught before any byte is appended.
func ResumeHash(state []byte, size int64) (hash.Hash, error) {
	h := sha256.New()
	if err := h.(encoding.BinaryUnmarshaler).UnmarshalBinary(state); err != nil {
		return nil, fmt.Errorf("store: checkpoint hash state: %w", err)
	}
	// crypto/sha256's state ends with the big-endian count of bytes hashed.
	if len(state) < 8 {
		return nil, errors.New("store: checkpoint hash state too short")
	}
	if n := binary.BigEndian.Uint64(state[len(state)-8:]); size < 0 || n != uint64(size) {
		return nil, fmt.Errorf("store: checkpoint hash state covers %d bytes, checkpoint says %d", n, size)
	}
	return h, nil
}
