package sha256x2

import (
	"bytes"
	"crypto/sha256"
	"crypto/sha512"
	"hash"
	"math/rand/v2"
	"os"
	"strings"
	"testing"
)

// check compares Sum256AndWrite with crypto/sha256 after the stream has
// already taken prefix.
func check(t testing.TB, prefix, p []byte) {
	t.Helper()
	stream := sha256.New()
	stream.Write(prefix)
	got := Sum256AndWrite(stream, p)
	if want := sha256.Sum256(p); got != want {
		t.Fatalf("chunk digest of %d bytes after %d: got %x, want %x", len(p), len(prefix), got, want)
	}
	want := sha256.Sum256(append(append([]byte{}, prefix...), p...))
	if g := stream.Sum(nil); !bytes.Equal(g, want[:]) {
		t.Fatalf("stream digest of %d+%d bytes: got %x, want %x", len(prefix), len(p), g, want)
	}
	// The stream goes on correctly after the call.
	stream.Write([]byte("more"))
	want = sha256.Sum256(append(append(append([]byte{}, prefix...), p...), "more"...))
	if g := stream.Sum(nil); !bytes.Equal(g, want[:]) {
		t.Fatalf("stream digest after a further write is wrong")
	}
}

func TestMatchesCryptoSHA256(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	data := randomBytes(rng, 4<<20+200)
	prefixes := []int{0, 1, 63, 64, 65, 128, 4 << 20}
	lengths := []int{0, 1, 55, 56, 63, 64, 65, 119, 120, 127, 128, 129, 1000, 4096, 1<<20 + 3, 4 << 20}
	for _, pl := range prefixes {
		for _, n := range lengths {
			check(t, data[len(data)-pl:], data[:n])
		}
	}
	for range 200 {
		check(t, data[:rng.IntN(300)], data[rng.IntN(100):][:rng.IntN(5000)])
	}
}

// A chain of chunks, as the encoder and the verifier hash them.
func TestChunkChain(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	stream, ref := sha256.New(), sha256.New()
	for i := range 50 {
		p := randomBytes(rng, 64*rng.IntN(2000)+(i%7)*rng.IntN(64))
		if got, want := Sum256AndWrite(stream, p), sha256.Sum256(p); got != want {
			t.Fatalf("chunk %d: got %x, want %x", i, got, want)
		}
		ref.Write(p)
	}
	if !bytes.Equal(stream.Sum(nil), ref.Sum(nil)) {
		t.Fatal("stream digest differs after 50 chunks")
	}
}

// A run written in pieces of any size, as a store writes a part block by
// block, gives the same digests as one write.
func TestPairInPieces(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	data := randomBytes(rng, 3<<20+77)
	for _, prefix := range []int{0, 64, 5 << 20, 1, 100} {
		for range 20 {
			run := data[:rng.IntN(len(data))]
			stream, ref := sha256.New(), sha256.New()
			pre := bytes.Repeat([]byte{9}, prefix)
			stream.Write(pre)
			ref.Write(pre)
			p := newPair(stream)
			for rest := run; len(rest) > 0; {
				k := min(len(rest), rng.IntN(200000)+1)
				if rng.IntN(4) == 0 {
					k = min(len(rest), rng.IntN(130))
				}
				p.Write(rest[:k])
				rest = rest[k:]
			}
			if got, want := p.Sum(), sha256.Sum256(run); got != want {
				t.Fatalf("prefix %d, run %d: own digest %x, want %x", prefix, len(run), got, want)
			}
			ref.Write(run)
			if !bytes.Equal(stream.Sum(nil), ref.Sum(nil)) {
				t.Fatalf("prefix %d, run %d: stream digest differs", prefix, len(run))
			}
		}
	}
}

