// Package chunk frames an artifact's raw byte stream into independently
// compressed, hashed chunks on the agent, and verifies them on the
// collector. Both sides keep a running SHA-256 of the whole raw stream, so
// the trailer can prove that nothing was lost, reordered or altered.
package chunk

import (
	"bytes"
	"crypto/sha256"
	"encoding"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"sync"

	"github.com/klauspost/compress/zstd"

	"github.com/custodyhq/custody/internal/sha256x2"
)

// MaxRawSize is the largest raw chunk either side produces or accepts.
const MaxRawSize = 4 << 20

// MaxFrameSize bounds a compressed frame: zstd never expands input by more
// than a small block overhead, so anything larger is not a frame we made.
const MaxFrameSize = MaxRawSize + MaxRawSize/128 + 1024

var (
	ErrSequence = errors.New("chunk: wrong sequence number")
	ErrOffset   = errors.New("chunk: wrong offset")
	ErrTooLarge = errors.New("chunk: too large")
	ErrLength   = errors.New("chunk: raw length mismatch")
	ErrHash     = errors.New("chunk: SHA-256 mismatch")
	ErrCorrupt  = errors.New("chunk: cannot decompress")
	ErrTrailer  = errors.New("chunk: trailer does not match the stream")
)

// Chunk is one piece of the raw stream as it travels: Data is a single zstd
// frame (or the raw bytes when uncompressed). It carries SHA256, the digest
// of its own raw bytes, StreamSHA256, the digest of the raw stream from its
// first byte through this chunk's last, or both (see Digest).
type Chunk struct {
	Seq          uint64
	Offset       int64
	RawLen       int64
	SHA256       []byte
	StreamSHA256 []byte
	Data         []byte
}

// Digest is the SHA-256 an Encoder puts on each chunk. Either proves every
// raw byte of the chunk to a verifier that has checked the chunks before
// it, and either is checked as soon as the chunk arrives.
type Digest int

const (
	// DigestOwn is the chunk's own digest (Chunk.SHA256), which every
	// collector checks. With the whole-stream digest the trailer needs, it
	// hashes each raw byte twice, on both sides (sha256x2 runs the two
	// digests at about 1.2 times the cost of one).
	DigestOwn Digest = iota
	// DigestStream is the running whole-stream digest at the chunk's end
	// (Chunk.StreamSHA256): one hash of each raw byte on each side, for
	// collectors that accept it. On the 2 GiB memory image, agent and
	// collector on 2 CPUs, it took 0.5 CPU-s off a collection's 6.5 and
	// raised the rate from 583 to 628 MiB/s (BenchmarkAB, 4 rounds).
	DigestStream
)

// Trailer is the sender's account of the whole stream.
type Trailer struct {
	Total  int64
	SHA256 []byte
	Count  uint64
}

// Encoder cuts nothing itself: it is fed raw chunks of at most MaxRawSize in
// order and turns each into a Chunk, keeping the whole-stream hash.
type Encoder struct {
	concurrency int
	zenc        *zstd.Encoder
	whole       hash.Hash
	digest      Digest
	seq         uint64
	offset      int64
}

// NewEncoder returns an encoder; compress=false sends raw bytes.
func NewEncoder(compress bool) (*Encoder, error) {
	return NewEncoderAt(compress, Position{})
}

// Position is a point in a stream: the next sequence number, the raw
// offset, and the marshalled SHA-256 state of every raw byte before it
// (crypto/sha256's digest implements encoding.BinaryMarshaler). A nil
// HashState means the empty stream.
type Position struct {
	Seq       uint64
	Offset    int64
	HashState []byte
}

func restoreHash(state []byte) (hash.Hash, error) {
	h := sha256.New()
	if len(state) == 0 {
		return h, nil
	}
	if err := h.(encoding.BinaryUnmarshaler).UnmarshalBinary(state); err != nil {
		return nil, fmt.Errorf("chunk: restore hash state: %w", err)
	}
	return h, nil
}

func hashState(h hash.Hash) []byte {
	b, err := h.(encoding.BinaryMarshaler).MarshalBinary()
	if err != nil {
		panic(err) // sha256 digests always marshal
	}
	return b
}

// NewEncoderAt returns an encoder that continues a stream at p: how an
// agent resumes an interrupted upload where the collector says it stands.
func NewEncoderAt(compress bool, p Position) (*Encoder, error) {
	return NewEncoderConcurrent(compress, p, 1)
}

