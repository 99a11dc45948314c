// Package upload streams one artifact to the collector. Bytes written to a
// Stream are cut into chunks of at most 4 MiB, each compressed as one zstd
// frame and hashed; at most Window chunks are in flight unacknowledged, so
// a slow collector slows the capture instead of growing the agent's memory.
// Close sends the trailer and waits for the collector to confirm that its
// own hashes agree.
package upload

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/custodyhq/custody/internal/chunk"
	custodyv1 "github.com/custodyhq/custody/proto/custody/v1"
	"google.golang.org/grpc"
)

// Options describe one upload.
type Options struct {
	TaskID       string
	Artifact     string
	Extension    string
	ExpectedSize int64 // -1 when unknown
	// Window is how many chunks may await acknowledgement (default 3):
	// enough to keep the link busy, few enough to bound memory.
	Window int
	// NoCompress sends raw bytes (for sources that are already compressed).
	NoCompress bool
	// Bulk compresses without entropy coding of literals: for large
	// binary sources, where it halves the agent's compression CPU
	// (chunk.CodecZstdBulk).
	Bulk bool
	// CompressWorkers is how many chunks are compressed at once (default 1).
	CompressWorkers int
	// Restart discards any partial upload of this artifact at the collector.
	Restart bool
	// Progress, if set, is called with the committed raw offset after each ack.
	Progress func(committed int64)
}

// Trailer is what the agent knows about the capture beyond its bytes.
type Trailer struct {
	Source   string
	Warnings []string
	Skipped  []*custodyv1.SkippedRange
	Tool     *custodyv1.ToolInfo
	Details  map[string]string
	// Err, when set, reports that the capture failed part way; what was
	// sent is still committed as (incomplete) evidence.
	Err error
}

// Result is the collector's confirmation.
type Result struct {
	Key          string
	RawSize      int64
	RawSHA256    []byte
	StoredSize   int64
	StoredSHA256 []byte
}

var ErrRejected = errors.New("upload: collector rejected the upload")

// Stream is an io.Writer into one upload.
type Stream struct {
	stream custodyv1.AgentService_UploadClient
	cancel context.CancelFunc
	w      *chunk.Writer
	slots  chan struct{}
	opts   Options

	mu        sync.Mutex
	recvErr   error
	committed *custodyv1.UploadCommitted
	recvDone  chan struct{}
	sent      int

	resumeAt  int64
	resumeSum []byte
}

// ResumeOffset is the raw offset the collector already holds: the caller
// must write the stream from there on (0 for a fresh upload).
func (s *Stream) ResumeOffset() int64 { return s.resumeAt }

// ResumeSHA256 is the collector's digest of the raw bytes before
// ResumeOffset, for sources that regenerate the prefix to check it.
func (s *Stream) ResumeSHA256() []byte { return s.resumeSum }

// Start opens an upload and waits for the collector to accept it.
func Start(ctx context.Context, client custodyv1.AgentServiceClient, opts Options, callOpts ...grpc.CallOption) (*Stream, error) {
	if opts.Window <= 0 {
		opts.Window = 3
	}
	ctx, cancel := context.WithCancel(ctx)
	st, err := client.Upload(ctx, callOpts...)
	if err != nil {
		cancel()
		return nil, fmt.Errorf("upload %s: %w", opts.Artifact, err)
	}
	comp := custodyv1.Compression_COMPRESSION_ZSTD
	if opts.NoCompress {
		comp = custodyv1.Compression_COMPRESSION_NONE
	}
	if err := st.Send(&custodyv1.UploadRequest{Msg: &custodyv1.UploadRequest_Open{Open: &custodyv1.UploadOpen{
		TaskId: opts.TaskID, Artifact: opts.Artifact, Extension: opts.Extension, ExpectedSize: opts.ExpectedSize, Compression: comp,
		Restart: opts.Restart,
	}}}); err != nil {
		cancel()
		return nil, fmt.Errorf("upload %s: open: %w", opts.Artifact, recvCause(st, err))
	}
	first, err := st.Recv()
	if err != nil {
		cancel()
		return nil, fmt.Errorf("upload %s: %w: %w", opts.Artifact, ErrRejected, err)
	}
	acc := first.GetAccepted()
	if acc == nil {
		cancel()
		return nil, fmt.Errorf("upload %s: %w: expected acceptance, got %T", opts.Artifact, ErrRejected, first.Msg)
	}
	// On a resume the encoder continues the collector's stream: sequence,
	// offset and the hash of the prefix the collector already holds.
	codec := chunk.CodecZstd
	switch {
	case opts.NoCompress:
		codec = chunk.CodecNone
	case opts.Bulk:
		codec = chunk.CodecZstdBulk
	}
	enc, err := chunk.NewEncoderCodec(codec, chunk.Position{
		Seq: acc.GetNextSequence(), Offset: acc.GetResumeOffset(), HashState: acc.GetResumeSha256State(),
	}, max(opts.CompressWorkers, 1))
	if err != nil {
		cancel()
		return nil, err
	}
	if acc.GetAcceptsStreamSha256() {
		// One hash of each raw byte instead of two; an older collector
		// gets each chunk's own digest.
		enc.SetDigest(chunk.DigestStream)
	}
	s := &Stream{stream: st, cancel: cancel, slots: make(chan struct{}, opts.Window), opts: opts, recvDone: make(chan struct{}),
		resumeAt: acc.GetResumeOffset(), resumeSum: acc.GetResumeSha256()}
	size := chunk.MaxRawSize
	if !opts.Bulk {
		// Light artifacts (snapshots, a few megabytes of text) upload
		// side by side: 1 MiB chunks keep their buffers small, and for so
		// little data the per-message cost does not show.
		size = lightChunkSize
	}
	if m := acc.GetMaxChunkSize(); m > 0 && m < int64(size) {
		size = int(m)
	}
	// One compression goroutine by default: on a busy host the agent's
	// footprint matters more than its speed (measured here: two workers
	// raised peak RSS from ~45 to ~80 MiB and, sharing two cores with the
	// collector, did not speed the transfer up).
	s.w = chunk.NewParallelWriter(enc, size, max(opts.CompressWorkers, 1), s.send)
	go s.receive()
	return s, nil
}

