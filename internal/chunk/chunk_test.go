package chunk

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"testing"
	"testing/iotest"
)

func encodeAll(t *testing.T, compress bool, data []byte, size int, d Digest) ([]Chunk, Trailer) {
	t.Helper()
	e, err := NewEncoder(compress)
	if err != nil {
		t.Fatal(err)
	}
	e.SetDigest(d)
	var out []Chunk
	for off := 0; off < len(data); off += size {
		end := min(off+size, len(data))
		c, err := e.Encode(data[off:end], nil)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, c)
	}
	return out, e.Trailer()
}

var digests = []Digest{DigestOwn, DigestStream}

func (d Digest) String() string { return [...]string{"own", "stream"}[d] }

// carried is the digest field of c that d fills.
func carried(c *Chunk, d Digest) *[]byte {
	if d == DigestStream {
		return &c.StreamSHA256
	}
	return &c.SHA256
}

func testData(n int) []byte {
	b := make([]byte, n)
	rand.Read(b[:n/2]) // half random, half zeros: both paths of the compressor
	return b
}

func TestRoundTrip(t *testing.T) {
	for _, d := range digests {
		for _, compress := range []bool{true, false} {
			t.Run(fmt.Sprintf("%v/compress=%v", d, compress), func(t *testing.T) { testRoundTrip(t, compress, d) })
		}
	}
}

func testRoundTrip(t *testing.T, compress bool, d Digest) {
	data := testData(9<<20 + 17)
	chunks, tr := encodeAll(t, compress, data, MaxRawSize, d)
	v, err := NewVerifier(compress)
	if err != nil {
		t.Fatal(err)
	}
	var got []byte
	for _, c := range chunks {
		// Exactly the digest asked for: the own digest of the chunk's
		// bytes, or the digest of the stream through them.
		want := sha256.Sum256(data[c.Offset : c.Offset+c.RawLen])
		if d == DigestStream {
			want = sha256.Sum256(data[:c.Offset+c.RawLen])
		}
		if !bytes.Equal(*carried(&c, d), want[:]) || len(c.SHA256)+len(c.StreamSHA256) != sha256.Size {
			t.Fatalf("chunk %d carries SHA256 %x, StreamSHA256 %x; want %x as %v", c.Seq, c.SHA256, c.StreamSHA256, want, d)
		}
		raw, err := v.Verify(c)
		if err != nil {
			t.Fatalf("compress=%v: %v", compress, err)
		}
		got = append(got, raw...)
	}
	if err := v.Finish(tr); err != nil {
		t.Fatalf("compress=%v: %v", compress, err)
	}
	if !bytes.Equal(got, data) {
		t.Fatalf("compress=%v: round trip changed the bytes", compress)
	}
	want := sha256.Sum256(data)
	if !bytes.Equal(v.Sum(), want[:]) {
		t.Fatalf("compress=%v: whole-stream hash differs", compress)
	}
	if len(chunks) != 3 || v.Committed() != int64(len(data)) {
		t.Fatalf("compress=%v: %d chunks, committed %d", compress, len(chunks), v.Committed())
	}
}

// A chunk whose bytes do not match its digest is refused without a trace:
// the same chunk sent again intact still verifies, and the stream hash
// comes out right. (The stream hash has taken the chunk's bytes by the time
// either digest is compared, so its state must be put back on a mismatch.)
func TestRejectedChunkLeavesStreamHash(t *testing.T) {
	for _, d := range digests {
		for _, compress := range []bool{true, false} {
			data := testData(3<<20 + 100)
			chunks, tr := encodeAll(t, compress, data, 1<<20, d)
			v, _ := NewVerifier(compress)
			for i, c := range chunks {
				if i == 1 {
					bad := c
					sum := carried(&bad, d)
					*sum = bytes.Clone(*sum)
					(*sum)[0] ^= 1
					if _, err := v.Verify(bad); !errors.Is(err, ErrHash) {
						t.Fatalf("%v compress=%v: wrong digest: %v, want ErrHash", d, compress, err)
					}
				}
				if _, err := v.Verify(c); err != nil {
					t.Fatalf("%v compress=%v: chunk %d after a refused copy: %v", d, compress, i, err)
				}
			}
			if err := v.Finish(tr); err != nil {
				t.Fatalf("%v compress=%v: %v", d, compress, err)
			}
		}
	}
}