// NewEncoderConcurrent is NewEncoderAt for a Writer with several workers:
// up to n chunks are compressed at once.
func NewEncoderConcurrent(compress bool, p Position, n int) (*Encoder, error) {
	codec := CodecNone
	if compress {
		codec = CodecZstd
	}
	return NewEncoderCodec(codec, p, n)
}

// Codec is how an Encoder frames chunks. Every codec but CodecNone produces
// standard zstd frames; they differ only in the work spent on them.
type Codec int

const (
	// CodecNone sends the raw bytes.
	CodecNone Codec = iota
	// CodecZstd is zstd's fastest level: right for text, where entropy
	// coding of literals saves about a tenth of the output.
	CodecZstd
	// CodecZstdBulk is CodecZstd without entropy coding of literals, for
	// large binary sources. On a memory image (zero pages, text, random)
	// it compresses twice as fast for 1.4% more output (20.98% -> 21.28%
	// of the input); on source code, 25% faster for 12.6% more.
	CodecZstdBulk
)

// NewEncoderCodec is NewEncoderConcurrent with the codec named.
func NewEncoderCodec(codec Codec, p Position, n int) (*Encoder, error) {
	whole, err := restoreHash(p.HashState)
	if err != nil {
		return nil, err
	}
	e := &Encoder{whole: whole, seq: p.Seq, offset: p.Offset, concurrency: max(n, 1)}
	switch codec {
	case CodecNone:
	case CodecZstd, CodecZstdBulk:
		// One goroutine per encoder: the agent is a guest on the host and
		// caps its CPU share by running few encoders, not wide ones.
		z, err := zstd.NewWriter(nil,
			zstd.WithEncoderLevel(zstd.SpeedFastest),
			// Each concurrent EncodeAll slot holds its own encoder state
			// (several MiB at this window size), so the footprint-minded
			// default is one; NewEncoderConcurrent raises it.
			zstd.WithEncoderConcurrency(e.concurrency),
			zstd.WithZeroFrames(true),
			zstd.WithWindowSize(windowSize(codec)),
			// History of one window and one block, not two windows: a
			// chunk never outgrows its window, so the history is never
			// shifted down, and the rest would be allocated for nothing.
			zstd.WithLowerEncoderMem(true),
			zstd.WithEncoderCRC(false),
			zstd.WithNoEntropyCompression(codec == CodecZstdBulk))
		if err != nil {
			return nil, fmt.Errorf("chunk: zstd encoder: %w", err)
		}
		e.zenc = z
	default:
		return nil, fmt.Errorf("chunk: unknown codec %d", codec)
	}
	return e, nil
}

// windowSize is the zstd window a codec's frames declare.
//
// A bulk upload's chunks are 4 MiB and their frames get a window as large:
// with a smaller one the encoder shifts its history down by a window's
// worth every window it advances, copying the input once more, and finds
// fewer matches. Measured on 4 MiB chunks (scripts/bench's memory image,
// Go's source, /usr/bin): 16-30%, 6% and 5% faster than a 1 MiB window
// and 0.1-1.8% smaller, for 2 MiB more encoder state. Windows small
// enough for the history to stay in the CPU's L2 cache do not pay either:
// on the memory image the chunk path (copy, both SHA-256s, zstd) was 4.8%
// faster with 64 KiB and 1.3% with 128 KiB, for 2.6% and 1.8% more output;
// on text alone 64 KiB compressed 12% slower; and agent → collector
// (BenchmarkAB, 4 rounds) showed no difference. Light artifacts upload
// 1 MiB chunks, which a 1 MiB window covers.
func windowSize(c Codec) int {
	if c == CodecZstdBulk {
		return MaxRawSize
	}
	return 1 << 20
}

// SetDigest chooses the digest each chunk carries (DigestOwn unless set);
// call it before the first chunk.
func (e *Encoder) SetDigest(d Digest) { e.digest = d }

// advance accounts raw as the next chunk of the stream, in order,
// without encoding it: it returns the chunk but for its Data, with the
// digest SetDigest chose, computed in the same pass as the whole-stream
// hash.
func (e *Encoder) advance(raw []byte) (Chunk, error) {
	if len(raw) == 0 || len(raw) > MaxRawSize {
		return Chunk{}, fmt.Errorf("%w: %d raw bytes (1..%d)", ErrTooLarge, len(raw), MaxRawSize)
	}
	c := Chunk{Seq: e.seq, Offset: e.offset, RawLen: int64(len(raw))}
	if e.digest == DigestStream {
		e.whole.Write(raw)
		c.StreamSHA256 = e.whole.Sum(nil)
	} else {
		sum := sha256x2.Sum256AndWrite(e.whole, raw)
		c.SHA256 = sum[:]
	}
	e.seq++
	e.offset += int64(len(raw))
	return c, nil
}

