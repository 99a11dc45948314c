package service

import (
	"sync"

	"google.golang.org/grpc/encoding"
	encproto "google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/protoadapt"

	"github.com/custodyhq/custody/internal/chunk"
	custodyv1 "github.com/custodyhq/custody/proto/custody/v1"
)

// codec is gRPC's proto codec, except that a chunk's data is decoded into
// a recycled buffer instead of a new one.
//
// protobuf-go copies a bytes field into a fresh slice on every Unmarshal:
// for uploads that is a new 4 MiB slice per chunk, garbage as soon as the
// chunk is stored. Sixteen agents uploading at once then keep the garbage
// collector running against the collector's soft memory limit, and the
// fresh pages fault in one by one: measured on BenchmarkS3Ingest/16x128MiB,
// that doubled the collector's CPU per GiB. Here an UploadRequest holding
// only a chunk has its small fields decoded by protobuf-go and its data
// copied into a buffer from chunkBuffers, which the upload handler gives
// back (releaseChunk) once the chunk is verified and written. Anything else
// — another message, a request with other fields, a repeated field — goes
// through proto.Unmarshal unchanged, so the result is always what
// proto.Unmarshal would give.
type codec struct{}

var _ encoding.CodecV2 = codec{}

// grpcProto is gRPC's own proto codec.
var grpcProto = encoding.GetCodecV2(encproto.Name)

func (codec) Name() string { return encproto.Name }

func (codec) Marshal(v any) (mem.BufferSlice, error) { return grpcProto.Marshal(v) }

func (codec) Unmarshal(data mem.BufferSlice, v any) error {
	req, ok := v.(*custodyv1.UploadRequest)
	if !ok || data.Len() < pooledChunkMin {
		return grpcProto.Unmarshal(data, v)
	}
	buf := data.MaterializeToBuffer(mem.DefaultBufferPool())
	defer buf.Free()
	b := buf.ReadOnlyData()
	if c, ok := decodeChunkRequest(b); ok {
		proto.Reset(req)
		req.Msg = &custodyv1.UploadRequest_Chunk{Chunk: c}
		return nil
	}
	return proto.Unmarshal(b, protoadapt.MessageV2Of(req))
}

// pooledChunkMin is the smallest request worth a recycled buffer; smaller
// ones (trailers, the open, the last bytes of a text artifact) are left
// to proto.Unmarshal.
const pooledChunkMin = 64 << 10

var (
	chunkField = (&custodyv1.UploadRequest{}).ProtoReflect().Descriptor().Fields().ByName("chunk").Number()
	dataField  = (&custodyv1.Chunk{}).ProtoReflect().Descriptor().Fields().ByName("data").Number()
)

// decodeChunkRequest decodes b, an UploadRequest, if it holds exactly one
// chunk field in which data occurs at most once; ok is false for anything
// else, including malformed bytes (proto.Unmarshal then decodes b, or
// says what is wrong with it).
func decodeChunkRequest(b []byte) (_ *custodyv1.Chunk, ok bool) {
	num, typ, n := protowire.ConsumeTag(b)
	if n < 0 || num != chunkField || typ != protowire.BytesType {
		return nil, false
	}
	msg, m := protowire.ConsumeBytes(b[n:])
	if m < 0 || n+m != len(b) {
		return nil, false
	}
	// The chunk's fields but data, as they came, and data's value.
	var small []byte
	var data []byte
	seen := false
	for rest := msg; len(rest) > 0; {
		num, typ, n := protowire.ConsumeTag(rest)
		if n < 0 {
			return nil, false
		}
		l := protowire.ConsumeFieldValue(num, typ, rest[n:])
		if l < 0 {
			return nil, false
		}
		if num == dataField && typ == protowire.BytesType {
			if seen {
				return nil, false
			}
			v, k := protowire.ConsumeBytes(rest[n:])
			if k < 0 {
				return nil, false
			}
			data, seen = v, true
		} else {
			small = append(small, rest[:n+l]...)
		}
		rest = rest[n+l:]
	}
	c := &custodyv1.Chunk{}
	if err := proto.Unmarshal(small, c); err != nil {
		return nil, false
	}
	if seen && len(data) > 0 {
		c.Data = getChunkBuffer(len(data))
		copy(c.Data, data)
	}
	return c, true
}

// chunkBuffers recycles chunk data buffers, each able to hold the largest
// frame an agent may send.
var chunkBuffers = sync.Pool{New: func() any { return new([]byte) }}

func getChunkBuffer(n int) []byte {
	bp := chunkBuffers.Get().(*[]byte)
	if cap(*bp) < n {
		*bp = make([]byte, n, max(n, chunk.MaxFrameSize))
	}
	return (*bp)[:n]
}

// releaseChunk gives c's data buffer back for the next chunk; c must not
// be used after.
func releaseChunk(c *custodyv1.Chunk) {
	if c == nil || cap(c.Data) < chunk.MaxFrameSize {
		return // not one of ours
	}
	b := c.Data[:0]
	c.Data = nil
	chunkBuffers.Put(&b)
}