func TestTampering(t *testing.T) {
	data := testData(3 << 20)
	tests := []struct {
		name   string
		mutate func(cs []Chunk, tr *Trailer, d Digest) []Chunk
		want   error
	}{
		{"flipped byte in frame", func(cs []Chunk, _ *Trailer, _ Digest) []Chunk {
			cs[1].Data = bytes.Clone(cs[1].Data)
			cs[1].Data[len(cs[1].Data)/2] ^= 0x40
			return cs
		}, nil /* ErrCorrupt or ErrHash, checked below */},
		{"wrong hash", func(cs []Chunk, _ *Trailer, d Digest) []Chunk {
			sum := carried(&cs[1], d)
			*sum = bytes.Clone(*sum)
			(*sum)[0] ^= 1
			return cs
		}, ErrHash},
		{"right hash, wrong other hash", func(cs []Chunk, _ *Trailer, d Digest) []Chunk {
			// Every digest a chunk carries is checked.
			*carried(&cs[1], 1-d) = make([]byte, sha256.Size)
			return cs
		}, ErrHash},
		{"no hash", func(cs []Chunk, _ *Trailer, d Digest) []Chunk { *carried(&cs[1], d) = nil; return cs }, ErrHash},
		{"stream hash of the chunk alone", func(cs []Chunk, _ *Trailer, d Digest) []Chunk {
			sum := sha256.Sum256(data[cs[1].Offset : cs[1].Offset+cs[1].RawLen])
			cs[1].SHA256, cs[1].StreamSHA256 = nil, sum[:]
			return cs
		}, ErrHash},
		{"gap in offsets", func(cs []Chunk, _ *Trailer, _ Digest) []Chunk { cs[1].Offset += 1; return cs }, ErrOffset},
		{"overlap in offsets", func(cs []Chunk, _ *Trailer, _ Digest) []Chunk { cs[1].Offset -= 1; return cs }, ErrOffset},
		{"repeated sequence", func(cs []Chunk, _ *Trailer, _ Digest) []Chunk { cs[1].Seq = 0; return cs }, ErrSequence},
		{"skipped sequence", func(cs []Chunk, _ *Trailer, _ Digest) []Chunk { cs[1].Seq = 2; return cs }, ErrSequence},
		{"missing chunk", func(cs []Chunk, _ *Trailer, _ Digest) []Chunk { return append(cs[:1], cs[2:]...) }, ErrSequence},
		{"length lies", func(cs []Chunk, _ *Trailer, _ Digest) []Chunk { cs[1].RawLen -= 1; return cs }, ErrLength},
		{"oversized raw length", func(cs []Chunk, _ *Trailer, _ Digest) []Chunk { cs[1].RawLen = MaxRawSize + 1; return cs }, ErrTooLarge},
		{"oversized frame", func(cs []Chunk, _ *Trailer, _ Digest) []Chunk { cs[1].Data = make([]byte, MaxFrameSize+1); return cs }, ErrTooLarge},
		{"short digest", func(cs []Chunk, _ *Trailer, d Digest) []Chunk {
			sum := carried(&cs[1], d)
			*sum = (*sum)[:16]
			return cs
		}, ErrHash},
		{"trailer hash", func(cs []Chunk, tr *Trailer, _ Digest) []Chunk { tr.SHA256 = make([]byte, 32); return cs }, ErrTrailer},
		{"trailer total", func(cs []Chunk, tr *Trailer, _ Digest) []Chunk { tr.Total++; return cs }, ErrTrailer},
		{"trailer count", func(cs []Chunk, tr *Trailer, _ Digest) []Chunk { tr.Count--; return cs }, ErrTrailer},
	}
	for _, tt := range tests {
		// Verify and Check (the collector's, with shared buffers) must
		// refuse alike.
		for _, check := range []bool{false, true} {
			for _, d := range digests {
				t.Run(fmt.Sprintf("%s/%v/check=%v", tt.name, d, check), func(t *testing.T) {
					chunks, tr := encodeAll(t, true, data, 1<<20, d)
					chunks = tt.mutate(chunks, &tr, d)
					want := tt.want
					v, _ := NewVerifier(true)
					defer v.Close()
					var err error
					for _, c := range chunks {
						if check {
							err = v.Check(c)
						} else {
							_, err = v.Verify(c)
						}
						if err != nil {
							break
						}
					}
					if err == nil {
						err = v.Finish(tr)
					}
					switch {
					case err == nil:
						t.Fatal("tampered stream was accepted")
					case want == nil:
						if !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrHash) && !errors.Is(err, ErrLength) {
							t.Fatalf("got %v, want a corruption error", err)
						}
					case !errors.Is(err, want):
						t.Fatalf("got %v, want %v", err, want)
					}
				})
			}
		}
	}
}

