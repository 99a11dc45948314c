// Package source wraps the reader of a long read of evidence (a file being
// captured, a stored object being verified) so that the read stops when
// its context ends, and so that afterwards the caller can tell a failure
// of the source from one of whatever consumed its bytes: a read error is
// not a write error, nor a decoding error, nor a mismatch in the evidence.
package source

import (
	"context"
	"io"
)

// Reader reads r until ctx ends, remembering the first failure.
type Reader struct {
	ctx context.Context
	r   io.Reader
	err error
}

// NewReader returns a Reader of r under ctx.
func NewReader(ctx context.Context, r io.Reader) *Reader { return &Reader{ctx: ctx, r: r} }

func (s *Reader) Read(p []byte) (int, error) {
	if s.err != nil {
		return 0, s.err
	}
	if err := s.ctx.Err(); err != nil {
		s.err = err
		return 0, err
	}
	n, err := s.r.Read(p)
	if err != nil && err != io.EOF {
		s.err = err
	}
	return n, err
}

// Err returns why reading stopped early: the source's error or the
// context's, or nil when the source was read to its end (or not yet).
func (s *Reader) Err() error { return s.err }
