package manifest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/klauspost/compress/zstd"
)

const chunkSize = 1 << 20 // the agent's is 4 MiB; smaller keeps the tests quick

type storedArtifact struct {
	raw    []byte
	frames [][]byte // one independent zstd frame per chunk, as the agent sends them
	stored []byte   // the frames concatenated, as the collector stores them
	a      Artifact
}

func hexSHA256(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// rawStream is half text, half noise, so frames are neither trivially
// small nor incompressible.
func rawStream(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, seed))
	var b bytes.Buffer
	for b.Len() < n {
		if r.IntN(2) == 0 {
			fmt.Fprintf(&b, `{"pid":%d,"name":"proc-%d","cmdline":"/usr/bin/x --flag"}`+"\n", r.IntN(1<<16), r.IntN(100))
		} else {
			for range 64 {
				b.WriteByte(byte(r.Uint32()))
			}
		}
	}
	return b.Bytes()[:n]
}

// newStoredArtifact cuts raw into chunks of chunk bytes, compressing each
// as one frame.
func newStoredArtifact(t testing.TB, raw []byte, chunk int) storedArtifact {
	t.Helper()
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderConcurrency(1))
	if err != nil {
		t.Fatal(err)
	}
	defer enc.Close()
	s := storedArtifact{raw: raw}
	for off := 0; off < len(raw); off += chunk {
		frame := enc.EncodeAll(raw[off:min(off+chunk, len(raw))], nil)
		s.frames = append(s.frames, frame)
		s.stored = append(s.stored, frame...)
	}
	s.a = Artifact{
		Name:            "processes",
		Source:          "procfs",
		State:           StateComplete,
		RawSize:         int64(len(raw)),
		AgentSHA256:     hexSHA256(raw),
		CollectorSHA256: hexSHA256(raw),
		Key:             "processes.jsonl.zst",
		StoredSize:      int64(len(s.stored)),
		StoredSHA256:    hexSHA256(s.stored),
		Compression:     CompressionZstd,
		Chunks:          len(s.frames),
	}
	return s
}

func TestVerifyArtifact(t *testing.T) {
	good := newStoredArtifact(t, rawStream(1, 3*chunkSize+12345), chunkSize)
	if len(good.frames) != 4 {
		t.Fatalf("test bug: %d frames, want 4", len(good.frames))
	}
	empty := newStoredArtifact(t, nil, chunkSize)
	plain := good
	plain.a.Compression = ""
	plain.a.StoredSize, plain.a.StoredSHA256 = plain.a.RawSize, plain.a.AgentSHA256

	flipped := bytes.Clone(good.stored)
	flipped[len(good.frames[0])+len(good.frames[1])/2] ^= 0x40
	flippedRaw := bytes.Clone(good.raw)
	flippedRaw[12345] ^= 1
	withoutFrame := append(append(append([]byte{}, good.frames[0]...), good.frames[2]...), good.frames[3]...)
	swapped := append(append(append(append([]byte{}, good.frames[1]...), good.frames[0]...), good.frames[2]...), good.frames[3]...)
	// A frame whose stored size and hash are recorded correctly must still
	// fail when the raw stream it decodes to is not the one recorded.
	rewritten := func(a Artifact, stored []byte) Artifact {
		a.StoredSize, a.StoredSHA256 = int64(len(stored)), hexSHA256(stored)
		return a
	}

	edit := func(a Artifact, f func(a *Artifact)) Artifact {
		f(&a)
		return a
	}
	for _, tc := range []struct {
		name   string
		a      Artifact
		stored []byte
		fields []string // every field the mismatch must name; nil means it passes
	}{
		{"ok", good.a, good.stored, nil},
		{"ok-without-collector-hash", edit(good.a, func(a *Artifact) { a.CollectorSHA256 = "" }), good.stored, nil},
		{"ok-empty", empty.a, empty.stored, nil},
		{"ok-uncompressed", plain.a, plain.raw, nil},
		{"stored-byte-flipped", good.a, flipped, []string{"stored_sha256"}},
		{"frame-missing", good.a, withoutFrame, []string{"stored_size", "stored_sha256", "raw_size", "agent_sha256", "collector_sha256"}},
		{"frame-missing-stored-rerecorded", rewritten(good.a, withoutFrame), withoutFrame, []string{"raw_size", "agent_sha256", "collector_sha256"}},
		{"frames-swapped-stored-rerecorded", rewritten(good.a, swapped), swapped, []string{"agent_sha256", "collector_sha256"}},
		{"truncated", good.a, good.stored[:len(good.stored)-1], []string{"stored_size", "stored_sha256", "zstd"}},
		{"trailing-garbage", good.a, append(bytes.Clone(good.stored), 0, 1, 2, 3), []string{"stored_size", "stored_sha256", "zstd"}},
		{"raw-hash-wrong", edit(good.a, func(a *Artifact) { a.AgentSHA256 = hexSHA256([]byte("other")) }), good.stored, []string{"agent_sha256"}},
		{"collector-hash-wrong", edit(good.a, func(a *Artifact) { a.CollectorSHA256 = hexSHA256([]byte("other")) }), good.stored, []string{"collector_sha256"}},
		{"raw-size-wrong", edit(good.a, func(a *Artifact) { a.RawSize++ }), good.stored, []string{"raw_size"}},
		{"stored-size-wrong", edit(good.a, func(a *Artifact) { a.StoredSize-- }), good.stored, []string{"stored_size"}},
		{"stored-hash-wrong", edit(good.a, func(a *Artifact) { a.StoredSHA256 = hexSHA256(nil) }), good.stored, []string{"stored_sha256"}},
		{"agent-hash-unrecorded", edit(good.a, func(a *Artifact) { a.AgentSHA256 = "" }), good.stored, []string{"agent_sha256"}},
		{"raw-stored-as-zstd", good.a, good.raw, []string{"stored_size", "zstd"}},
		{"zstd-stored-as-raw", plain.a, good.stored, []string{"stored_size", "stored_sha256", "raw_size", "agent_sha256"}},
		{"uncompressed-byte-flipped", plain.a, flippedRaw, []string{"stored_sha256", "agent_sha256", "collector_sha256"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := VerifyArtifact(t.Context(), tc.a, bytes.NewReader(tc.stored))
			if tc.fields == nil {
				if err != nil {
					t.Fatalf("VerifyArtifact: %v", err)
				}
				return
			}
			if !errors.Is(err, ErrMismatch) {
				t.Fatalf("VerifyArtifact = %v, want ErrMismatch", err)
			}
			t.Log(err)
			for _, f := range append([]string{`"` + tc.a.Name + `"`}, tc.fields...) {
				if !strings.Contains(err.Error(), f) {
					t.Errorf("error %q does not name %s", err, f)
				}
			}
		})
	}
}