// Two chunks of the same size swapped, each with its digests: a stream
// digest refuses the first one out of place, an own digest only the
// trailer.
func TestSwappedChunks(t *testing.T) {
	data := testData(3 << 20)
	for _, d := range digests {
		chunks, tr := encodeAll(t, true, data, 1<<20, d)
		chunks[1], chunks[2] = chunks[2], chunks[1]
		chunks[1].Seq, chunks[2].Seq = 1, 2
		chunks[1].Offset, chunks[2].Offset = 1<<20, 2<<20
		v, _ := NewVerifier(true)
		_, err0 := v.Verify(chunks[0])
		_, err1 := v.Verify(chunks[1])
		switch {
		case err0 != nil:
			t.Fatalf("%v: first chunk: %v", d, err0)
		case d == DigestStream && !errors.Is(err1, ErrHash):
			t.Fatalf("%v: chunk out of place: %v, want ErrHash", d, err1)
		case d == DigestOwn && err1 != nil:
			t.Fatalf("%v: chunk out of place: %v, want it accepted until the trailer", d, err1)
		case d == DigestOwn:
			if _, err := v.Verify(chunks[2]); err != nil {
				t.Fatal(err)
			}
			if err := v.Finish(tr); !errors.Is(err, ErrTrailer) {
				t.Fatalf("%v: trailer after swapped chunks: %v, want ErrTrailer", d, err)
			}
		}
		v.Close()
	}
}

func TestDecompressionBombRefused(t *testing.T) {
	// A tiny frame that would expand far beyond its declared raw length.
	e, _ := NewEncoder(true)
	huge := make([]byte, MaxRawSize)
	c, err := e.Encode(huge, nil)
	if err != nil {
		t.Fatal(err)
	}
	// Concatenate frames: decodes to 2*MaxRawSize.
	c.Data = append(bytes.Clone(c.Data), c.Data...)
	v, _ := NewVerifier(true)
	if _, err := v.Verify(c); err == nil {
		t.Fatal("bomb accepted")
	}
	if v.Committed() != 0 || v.Next() != 0 {
		t.Fatal("failed chunk advanced the verifier")
	}
}

func FuzzVerify(f *testing.F) {
	e, _ := NewEncoder(true)
	c, _ := e.Encode([]byte("custody evidence chunk"), nil)
	f.Add(c.Data, int64(c.RawLen), c.SHA256, []byte(nil))
	f.Add(c.Data, int64(c.RawLen), []byte(nil), c.SHA256) // the first chunk's stream digest is its own
	f.Add(c.Data, int64(c.RawLen), c.SHA256, c.SHA256)
	f.Add([]byte{0x28, 0xb5, 0x2f, 0xfd}, int64(10), make([]byte, 32), []byte(nil))
	f.Fuzz(func(t *testing.T, data []byte, rawLen int64, sum, stream []byte) {
		v, err := NewVerifier(true)
		if err != nil {
			t.Fatal(err)
		}
		defer v.Close()
		raw, err := v.Verify(Chunk{Seq: 0, Offset: 0, RawLen: rawLen, SHA256: sum, StreamSHA256: stream, Data: data})
		if err != nil {
			return
		}
		got := sha256.Sum256(raw)
		if len(sum)+len(stream) == 0 || int64(len(raw)) != rawLen ||
			(len(sum) > 0 && !bytes.Equal(got[:], sum)) || (len(stream) > 0 && !bytes.Equal(got[:], stream)) {
			t.Fatal("accepted a chunk whose bytes do not match its header")
		}
	})
}

// oddReader returns at most a varying, odd number of bytes per Read.
type oddReader struct {
	data []byte
	i    int
}