// lightChunkSize is the raw chunk size of a non-bulk artifact's upload.
const lightChunkSize = 1 << 20

// recvCause: a failed Send only says EOF; the status is on Recv.
func recvCause(st custodyv1.AgentService_UploadClient, sendErr error) error {
	if errors.Is(sendErr, io.EOF) {
		if _, err := st.Recv(); err != nil {
			return err
		}
	}
	return sendErr
}

func (s *Stream) receive() {
	defer close(s.recvDone)
	for {
		msg, err := s.stream.Recv()
		if err != nil {
			s.fail(err)
			return
		}
		switch m := msg.Msg.(type) {
		case *custodyv1.UploadResponse_Ack:
			select {
			case <-s.slots:
			default:
				s.fail(fmt.Errorf("%w: acknowledgement of chunk %d that was never sent", ErrRejected, m.Ack.GetSequence()))
				return
			}
			if s.opts.Progress != nil {
				s.opts.Progress(m.Ack.GetCommittedOffset())
			}
		case *custodyv1.UploadResponse_Committed:
			s.mu.Lock()
			s.committed = m.Committed
			s.mu.Unlock()
			return
		default:
			s.fail(fmt.Errorf("%w: unexpected %T", ErrRejected, m))
			return
		}
	}
}

func (s *Stream) fail(err error) {
	s.mu.Lock()
	if s.recvErr == nil {
		s.recvErr = err
	}
	s.mu.Unlock()
}

func (s *Stream) err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.recvErr
}

// send waits for a window slot, then sends one chunk.
func (s *Stream) send(c chunk.Chunk) error {
	select {
	case s.slots <- struct{}{}:
	case <-s.recvDone:
		if err := s.err(); err != nil {
			return fmt.Errorf("upload %s: %w", s.opts.Artifact, err)
		}
		return fmt.Errorf("upload %s: collector closed the stream", s.opts.Artifact)
	}
	err := s.stream.Send(&custodyv1.UploadRequest{Msg: &custodyv1.UploadRequest_Chunk{Chunk: &custodyv1.Chunk{
		Sequence: c.Seq, Offset: c.Offset, RawLength: c.RawLen, Sha256: c.SHA256, StreamSha256: c.StreamSHA256, Data: c.Data,
	}}})
	if err != nil {
		<-s.recvDone
		if rerr := s.err(); rerr != nil {
			err = rerr
		}
		return fmt.Errorf("upload %s: chunk %d: %w", s.opts.Artifact, c.Seq, err)
	}
	s.sent++
	return nil
}

// Write implements io.Writer.
func (s *Stream) Write(p []byte) (int, error) { return s.w.Write(p) }

// ReadFrom reads r straight into the chunk being filled (chunk.Writer's
// ReadFrom): io.Copy into a Stream makes no copy of its own.
func (s *Stream) ReadFrom(r io.Reader) (int64, error) { return s.w.ReadFrom(r) }

// Close flushes, sends the trailer and waits for the collector's commit.
func (s *Stream) Close(t Trailer) (Result, error) {
	defer s.cancel()
	if err := s.w.Flush(); err != nil {
		return Result{}, err
	}
	tr := s.w.Trailer()
	msg := &custodyv1.UploadTrailer{
		TotalLength: tr.Total, Sha256: tr.SHA256, ChunkCount: tr.Count,
		Source: t.Source, Warnings: t.Warnings, SkippedRanges: t.Skipped, Tool: t.Tool, Details: t.Details,
	}
	if t.Err != nil {
		msg.Error = t.Err.Error()
	}
	if err := s.stream.Send(&custodyv1.UploadRequest{Msg: &custodyv1.UploadRequest_Trailer{Trailer: msg}}); err != nil {
		<-s.recvDone
		if rerr := s.err(); rerr != nil {
			err = rerr
		}
		return Result{}, fmt.Errorf("upload %s: trailer: %w", s.opts.Artifact, err)
	}
	s.stream.CloseSend()
	<-s.recvDone
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.committed == nil {
		err := s.recvErr
		if err == nil {
			err = errors.New("stream ended without a commit")
		}
		return Result{}, fmt.Errorf("upload %s: %w", s.opts.Artifact, err)
	}
	c := s.committed
	if !bytes.Equal(c.GetRawSha256(), tr.SHA256) {
		return Result{}, fmt.Errorf("upload %s: collector committed SHA-256 %x, agent computed %x", s.opts.Artifact, c.GetRawSha256(), tr.SHA256)
	}
	return Result{Key: c.GetKey(), RawSize: tr.Total, RawSHA256: tr.SHA256, StoredSize: c.GetStoredSize(), StoredSHA256: c.GetStoredSha256()}, nil
}

// Abort ends the upload without a trailer; the collector keeps what it
// verified for a resume, or discards it.
func (s *Stream) Abort() {
	s.cancel()
	<-s.recvDone
	s.w.Flush() // releases the compression workers; the error is moot
}
