package store

import (
	"bytes"
	"crypto/sha256"
	"encoding"
	"hash"
	"math/rand/v2"
	"testing"
)

// TestDigestMatchesSeparateDigests drives a Digest and its callers'
// digests through random sequences of what a writer and its caller do —
// writes with and without a tee, a second caller digest, bytes the caller
// adds to its own digest, checkpoints and sums — and checks every result
// against plain crypto/sha256 digests of the same bytes.
func TestDigestMatchesSeparateDigests(t *testing.T) {
	shared := 0
	for seed := range uint64(300) {
		rng := rand.New(rand.NewPCG(seed, 7))
		d := NewDigest(sha256.New())
		var written []byte // what the writer stored
		tees := []hash.Hash{sha256.New(), sha256.New()}
		teeBytes := make([][]byte, len(tees)) // what each caller digest took
		for step := range 40 {
			p := make([]byte, rng.IntN(300))
			for i := range p {
				p[i] = byte(rng.Uint32())
			}
			switch op := rng.IntN(10); {
			case op < 5: // the usual: a write teed into caller digest 0
				d.Write(p, tees[0])
				written, teeBytes[0] = append(written, p...), append(teeBytes[0], p...)
			case op < 6:
				d.Write(p, nil)
				written = append(written, p...)
			case op < 7:
				d.Write(p, tees[1])
				written, teeBytes[1] = append(written, p...), append(teeBytes[1], p...)
			case op < 8: // the caller feeds its digest something else
				tees[0].Write(p)
				teeBytes[0] = append(teeBytes[0], p...)
			case op < 9:
				state, err := d.MarshalBinary()
				if err != nil {
					t.Fatal(err)
				}
				h := sha256.New()
				if err := h.(encoding.BinaryUnmarshaler).UnmarshalBinary(state); err != nil {
					t.Fatal(err)
				}
				if got, want := h.Sum(nil), sha256.Sum256(written); !bytes.Equal(got, want[:]) {
					t.Fatalf("seed %d step %d: checkpoint state sums to %x, want %x", seed, step, got, want)
				}
			default:
				if got, want := d.Sum(), sha256.Sum256(written); !bytes.Equal(got, want[:]) {
					t.Fatalf("seed %d step %d: Sum = %x, want %x", seed, step, got, want)
				}
			}
			if d.shared != nil {
				shared++
			}
			for i, h := range tees {
				if got, want := h.Sum(nil), sha256.Sum256(teeBytes[i]); !bytes.Equal(got, want[:]) {
					t.Fatalf("seed %d step %d: caller digest %d = %x, want %x", seed, step, i, got, want)
				}
			}
		}
		if got, want := d.Sum(), sha256.Sum256(written); !bytes.Equal(got, want[:]) {
			t.Fatalf("seed %d: final Sum = %x, want %x", seed, got, want)
		}
	}
	if shared < 500 {
		t.Errorf("the digest shared its caller's in %d steps of 12,000", shared)
	}
}

// TestDigestShares checks the point of Digest: a writer teeing into a
// caller digest in its own state hashes one state, not two.
func TestDigestShares(t *testing.T) {
	d := NewDigest(sha256.New())
	tee := sha256.New()
	d.Write([]byte("evidence"), tee)
	if d.shared != tee {
		t.Fatal("a tee in the digest's state was not shared")
	}
	tee.Write([]byte("x"))
	d.Write([]byte("more"), tee)
	if d.shared != nil {
		t.Fatal("a tee that took other bytes is still shared")
	}
	if got, want := d.Sum(), sha256.Sum256([]byte("evidencemore")); !bytes.Equal(got, want[:]) {
		t.Fatalf("Sum = %x, want %x", got, want)
	}
}
