// Package lime reads and writes LiME v1 physical-memory images, the format
// of the LiME kernel module and the one Volatility 3 opens as a LimeLayer.
//
// An image is a sequence of ranges. Each range is a 32-byte little-endian
// header — magic 0x4C694D45 ("EMiL" on disk), version 1, the first and the
// last physical address of the range (both inclusive), 8 reserved zero bytes
// — followed by exactly end-start+1 bytes of memory. There is nothing before
// the first header and nothing after the last range.
//
// The Reader enforces what Volatility 3's LiME layer
// (volatility3/framework/layers/lime.py) requires of a file, and is stricter
// where Volatility is lenient in ways that only a damaged image exploits:
//
//   - every header has the magic and version 1 (as Volatility);
//   - start <= end (as Volatility) and the length end-start+1 fits in 64 bits;
//   - ranges ascend and do not overlap: start > previous end. Volatility
//     accepts start == previous end, a one-byte overlap whose two bytes
//     disagree about one address; no LiME writer produces it;
//   - at least one range (as Volatility);
//   - every range's bytes are present and nothing follows the last range.
//     Volatility stops when fewer than two bytes remain and fails on a
//     truncated header; it notices a truncated range only when it is read;
//   - the reserved bytes are zero, as LiME writes them (Volatility does not
//     look at them).
//
// The Writer produces only images the Reader accepts.
package lime

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

const (
	// Magic is the first field of every range header.
	Magic uint32 = 0x4C694D45
	// Version is the only version of the format.
	Version uint32 = 1
	// HeaderSize is the size of a range header.
	HeaderSize = 32
)

// ErrFormat is wrapped by every error about an image that breaks the rules.
var ErrFormat = errors.New("lime: invalid image")

// Range is one range of physical memory: the addresses First through Last,
// both inclusive, as the format stores them.
type Range struct {
	First, Last uint64
}

// Len is the number of bytes the range holds.
func (r Range) Len() uint64 { return r.Last - r.First + 1 }

func (r Range) String() string { return fmt.Sprintf("%#x-%#x", r.First, r.Last) }

// valid reports whether the range can stand in an image on its own.
func (r Range) valid() bool {
	// Last-First+1 must not wrap to zero: [0, 2^64-1] has no 64-bit length.
	return r.First <= r.Last && !(r.First == 0 && r.Last == ^uint64(0))
}

// AppendHeader appends the 32-byte header of r to b.
func AppendHeader(b []byte, r Range) []byte {
	b = binary.LittleEndian.AppendUint32(b, Magic)
	b = binary.LittleEndian.AppendUint32(b, Version)
	b = binary.LittleEndian.AppendUint64(b, r.First)
	b = binary.LittleEndian.AppendUint64(b, r.Last)
	return binary.LittleEndian.AppendUint64(b, 0)
}

// ParseHeader decodes one 32-byte header, checking magic, version, reserved
// bytes and start <= end. It knows nothing of the ranges before it.
func ParseHeader(h []byte) (Range, error) {
	if len(h) != HeaderSize {
		return Range{}, fmt.Errorf("%w: header of %d bytes, want %d", ErrFormat, len(h), HeaderSize)
	}
	magic := binary.LittleEndian.Uint32(h[0:])
	version := binary.LittleEndian.Uint32(h[4:])
	r := Range{First: binary.LittleEndian.Uint64(h[8:]), Last: binary.LittleEndian.Uint64(h[16:])}
	reserved := binary.LittleEndian.Uint64(h[24:])
	switch {
	case magic != Magic:
		return r, fmt.Errorf("%w: bad magic %#x", ErrFormat, magic)
	case version != Version:
		return r, fmt.Errorf("%w: version %d, want %d", ErrFormat, version, Version)
	case reserved != 0:
		return r, fmt.Errorf("%w: reserved bytes %#x are not zero", ErrFormat, reserved)
	case !r.valid():
		return r, fmt.Errorf("%w: bad range %#x-%#x", ErrFormat, r.First, r.Last)
	}
	return r, nil
}

// Size is the length of an image holding ranges: their bytes plus one
// header each.
func Size(ranges []Range) uint64 {
	var n uint64
	for _, r := range ranges {
		n += HeaderSize + r.Len()
	}
	return n
}

// Writer writes an image range by range. Begin starts a range; exactly
// Len() bytes must then be written before the next Begin or Close. It
// refuses anything that would make an image the Reader rejects.
type Writer struct {
	w       io.Writer
	cur     Range
	left    uint64 // bytes still owed to the current range
	started bool   // a range has been begun
	err     error  // sticky
	hdr     []byte
}

// NewWriter returns a Writer to w.
func NewWriter(w io.Writer) *Writer { return &Writer{w: w, hdr: make([]byte, 0, HeaderSize)} }

