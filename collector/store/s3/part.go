package s3

import (
	"crypto/sha256"
	"errors"
	"io"
	"sync"
)

// blockSize is the unit part buffers grow by. Growing a part block by
// block, rather than appending to one slice, keeps a part that overshoots
// its size by one Write from doubling its buffer.
const blockSize = 1 << 20

// blockPool recycles part blocks across the parts of a store: a part is
// freed as soon as S3 has it, and the next part of any upload reuses its
// blocks instead of growing the heap.
type blockPool struct{ p sync.Pool }

func newBlockPool() *blockPool {
	return &blockPool{p: sync.Pool{New: func() any { b := make([]byte, 0, blockSize); return &b }}}
}

func (bp *blockPool) get() *[]byte { return bp.p.Get().(*[]byte) }

func (bp *blockPool) put(b *[]byte) {
	*b = (*b)[:0]
	bp.p.Put(b)
}

// part is one multipart part: filled by whole Write calls, then sent.
type part struct {
	num      int32
	pool     *blockPool
	blocks   []*[]byte
	size     int64
	reserved int64 // bytes of the store's memory budget this part holds

	// Set when the part is sealed: the running SHA-256 of the object up to
	// the end of this part, for a checkpoint.
	hashAfter []byte

	// Set by a successful upload; read after done is closed.
	done   chan struct{}
	sha256 []byte
	etag   string
}

func newPart(pool *blockPool, reserved int64) *part {
	return &part{pool: pool, reserved: reserved, done: make(chan struct{})}
}

// write appends p. A part whose reservation is smaller than a block (a
// small object) gets one exactly sized block rather than a pooled 1 MiB.
func (p *part) write(b []byte) {
	p.size += int64(len(b))
	for len(b) > 0 {
		var last *[]byte
		if n := len(p.blocks); n > 0 && len(*p.blocks[n-1]) < cap(*p.blocks[n-1]) {
			last = p.blocks[n-1]
		} else {
			if len(p.blocks) == 0 && p.reserved < blockSize && int64(len(b)) <= p.reserved {
				s := make([]byte, 0, p.reserved)
				last = &s
			} else {
				last = p.pool.get()
			}
			p.blocks = append(p.blocks, last)
		}
		n := min(len(b), cap(*last)-len(*last))
		*last = append(*last, b[:n]...)
		b = b[n:]
	}
}

// allocated is the memory the part's blocks hold.
func (p *part) allocated() int64 {
	var n int64
	for _, b := range p.blocks {
		n += int64(cap(*b))
	}
	return n
}

// release returns the part's memory; the part must not be read after.
func (p *part) release() {
	for _, b := range p.blocks {
		if cap(*b) == blockSize {
			p.pool.put(b)
		}
	}
	p.blocks = nil
}

func (p *part) sum() []byte {
	h := sha256.New()
	for _, b := range p.blocks {
		h.Write(*b)
	}
	return h.Sum(nil)
}

// reader returns the part's bytes as an io.ReadSeeker, which the SDK
// rewinds to retry an attempt.
func (p *part) reader() *blockReader { return &blockReader{blocks: p.blocks, size: p.size} }

type blockReader struct {
	blocks []*[]byte
	size   int64
	off    int64
}

func (r *blockReader) Read(b []byte) (int, error) {
	if r.off >= r.size {
		return 0, io.EOF
	}
	// Blocks are full except the last, so the offset maps to a block by
	// walking their lengths; parts have at most a few hundred blocks.
	n := 0
	pos := int64(0)
	for _, blk := range r.blocks {
		l := int64(len(*blk))
		if r.off < pos+l && n < len(b) {
			c := copy(b[n:], (*blk)[r.off-pos:])
			n += c
			r.off += int64(c)
		}
		pos += l
		if n == len(b) {
			break
		}
	}
	return n, nil
}

func (r *blockReader) Seek(offset int64, whence int) (int64, error) {
	switch whence {
	case io.SeekStart:
	case io.SeekCurrent:
		offset += r.off
	case io.SeekEnd:
		offset += r.size
	default:
		return 0, errors.New("s3: seek: bad whence")
	}
	if offset < 0 {
		return 0, errors.New("s3: seek: negative position")
	}
	r.off = offset
	return offset, nil
}

func (r *blockReader) Len() int { return int(max(0, r.size-r.off)) }