// frame encodes raw into dst; safe to call from several goroutines at once
// (the zstd encoder is created with enough concurrency).
func (e *Encoder) frame(raw, dst []byte) ([]byte, error) {
	if e.zenc != nil {
		return e.zenc.EncodeAll(raw, dst[:0]), nil
	}
	return append(dst[:0], raw...), nil
}

// Encode frames raw as the next chunk. dst is reused for the frame when it
// has capacity; the returned Chunk aliases it.
func (e *Encoder) Encode(raw, dst []byte) (Chunk, error) {
	c, err := e.advance(raw)
	if err != nil {
		return Chunk{}, err
	}
	c.Data, err = e.frame(raw, dst)
	if err != nil {
		return Chunk{}, err
	}
	return c, nil
}

// Trailer returns the account of everything encoded so far.
func (e *Encoder) Trailer() Trailer {
	return Trailer{Total: e.offset, SHA256: e.whole.Sum(nil), Count: e.seq}
}

// Verifier checks chunks as they arrive, strictly in order.
type Verifier struct {
	zdec       *zstd.Decoder
	compressed bool
	whole      hash.Hash
	next       uint64
	offset     int64
	buf        []byte
}

// NewVerifier returns a verifier expecting sequence 0 at offset 0.
func NewVerifier(compressed bool) (*Verifier, error) {
	return NewVerifierAt(compressed, Position{})
}

// NewVerifierAt returns a verifier that continues a stream at p, as
// checkpointed by Position before an interruption.
func NewVerifierAt(compressed bool, p Position) (*Verifier, error) {
	whole, err := restoreHash(p.HashState)
	if err != nil {
		return nil, err
	}
	v := &Verifier{compressed: compressed, whole: whole, next: p.Seq, offset: p.Offset}
	if compressed {
		// The memory cap makes a decompression bomb an error, not an
		// allocation: no chunk may decode beyond MaxRawSize.
		z, err := zstd.NewReader(nil,
			zstd.WithDecoderConcurrency(1),
			zstd.WithDecoderMaxMemory(MaxRawSize),
			zstd.WithDecoderMaxWindow(MaxRawSize))
		if err != nil {
			return nil, fmt.Errorf("chunk: zstd decoder: %w", err)
		}
		v.zdec = z
	}
	return v, nil
}

// Close releases the decoder.
func (v *Verifier) Close() {
	if v.zdec != nil {
		v.zdec.Close()
	}
}

// Committed is the raw offset up to which every byte has been verified.
func (v *Verifier) Committed() int64 { return v.offset }

// Next is the sequence number the verifier expects next.
func (v *Verifier) Next() uint64 { return v.next }

// Verify checks one chunk against the stream so far and returns its raw
// bytes (valid until the next call). A chunk that fails leaves the verifier
// unchanged, so nothing of it counts toward the stream.
func (v *Verifier) Verify(c Chunk) ([]byte, error) {
	raw, err := v.verify(c, v.buf[:0])
	if v.compressed && cap(raw) > cap(v.buf) {
		v.buf = raw[:0]
	}
	if err != nil {
		return nil, err
	}
	return raw, nil
}

// rawBuffers are Check's decode buffers, shared by every verifier in the
// process: a collector with many uploads holds one per chunk being
// checked at this moment (about one per CPU), not one per upload.
var rawBuffers = sync.Pool{New: func() any {
	b := make([]byte, 0, MaxRawSize)
	return &b
}}

// Check is Verify for callers that need only the verdict, not the raw
// bytes (the collector stores the frames as received).
func (v *Verifier) Check(c Chunk) error {
	if !v.compressed {
		_, err := v.verify(c, nil)
		return err
	}
	bp := rawBuffers.Get().(*[]byte)
	raw, err := v.verify(c, (*bp)[:0])
	if cap(raw) >= cap(*bp) {
		*bp = raw[:0]
	}
	rawBuffers.Put(bp)
	return err
}