func (r *oddReader) Read(p []byte) (int, error) {
	if len(r.data) == 0 {
		return 0, io.EOF
	}
	r.i++
	n := min(len(p), len(r.data), 1+(r.i*7919)%(3<<20))
	copy(p, r.data[:n])
	r.data = r.data[n:]
	return n, nil
}

// ReadFrom cuts the same chunks as Write, with the same hashes, and stops
// at the reader's error.
func TestWriterReadFrom(t *testing.T) {
	data := testData(11<<20 + 17)
	for _, workers := range []int{1, 2} {
		encode := func(fill func(*Writer) error) ([]Chunk, Trailer) {
			e, _ := NewEncoder(true)
			var cs []Chunk
			w := NewParallelWriter(e, 4<<20, workers, func(c Chunk) error {
				c.Data = bytes.Clone(c.Data)
				cs = append(cs, c)
				return nil
			})
			if err := fill(w); err != nil {
				t.Fatal(err)
			}
			if err := w.Flush(); err != nil {
				t.Fatal(err)
			}
			return cs, w.Trailer()
		}
		want, wantTr := encode(func(w *Writer) error { _, err := w.Write(data); return err })
		got, gotTr := encode(func(w *Writer) error {
			n, err := w.ReadFrom(&oddReader{data: data})
			if n != int64(len(data)) {
				t.Errorf("ReadFrom read %d bytes, want %d", n, len(data))
			}
			return err
		})
		if len(got) != len(want) || !bytes.Equal(gotTr.SHA256, wantTr.SHA256) || gotTr.Total != wantTr.Total {
			t.Fatalf("workers=%d: ReadFrom made %d chunks (trailer %+v), Write %d (%+v)", workers, len(got), gotTr, len(want), wantTr)
		}
		for i := range got {
			if got[i].RawLen != want[i].RawLen || !bytes.Equal(got[i].SHA256, want[i].SHA256) || !bytes.Equal(got[i].Data, want[i].Data) {
				t.Fatalf("workers=%d: chunk %d differs", workers, i)
			}
		}
	}
	boom := errors.New("disk gone")
	e, _ := NewEncoder(true)
	w := NewWriter(e, 1<<20, func(Chunk) error { return nil })
	if _, err := w.ReadFrom(io.MultiReader(bytes.NewReader(data[:3<<20]), iotest.ErrReader(boom))); !errors.Is(err, boom) {
		t.Fatalf("ReadFrom over a failing reader: %v, want %v", err, boom)
	}
}

func TestWriterCutsExactChunks(t *testing.T) {
	for _, workers := range []int{1, 3} {
		t.Run(fmt.Sprint(workers), func(t *testing.T) { testWriterCuts(t, workers) })
	}
}

