package manifest

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

// FuzzParse checks that Parse never panics on untrusted bytes and that
// whatever it accepts survives Marshal and Parse unchanged, so a parsed
// manifest can always be re-signed or re-written.
func FuzzParse(f *testing.F) {
	golden, err := os.ReadFile(filepath.Join("testdata", "manifest.golden.json"))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(golden)
	f.Add([]byte(`{"schema_version":1,"collection_id":"c","case_id":"x","state":"failed","artifacts":[]}`))
	f.Add([]byte(`{"schema_version":1,"State":"failed","state":"failed"}`))
	f.Add([]byte(`{"artifacts":[{"skipped_ranges":[{"start":1,"end":0}]}]}`))
	f.Add([]byte(`null`))
	f.Add([]byte(`[[[[[[[[`))
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := Parse(data)
		if err != nil {
			return
		}
		out, err := Marshal(m)
		if err != nil {
			t.Fatalf("Marshal of a parsed manifest: %v", err)
		}
		again, err := Parse(out)
		if err != nil {
			t.Fatalf("Parse(Marshal(Parse(data))): %v\n%s", err, out)
		}
		if diff := cmp.Diff(m, again, cmpopts.EquateEmpty()); diff != "" {
			t.Fatalf("manifest changed through Marshal and Parse (-first +second):\n%s", diff)
		}
	})
}

// FuzzVerifyArtifact checks that arbitrary stored bytes never panic the
// verifier and never pass as a fixed artifact — compressed or stored raw —
// unless they are exactly its bytes.
func FuzzVerifyArtifact(f *testing.F) {
	// Small objects keep each run, and the minimisation of anything the
	// fuzzer finds, fast; chunks of 1 KiB still give several frames.
	s := newStoredArtifact(f, rawStream(5, 3000), 1<<10)
	small := newStoredArtifact(f, []byte("pid,name\n1,init\n"), 1<<10)
	chunked := newStoredArtifact(f, rawStream(6, 1<<12), 1<<12)
	raw := s
	raw.a.Compression = ""
	raw.a.StoredSize, raw.a.StoredSHA256 = raw.a.RawSize, raw.a.AgentSHA256

	f.Add(s.stored)
	f.Add(small.stored)
	f.Add(chunked.stored)
	f.Add(s.frames[1])
	f.Add(append(bytes.Clone(small.stored), small.stored...))
	f.Add(s.stored[:len(s.stored)/2])
	f.Add(s.raw)
	f.Add([]byte{})
	f.Add([]byte{0x28, 0xb5, 0x2f, 0xfd})                               // bare zstd magic
	f.Add([]byte{0x50, 0x2a, 0x4d, 0x18, 4, 0, 0, 0, 1, 2, 3, 4})       // skippable frame
	f.Add([]byte{0x28, 0xb5, 0x2f, 0xfd, 0x00, 0xff, 0xff, 0xff, 0xff}) // huge window
	f.Fuzz(func(t *testing.T, stored []byte) {
		for _, want := range []storedArtifact{s, small, raw} {
			stream := want.stored
			if want.a.Compression == "" {
				stream = want.raw
			}
			err := VerifyArtifact(t.Context(), want.a, bytes.NewReader(stored))
			if err == nil && !bytes.Equal(stored, stream) {
				t.Fatalf("%d bytes verified as %q (compression %q) but are not its stored bytes", len(stored), want.a.Name, want.a.Compression)
			}
			if err != nil && bytes.Equal(stored, stream) {
				t.Fatalf("the exact stored bytes of %q failed: %v", want.a.Name, err)
			}
		}
	})
}