// verify checks c, decoding into dst, and returns the raw bytes.
func (v *Verifier) verify(c Chunk, dst []byte) ([]byte, error) {
	if c.Seq != v.next {
		return nil, fmt.Errorf("%w: got %d, want %d", ErrSequence, c.Seq, v.next)
	}
	if c.Offset != v.offset {
		return nil, fmt.Errorf("%w: chunk %d at offset %d, want %d", ErrOffset, c.Seq, c.Offset, v.offset)
	}
	if c.RawLen <= 0 || c.RawLen > MaxRawSize {
		return nil, fmt.Errorf("%w: chunk %d raw length %d (1..%d)", ErrTooLarge, c.Seq, c.RawLen, MaxRawSize)
	}
	if len(c.Data) > MaxFrameSize {
		return nil, fmt.Errorf("%w: chunk %d carries %d bytes (max %d)", ErrTooLarge, c.Seq, len(c.Data), MaxFrameSize)
	}
	if len(c.SHA256) == 0 && len(c.StreamSHA256) == 0 {
		return nil, fmt.Errorf("%w: chunk %d carries no digest", ErrHash, c.Seq)
	}
	for _, d := range [][]byte{c.SHA256, c.StreamSHA256} {
		if len(d) != 0 && len(d) != sha256.Size {
			return nil, fmt.Errorf("%w: chunk %d has a %d-byte digest", ErrHash, c.Seq, len(d))
		}
	}
	raw := c.Data
	if v.compressed {
		out, err := v.zdec.DecodeAll(c.Data, dst)
		if err != nil {
			return out, fmt.Errorf("%w: chunk %d: %v", ErrCorrupt, c.Seq, err)
		}
		raw = out
	}
	if int64(len(raw)) != c.RawLen {
		return raw, fmt.Errorf("%w: chunk %d decodes to %d bytes, header says %d", ErrLength, c.Seq, len(raw), c.RawLen)
	}
	// The stream's state is put back if the chunk turns out wrong, so
	// that a rejected chunk leaves no trace.
	before := hashState(v.whole)
	if err := v.digest(c, raw); err != nil {
		restored, rerr := restoreHash(before)
		if rerr != nil {
			panic(rerr) // a state hashState just produced
		}
		v.whole = restored
		return raw, err
	}
	v.next++
	v.offset += c.RawLen
	return raw, nil
}

// digest adds raw to the stream hash and checks each digest c carries.
func (v *Verifier) digest(c Chunk, raw []byte) error {
	if len(c.SHA256) != 0 {
		// The chunk's own digest and the stream's in one pass.
		if sum := sha256x2.Sum256AndWrite(v.whole, raw); !bytes.Equal(sum[:], c.SHA256) {
			return fmt.Errorf("%w: chunk %d at offset %d: computed %s, sent %s",
				ErrHash, c.Seq, c.Offset, hex.EncodeToString(sum[:]), hex.EncodeToString(c.SHA256))
		}
	} else {
		v.whole.Write(raw)
	}
	if len(c.StreamSHA256) != 0 {
		if sum := v.whole.Sum(nil); !bytes.Equal(sum, c.StreamSHA256) {
			return fmt.Errorf("%w: chunk %d at offset %d: stream through it computed %s, sent %s",
				ErrHash, c.Seq, c.Offset, hex.EncodeToString(sum), hex.EncodeToString(c.StreamSHA256))
		}
	}
	return nil
}

// Position returns where the verified stream stands now.
func (v *Verifier) Position() Position {
	return Position{Seq: v.next, Offset: v.offset, HashState: hashState(v.whole)}
}

// Sum returns the SHA-256 of every verified raw byte so far.
func (v *Verifier) Sum() []byte { return v.whole.Sum(nil) }

// Finish checks the sender's trailer against what was verified.
func (v *Verifier) Finish(t Trailer) error {
	if t.Total != v.offset {
		return fmt.Errorf("%w: trailer says %d bytes, %d verified", ErrTrailer, t.Total, v.offset)
	}
	if t.Count != v.next {
		return fmt.Errorf("%w: trailer says %d chunks, %d verified", ErrTrailer, t.Count, v.next)
	}
	if sum := v.whole.Sum(nil); !bytes.Equal(sum, t.SHA256) {
		return fmt.Errorf("%w: stream SHA-256 %s, trailer says %s", ErrTrailer, hex.EncodeToString(sum), hex.EncodeToString(t.SHA256))
	}
	return nil
}