func testWriterCuts(t *testing.T, workers int) {
	data := testData(10<<20 + 3)
	e, _ := NewEncoder(true)
	v, _ := NewVerifier(true)
	var sizes []int64
	w := NewParallelWriter(e, 4<<20, workers, func(c Chunk) error {
		sizes = append(sizes, c.RawLen)
		_, err := v.Verify(c)
		return err
	})
	// Odd-sized writes, so chunk boundaries fall inside writes.
	for off := 0; off < len(data); off += 777_777 {
		if _, err := w.Write(data[off:min(off+777_777, len(data))]); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := v.Finish(w.Trailer()); err != nil {
		t.Fatal(err)
	}
	want := []int64{4 << 20, 4 << 20, 2<<20 + 3}
	if len(sizes) != 3 || sizes[0] != want[0] || sizes[1] != want[1] || sizes[2] != want[2] {
		t.Fatalf("chunk sizes %v, want %v", sizes, want)
	}
}

// TestResumeAtPosition: a stream verified in two halves, with the verifier
// and encoder rebuilt from a checkpointed Position in between, ends with the
// same hashes as one uninterrupted stream.
func TestResumeAtPosition(t *testing.T) {
	data := testData(6<<20 + 5)
	e, _ := NewEncoder(true)
	v, _ := NewVerifier(true)
	first, _ := e.Encode(data[:1<<20], nil)
	if _, err := v.Verify(first); err != nil {
		t.Fatal(err)
	}
	pos := v.Position()

	for _, d := range digests {
		e2, err := NewEncoderAt(true, pos)
		if err != nil {
			t.Fatal(err)
		}
		e2.SetDigest(d)
		v2, err := NewVerifierAt(true, pos)
		if err != nil {
			t.Fatal(err)
		}
		for off := 1 << 20; off < len(data); off += 2 << 20 {
			end := min(off+2<<20, len(data))
			c, _ := e2.Encode(data[off:end], nil)
			// A resumed stream digest still covers the stream from
			// its first byte.
			if want := sha256.Sum256(data[:end]); d == DigestStream && !bytes.Equal(c.StreamSHA256, want[:]) {
				t.Fatalf("resumed chunk at %d: stream digest %x, want %x", off, c.StreamSHA256, want)
			}
			if _, err := v2.Verify(c); err != nil {
				t.Fatalf("%v: %v", d, err)
			}
		}
		if err := v2.Finish(e2.Trailer()); err != nil {
			t.Fatalf("%v: %v", d, err)
		}
		want := sha256.Sum256(data)
		if !bytes.Equal(v2.Sum(), want[:]) {
			t.Fatalf("%v: resumed stream hash differs from the whole stream's", d)
		}
	}
	if _, err := NewVerifierAt(true, Position{HashState: []byte("garbage")}); err == nil {
		t.Fatal("garbage hash state accepted")
	}
}

func TestParallelWriterOrderAndErrors(t *testing.T) {
	data := testData(40<<20 + 1)
	e, _ := NewEncoderConcurrent(true, Position{}, 4)
	v, _ := NewVerifier(true)
	w := NewParallelWriter(e, 1<<20, 4, func(c Chunk) error {
		_, err := v.Verify(c) // fails on any reordering
		return err
	})
	if _, err := w.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := v.Finish(w.Trailer()); err != nil {
		t.Fatal(err)
	}

	boom := errors.New("collector went away")
	e2, _ := NewEncoderConcurrent(true, Position{}, 4)
	calls := 0
	w2 := NewParallelWriter(e2, 1<<20, 4, func(Chunk) error {
		calls++
		if calls == 3 {
			return boom
		}
		return nil
	})
	_, err := w2.Write(data)
	if ferr := w2.Flush(); !errors.Is(err, boom) && !errors.Is(ferr, boom) {
		t.Fatalf("write %v, flush %v; want the emit error", err, ferr)
	}
	if calls != 3 {
		t.Fatalf("emit called %d times after failing at 3", calls)
	}
}

// The bulk codec's frames are standard zstd frames: the collector's
// verifier (and zstd -d) read them like any other, and on text-like data
// they are larger than the default codec's but still compressed.
func TestBulkCodecFrames(t *testing.T) {
	var text bytes.Buffer
	for i := 0; text.Len() < 2<<20; i++ {
		fmt.Fprintf(&text, "2026-11-22T07:%02d:%02d sshd[%d]: Accepted publickey for ec2-user from 10.0.%d.%d\n", i%60, i%59, 1000+i%5000, i%256, i*7%256)
	}
	data := text.Bytes()
	sizes := map[Codec]int{}
	for _, codec := range []Codec{CodecZstd, CodecZstdBulk} {
		e, err := NewEncoderCodec(codec, Position{}, 1)
		if err != nil {
			t.Fatal(err)
		}
		c, err := e.Encode(data, nil)
		if err != nil {
			t.Fatal(err)
		}
		sizes[codec] = len(c.Data)
		v, err := NewVerifier(true)
		if err != nil {
			t.Fatal(err)
		}
		raw, err := v.Verify(c)
		if err != nil {
			t.Fatalf("codec %d: %v", codec, err)
		}
		if !bytes.Equal(raw, data) {
			t.Fatalf("codec %d: round trip changed the bytes", codec)
		}
		if err := v.Finish(e.Trailer()); err != nil {
			t.Fatalf("codec %d: %v", codec, err)
		}
	}
	if sizes[CodecZstdBulk] >= len(data)/2 || sizes[CodecZstdBulk] < sizes[CodecZstd] {
		t.Errorf("frame sizes of %d bytes of text: default %d, bulk %d; want bulk compressed, and no smaller than default",
			len(data), sizes[CodecZstd], sizes[CodecZstdBulk])
	}
	if _, err := NewEncoderCodec(Codec(42), Position{}, 1); err == nil {
		t.Error("unknown codec accepted")
	}
}