// TestVerifyArtifactStreams feeds the object a few bytes at a time, as a
// slow network read would, to show nothing depends on read sizes.
func TestVerifyArtifactStreams(t *testing.T) {
	s := newStoredArtifact(t, rawStream(2, 2*chunkSize+1), chunkSize)
	if err := VerifyArtifact(t.Context(), s.a, iotest.OneByteReader(bytes.NewReader(s.stored))); err != nil {
		t.Errorf("one byte at a time: %v", err)
	}
	if err := VerifyArtifact(t.Context(), s.a, iotest.HalfReader(bytes.NewReader(s.stored))); err != nil {
		t.Errorf("half reads: %v", err)
	}
}

func TestVerifyArtifactReadErrors(t *testing.T) {
	s := newStoredArtifact(t, rawStream(3, 2*chunkSize), chunkSize)
	boom := errors.New("connection reset")
	for _, tc := range []struct {
		name   string
		a      Artifact
		stored io.Reader
		ctx    func() context.Context
		want   error
	}{
		{"read-error-zstd", s.a, io.MultiReader(bytes.NewReader(s.stored[:1000]), iotest.ErrReader(boom)), context.Background, boom},
		{"read-error-raw", withCompression(s.a, ""), io.MultiReader(bytes.NewReader(s.raw[:1000]), iotest.ErrReader(boom)), context.Background, boom},
		{"canceled", s.a, bytes.NewReader(s.stored), func() context.Context {
			ctx, cancel := context.WithCancel(context.Background())
			cancel()
			return ctx
		}, context.Canceled},
		{"unknown-compression", withCompression(s.a, "gzip"), bytes.NewReader(s.stored), context.Background, ErrMalformed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := VerifyArtifact(tc.ctx(), tc.a, tc.stored)
			if !errors.Is(err, tc.want) {
				t.Fatalf("VerifyArtifact = %v, want %v", err, tc.want)
			}
			if tc.want != ErrMismatch && errors.Is(err, ErrMismatch) {
				t.Errorf("VerifyArtifact = %v: a failed read is not a mismatch", err)
			}
		})
	}
}

func withCompression(a Artifact, compression string) Artifact {
	a.Compression = compression
	return a
}

// TestVerifyArtifactWindowBound checks that a frame demanding a window
// beyond the bound is refused rather than allocated for.
func TestVerifyArtifactWindowBound(t *testing.T) {
	raw := rawStream(4, 9<<20)
	enc, err := zstd.NewWriter(nil, zstd.WithWindowSize(16<<20), zstd.WithSingleSegment(false), zstd.WithEncoderConcurrency(1))
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	enc.Reset(&buf)
	if _, err := enc.Write(raw); err != nil {
		t.Fatal(err)
	}
	if err := enc.Close(); err != nil {
		t.Fatal(err)
	}
	a := Artifact{Name: "big", RawSize: int64(len(raw)), AgentSHA256: hexSHA256(raw),
		StoredSize: int64(buf.Len()), StoredSHA256: hexSHA256(buf.Bytes()), Compression: CompressionZstd}
	if err := VerifyArtifact(t.Context(), a, &buf); !errors.Is(err, ErrMismatch) || !strings.Contains(err.Error(), "window") {
		t.Errorf("VerifyArtifact = %v, want ErrMismatch about the window size", err)
	}
}
