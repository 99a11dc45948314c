package service

import (
	"bytes"
	"math/rand/v2"
	"testing"

	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/custodyhq/custody/internal/chunk"
	custodyv1 "github.com/custodyhq/custody/proto/custody/v1"
)

func chunkRequest(data []byte) *custodyv1.UploadRequest {
	sum := bytes.Repeat([]byte{7}, 32)
	return &custodyv1.UploadRequest{Msg: &custodyv1.UploadRequest_Chunk{Chunk: &custodyv1.Chunk{
		Sequence: 3, Offset: 12 << 20, RawLength: int64(len(data)) * 2, Sha256: sum, Data: data}}}
}

func mustMarshal(t testing.TB, m proto.Message) []byte {
	b, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestCodecMatchesProto decodes requests of every shape with the codec and
// with proto.Unmarshal and requires the same message; a large chunk's data
// lands in a recycled buffer.
func TestCodecMatchesProto(t *testing.T) {
	big := make([]byte, 3<<20)
	for i := range big {
		big[i] = byte(i * 7)
	}
	bigReq := mustMarshal(t, chunkRequest(big))
	// A chunk whose data field comes twice: proto keeps the last.
	twice := protowire.AppendTag(nil, chunkField, protowire.BytesType)
	inner := mustMarshal(t, &custodyv1.Chunk{Sequence: 1, Data: big[:100<<10]})
	inner = protowire.AppendTag(inner, dataField, protowire.BytesType)
	inner = protowire.AppendBytes(inner, big[1:200<<10])
	twice = protowire.AppendBytes(twice, inner)
	// A chunk with a field this build does not know, and a request with
	// the chunk field twice (proto merges them).
	unknown := append(mustMarshal(t, &custodyv1.Chunk{Sequence: 9, Data: big[:90<<10]}), protowire.AppendVarint(protowire.AppendTag(nil, 99, protowire.VarintType), 5)...)
	withUnknown := protowire.AppendBytes(protowire.AppendTag(nil, chunkField, protowire.BytesType), unknown)
	doubled := append(mustMarshal(t, chunkRequest(big[:80<<10])), mustMarshal(t, &custodyv1.UploadRequest{Msg: &custodyv1.UploadRequest_Chunk{Chunk: &custodyv1.Chunk{Offset: 5}}})...)

	for _, tc := range []struct {
		name   string
		b      []byte
		pooled bool
	}{
		{"big-chunk", bigReq, true},
		{"small-chunk", mustMarshal(t, chunkRequest(big[:100])), false},
		{"empty-data", mustMarshal(t, chunkRequest(nil)), false},
		{"trailer", mustMarshal(t, &custodyv1.UploadRequest{Msg: &custodyv1.UploadRequest_Trailer{Trailer: &custodyv1.UploadTrailer{TotalLength: 5}}}), false},
		{"data-twice", twice, false},
		{"unknown-field", withUnknown, true},
		{"chunk-field-twice", doubled, false},
		{"truncated", bigReq[:len(bigReq)-1], false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			want := &custodyv1.UploadRequest{}
			wantErr := proto.Unmarshal(tc.b, want)
			got := &custodyv1.UploadRequest{}
			err := codec{}.Unmarshal(mem.BufferSlice{mem.SliceBuffer(tc.b)}, got)
			if (err != nil) != (wantErr != nil) {
				t.Fatalf("codec error %v, proto.Unmarshal error %v", err, wantErr)
			}
			if err != nil {
				return
			}
			if !proto.Equal(got, want) {
				t.Fatalf("codec decoded %v\nproto.Unmarshal decoded %v", got, want)
			}
			if pooled := cap(got.GetChunk().GetData()) >= chunk.MaxFrameSize; pooled != tc.pooled {
				t.Errorf("data in a recycled buffer: %v, want %v", pooled, tc.pooled)
			}
			releaseChunk(got.GetChunk())
		})
	}
}

// TestCodecReusesBuffers: a released buffer serves a later chunk, so a
// long upload allocates no data buffer per chunk.
func TestCodecReusesBuffers(t *testing.T) {
	data := make([]byte, 1<<20)
	b := mustMarshal(t, chunkRequest(data))
	allocs := testing.AllocsPerRun(20, func() {
		req := &custodyv1.UploadRequest{}
		if err := (codec{}).Unmarshal(mem.BufferSlice{mem.SliceBuffer(b)}, req); err != nil {
			t.Fatal(err)
		}
		releaseChunk(req.GetChunk())
	})
	// The request, its chunk, the oneof wrapper, the small fields' copy,
	// the digest: a handful of small objects, never the 1 MiB.
	if allocs > 12 {
		t.Errorf("%.0f allocations per chunk", allocs)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for range 5 {
		n := 64<<10 + rng.IntN(chunk.MaxFrameSize-64<<10)
		req := &custodyv1.UploadRequest{}
		if err := (codec{}).Unmarshal(mem.BufferSlice{mem.SliceBuffer(mustMarshal(t, chunkRequest(make([]byte, n))))}, req); err != nil {
			t.Fatal(err)
		}
		if len(req.GetChunk().GetData()) != n {
			t.Fatalf("data of %d bytes decoded as %d", n, len(req.GetChunk().GetData()))
		}
		releaseChunk(req.GetChunk())
	}
}

// FuzzDecodeChunkRequest: whatever the bytes, a request the fast path
// accepts is exactly what proto.Unmarshal makes of them.
func FuzzDecodeChunkRequest(f *testing.F) {
	f.Add(mustMarshal(f, chunkRequest([]byte("frame"))))
	f.Add(mustMarshal(f, chunkRequest(nil)))
	stream := chunkRequest([]byte("frame"))
	stream.GetChunk().Sha256, stream.GetChunk().StreamSha256 = nil, bytes.Repeat([]byte{9}, 32)
	f.Add(mustMarshal(f, stream))
	f.Add(mustMarshal(f, &custodyv1.UploadRequest{Msg: &custodyv1.UploadRequest_Trailer{Trailer: &custodyv1.UploadTrailer{TotalLength: 5}}}))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, ok := decodeChunkRequest(b)
		if !ok {
			return
		}
		want := &custodyv1.UploadRequest{}
		if err := proto.Unmarshal(b, want); err != nil {
			t.Fatalf("fast path accepted what proto.Unmarshal refuses: %v", err)
		}
		got := &custodyv1.UploadRequest{Msg: &custodyv1.UploadRequest_Chunk{Chunk: c}}
		if !proto.Equal(got, want) {
			t.Fatalf("fast path decoded %v, proto.Unmarshal %v", got, want)
		}
	})
}