// Begin writes the header of the next range. The previous range must be
// complete and end below r.First.
func (w *Writer) Begin(r Range) error {
	if w.err != nil {
		return w.err
	}
	switch {
	case w.left != 0:
		return fmt.Errorf("lime: range %v begun with %d bytes of %v unwritten", r, w.left, w.cur)
	case !r.valid():
		return fmt.Errorf("lime: bad range %#x-%#x", r.First, r.Last)
	case w.started && r.First <= w.cur.Last:
		return fmt.Errorf("lime: range %v does not ascend past %v", r, w.cur)
	}
	w.hdr = AppendHeader(w.hdr[:0], r)
	if _, err := w.w.Write(w.hdr); err != nil {
		w.err = err
		return err
	}
	w.cur, w.left, w.started = r, r.Len(), true
	return nil
}

// Write writes bytes of the current range; more than it has left is an
// error and writes nothing.
func (w *Writer) Write(p []byte) (int, error) {
	if w.err != nil {
		return 0, w.err
	}
	if uint64(len(p)) > w.left {
		return 0, fmt.Errorf("lime: %d bytes written to range %v, which has %d left", len(p), w.cur, w.left)
	}
	n, err := w.w.Write(p)
	w.left -= uint64(n)
	if err != nil {
		w.err = err
	}
	return n, err
}

// Remaining is what the current range still needs.
func (w *Writer) Remaining() uint64 { return w.left }

// Close checks that the image is complete: at least one range, and the last
// one full. It does not close the underlying writer.
func (w *Writer) Close() error {
	if w.err != nil {
		return w.err
	}
	if !w.started {
		return errors.New("lime: an image needs at least one range")
	}
	if w.left != 0 {
		return fmt.Errorf("lime: range %v is missing %d bytes", w.cur, w.left)
	}
	return nil
}

// Reader reads an image range by range: Next returns the next header, and
// Read returns that range's bytes until io.EOF. Next returns io.EOF after
// the last range, once it has checked that nothing follows.
type Reader struct {
	r      io.Reader
	cur    Range
	left   uint64
	n      int   // ranges seen
	off    int64 // offset in the image, for messages
	err    error // sticky
	hdr    [HeaderSize]byte
	intoRg bool
}

// NewReader returns a Reader of r.
func NewReader(r io.Reader) *Reader { return &Reader{r: r} }

// Next skips what is left of the current range and reads the next header.
func (r *Reader) Next() (Range, error) {
	if r.err != nil {
		return Range{}, r.err
	}
	for r.left > 0 {
		n, err := io.CopyN(io.Discard, r.r, int64(min(r.left, 1<<62)))
		r.off += n
		r.left -= uint64(n)
		if err != nil {
			return Range{}, r.fail(r.truncated(err))
		}
	}
	n, err := io.ReadFull(r.r, r.hdr[:])
	switch {
	case err == io.EOF && r.n > 0:
		r.err = io.EOF
		return Range{}, io.EOF
	case err == io.EOF:
		return Range{}, r.fail(fmt.Errorf("%w: no ranges", ErrFormat))
	case err == io.ErrUnexpectedEOF:
		return Range{}, r.fail(fmt.Errorf("%w: %d bytes after the last range at offset %d, too few for a header", ErrFormat, n, r.off))
	case err != nil:
		return Range{}, r.fail(err)
	}
	rg, err := ParseHeader(r.hdr[:])
	if err != nil {
		return Range{}, r.fail(fmt.Errorf("range %d at offset %d: %w", r.n, r.off, err))
	}
	if r.n > 0 && rg.First <= r.cur.Last {
		return Range{}, r.fail(fmt.Errorf("%w: range %d at offset %d: %v does not ascend past %v", ErrFormat, r.n, r.off, rg, r.cur))
	}
	r.off += HeaderSize
	r.cur, r.left, r.intoRg = rg, rg.Len(), true
	r.n++
	return rg, nil
}

// Read reads the current range's bytes; it returns io.EOF at the range's
// end, and an error wrapping ErrFormat if the image ends before it.
func (r *Reader) Read(p []byte) (int, error) {
	if r.err != nil && r.err != io.EOF {
		return 0, r.err
	}
	if !r.intoRg || r.left == 0 {
		return 0, io.EOF
	}
	if uint64(len(p)) > r.left {
		p = p[:r.left]
	}
	n, err := r.r.Read(p)
	r.off += int64(n)
	r.left -= uint64(n)
	if err == io.EOF && r.left > 0 {
		return n, r.fail(r.truncated(io.ErrUnexpectedEOF))
	}
	if err != nil && err != io.EOF {
		return n, r.fail(err)
	}
	if r.left == 0 {
		return n, io.EOF
	}
	return n, nil
}

func (r *Reader) truncated(err error) error {
	if err == io.EOF || err == io.ErrUnexpectedEOF {
		return fmt.Errorf("%w: range %v ends %d bytes short at offset %d", ErrFormat, r.cur, r.left, r.off)
	}
	return err
}

func (r *Reader) fail(err error) error {
	r.err = err
	return err
}

// Offset is how many bytes of the image have been consumed.
func (r *Reader) Offset() int64 { return r.off }

// Validate reads a whole image and returns its ranges, or the first rule it
// breaks.
func Validate(r io.Reader) ([]Range, error) {
	lr := NewReader(r)
	var out []Range
	for {
		rg, err := lr.Next()
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return out, err
		}
		out = append(out, rg)
	}
}