// Two running digests of the same object, written chunk by chunk of any
// length (a store's and its caller's), match crypto/sha256.
func TestWriteBoth(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 8))
	data := randomBytes(rng, 6<<20)
	for _, prefix := range []int{0, 1, 63, 64, 1000} {
		a, b, ref := sha256.New(), sha256.New(), sha256.New()
		pre := data[len(data)-prefix:]
		a.Write(pre)
		b.Write(pre)
		ref.Write(pre)
		for rest := data[:5<<20]; len(rest) > 0; {
			k := min(len(rest), 1+rng.IntN(900000))
			if rng.IntN(5) == 0 {
				k = min(len(rest), rng.IntN(200))
			}
			WriteBoth(a, b, rest[:k])
			ref.Write(rest[:k])
			rest = rest[k:]
		}
		want := ref.Sum(nil)
		if !bytes.Equal(a.Sum(nil), want) || !bytes.Equal(b.Sum(nil), want) {
			t.Fatalf("prefix %d: digests differ from crypto/sha256", prefix)
		}
	}
	// Digests at different lengths, or not SHA-256 at all, are written
	// one after the other and still come out right.
	a, b := sha256.New(), sha512.New()
	a.Write([]byte("x"))
	WriteBoth(a, b, data[:1<<20])
	if wa, wb := sha256.Sum256(append([]byte("x"), data[:1<<20]...)), sha512.Sum512(data[:1<<20]); !bytes.Equal(a.Sum(nil), wa[:]) || !bytes.Equal(b.Sum(nil), wb[:]) {
		t.Fatal("fallback digests are wrong")
	}
}

// The fast path must be the one tested wherever the CPU has it, or a
// broken block2 could hide behind the fallback.
func TestFastPathUsedWhereAvailable(t *testing.T) {
	info, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		t.Skipf("no /proc/cpuinfo: %v", err)
	}
	has := strings.Contains(string(info), " sha_ni")
	if has != fast {
		t.Fatalf("/proc/cpuinfo says sha_ni=%v, package uses the fast path: %v", has, fast)
	}
}

func FuzzWriteBoth(f *testing.F) {
	f.Add([]byte{}, []byte("abc"), 1)
	f.Add(bytes.Repeat([]byte{1}, 70), bytes.Repeat([]byte{2}, 300), 129)
	f.Fuzz(func(t *testing.T, prefix, p []byte, cut int) {
		a, b := sha256.New(), sha256.New()
		a.Write(prefix)
		b.Write(prefix)
		cut = min(max(cut, 0), len(p))
		WriteBoth(a, b, p[:cut])
		WriteBoth(a, b, p[cut:])
		want := sha256.Sum256(append(append([]byte{}, prefix...), p...))
		if !bytes.Equal(a.Sum(nil), want[:]) || !bytes.Equal(b.Sum(nil), want[:]) {
			t.Fatalf("prefix %d, p %d cut at %d: digests differ", len(prefix), len(p), cut)
		}
	})
}

func FuzzSum256AndWrite(f *testing.F) {
	f.Add([]byte{}, []byte("abc"))
	f.Add(bytes.Repeat([]byte{1}, 64), bytes.Repeat([]byte{2}, 200))
	f.Add([]byte{7}, bytes.Repeat([]byte{3}, 129))
	f.Fuzz(func(t *testing.T, prefix, p []byte) { check(t, prefix, p) })
}

func BenchmarkPair(b *testing.B) {
	p := make([]byte, 4<<20)
	for i := range p {
		p[i] = byte(i * 7)
	}
	b.Run("Sum256AndWrite", func(b *testing.B) {
		stream := sha256.New()
		b.SetBytes(int64(len(p)))
		for b.Loop() {
			Sum256AndWrite(stream, p)
		}
	})
	b.Run("separately", func(b *testing.B) {
		stream := sha256.New()
		b.SetBytes(int64(len(p)))
		for b.Loop() {
			separately(stream, p)
		}
	})
}

// separately is what Sum256AndWrite replaces: two passes.
func separately(stream hash.Hash, p []byte) [sha256.Size]byte {
	stream.Write(p)
	return sha256.Sum256(p)
}

func BenchmarkWriteBoth(b *testing.B) {
	p := make([]byte, 900_001)
	for i := range p {
		p[i] = byte(i * 7)
	}
	b.Run("WriteBoth", func(b *testing.B) {
		x, y := sha256.New(), sha256.New()
		b.SetBytes(int64(len(p)))
		for b.Loop() {
			WriteBoth(x, y, p)
		}
	})
	b.Run("separately", func(b *testing.B) {
		x, y := sha256.New(), sha256.New()
		b.SetBytes(int64(len(p)))
		for b.Loop() {
			x.Write(p)
			y.Write(p)
		}
	})
}

func randomBytes(rng *rand.Rand, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(rng.Uint32())
	}
	return b
}
