package service

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"regexp"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/custodyhq/custody/collector/ingest"
	"github.com/custodyhq/custody/collector/state"
	"github.com/custodyhq/custody/collector/store"
	"github.com/custodyhq/custody/internal/chunk"
	custodyv1 "github.com/custodyhq/custody/proto/custody/v1"
)

var extRe = regexp.MustCompile(`^[a-z0-9]{1,10}$`)

// Checkpoint cadence: often enough that a crash loses little, rarely
// enough that the store's sync and the database write, both in the
// background (store.ResumableWriter, saver), never hold up the upload.
const (
	checkpointBytes = 64 << 20
	checkpointEvery = 2 * time.Second
)

// chunkMemory is what the chunks of all uploads in progress may take at
// once. A chunk is held twice while it is processed (gRPC's receive buffer
// and the decoded message), so the collector's memory grows with uploads ×
// chunk size. Uploads accepted while few are running get the protocol's
// 4 MiB chunks, the fastest; later ones get smaller chunks.
const chunkMemory = 16 << 20

// chunkSizeFor returns the largest raw chunk size, a power of two from
// 1 MiB to chunk.MaxRawSize, that keeps active uploads within chunkMemory.
func chunkSizeFor(active int) int64 {
	size := int64(chunk.MaxRawSize)
	for size > 1<<20 && int64(max(active, 1))*size > chunkMemory {
		size /= 2
	}
	return size
}

// Upload receives one artifact: open, verified chunks, trailer. Nothing
// becomes evidence until the collector's own hashes agree with the trailer.
//
// An upload that is interrupted (the agent disconnects, the network is cut,
// the collector stops) is not failed: its last checkpoint is kept and the
// agent's next open of the same artifact resumes from it. An upload that is
// refused (bad hash, offset, sequence, trailer, store failure) fails the
// artifact and discards the partial object.
func (s *Server) Upload(stream custodyv1.AgentService_UploadServer) (err error) {
	ctx := stream.Context()
	c, _ := callerFrom(ctx)
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	open := first.GetOpen()
	if open == nil {
		return toStatus(fmt.Errorf("%w: upload: first message must be an open", ErrInvalid))
	}
	if _, err := s.activeAgent(ctx, c); err != nil {
		return toStatus(fmt.Errorf("upload: %w", err))
	}
	col, err := s.db.GetCollection(ctx, open.GetTaskId())
	if errors.Is(err, state.ErrNotFound) {
		return toStatus(fmt.Errorf("%w: upload: no task %q for agent %s", ErrForbidden, open.GetTaskId(), c.id.Name))
	} else if err != nil {
		return toStatus(err)
	}
	if col.AgentID != c.id.Name {
		s.log.Warn("upload for another agent's task refused", "agent", c.id.Name, "task", col.ID, "owner", col.AgentID)
		return toStatus(fmt.Errorf("%w: upload: task %s is not addressed to agent %s", ErrForbidden, col.ID, c.id.Name))
	}
	art := col.Artifact(open.GetArtifact())
	switch {
	case art == nil:
		return toStatus(fmt.Errorf("%w: upload: task %s did not ask for artifact %q", ErrInvalid, col.ID, open.GetArtifact()))
	case art.State == state.Complete:
		return toStatus(fmt.Errorf("%w: upload: artifact %s of %s is already stored", ErrAlreadyDone, art.Name, col.ID))
	case col.State != state.Running:
		return toStatus(fmt.Errorf("%w: upload: collection %s is %s", ErrConflict, col.ID, col.State))
	case state.Final(art.State):
		return toStatus(fmt.Errorf("%w: upload: artifact %s of %s is already %s", ErrConflict, art.Name, col.ID, art.State))
	case !extRe.MatchString(open.GetExtension()):
		return toStatus(fmt.Errorf("%w: upload: bad extension %q", ErrInvalid, open.GetExtension()))
	}
	var compressed bool
	switch open.GetCompression() {
	case custodyv1.Compression_COMPRESSION_ZSTD:
		compressed = true
	case custodyv1.Compression_COMPRESSION_NONE:
	default:
		return toStatus(fmt.Errorf("%w: upload: compression %s", ErrInvalid, open.GetCompression()))
	}
	file := art.Name + "." + open.GetExtension()
	if compressed {
		file += ".zst"
	}
	key, err := store.Key(col.CaseID, col.AgentID, col.ID, file)
	if err != nil {
		return toStatus(err)
	}
	log := s.log.With("agent", c.id.Name, "collection", col.ID, "artifact", art.Name)

	// One stream per artifact at a time: a reconnecting agent's new stream
	// waits until the old one has finished writing its checkpoint, so two
	// handlers never write, truncate or checkpoint the same partial object.
	lock, release, err := s.lockArtifact(ctx, col.ID+"/"+art.Name)
	if err != nil {
		return toStatus(err)
	}
	defer release()

	// Bound the uploads in progress: beyond the limit, an upload waits here
	// (its agent waits for the acceptance) instead of failing.
	select {
	case s.uploads <- struct{}{}:
		defer func() { <-s.uploads }()
	case <-ctx.Done():
		return toStatus(ctx.Err())
	}
	maxChunk := chunkSizeFor(len(s.uploads))

	up, sess, err := s.openUpload(ctx, col, art.Name, key, open, compressed, log)
	if err != nil {
		return toStatus(err)
	}
	interrupted := false
	var sv saver
	defer func() {
		bg, cancel := background()
		defer cancel()
		// A record still being written is older than anything written
		// below, and must not land after the upload's record is deleted.
		sv.wait()
		// Whatever failed once the stream's context ended (a checkpoint, a
		// progress write) failed because the connection went: resumable.
		if err != nil && !refused(err) && ctx.Err() != nil {
			interrupted = true
		}
		switch {
		case err == nil:
		case interrupted && up.Resumable():
			// Keep the object and a checkpoint of all the store can make
			// durable; the agent resumes from it.
			s.checkpoint(bg, up, &sess, &sv, log, true)
			up.Suspend(bg)
			log.Info("upload interrupted; resumable", "committed", up.Committed(), "resume_at", sess.Offset, "err", err)
		default:
			up.Abort(bg)
			s.db.DeleteUpload(bg, col.ID, art.Name)
			if interrupted {
				// Nothing durable to resume from: start over next time.
				log.Info("upload interrupted; will restart", "err", err)
			} else {
				s.failArtifact(bg, col.ID, art.Name, "upload: "+err.Error())
				log.Warn("upload failed", "err", err)
			}
		}
		if err != nil {
			err = toStatus(err)
		}
	}()
	if err := s.setArtifact(ctx, col.ID, art.Name, func(a *state.Artifact) {
		a.State, a.Key = state.Running, key
		if open.GetExpectedSize() > 0 {
			a.BytesTotal = open.GetExpectedSize()
		}
	}); err != nil {
		return err
	}
	pos := up.Position()
	acc := &custodyv1.UploadAccepted{UploadId: sess.ID, MaxChunkSize: maxChunk, ResumeOffset: pos.Offset, NextSequence: pos.Seq,
		AcceptsStreamSha256: true}
	if pos.Offset > 0 {
		acc.ResumeSha256State, acc.ResumeSha256 = pos.HashState, up.RawSum()
	}
	if err := stream.Send(&custodyv1.UploadResponse{Msg: &custodyv1.UploadResponse_Accepted{Accepted: acc}}); err != nil {
		interrupted = true
		return err
	}

	var lastProgress, lastCheckpoint time.Time = time.Time{}, s.now()
	var sinceCheckpoint int64
	// Receive on a goroutine so that a newer stream for this artifact can
	// take over even while this one waits for a message that never comes.
	// It receives only when asked, and what the agent sends meanwhile waits
	// in gRPC's flow-control window (ServerOptions), bounded.
	//
	// While it is the only upload running, an upload asks for the next
	// message as soon as it has a chunk, so that the next one leaves the
	// window while this one is checked: the window holds about one
	// compressed chunk, and without this the agent waited on it at every
	// chunk. That holds a second chunk, so it stops as soon as another
	// upload starts: with many running the collector is busy anyway, and
	// its memory is what bounds it. (Measured on 16 agents uploading 128
	// MiB each to S3: a 4 MiB window, or reading ahead in the first four
	// uploads, pushed the collector into its memory limit, at 1.5-2.3x the
	// CPU per GiB.)
	type received struct {
		msg *custodyv1.UploadRequest
		err error
	}
	recv := make(chan received)
	want := make(chan struct{}, 1)
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		for {
			select {
			case <-want:
			case <-stop:
				return
			}
			m, err := stream.Recv()
			select {
			case recv <- received{m, err}:
			case <-stop:
				return
			}
			if err != nil {
				return
			}
		}
	}()
	asked := false
	for {
		var msg *custodyv1.UploadRequest
		var err error
		if !asked {
			want <- struct{}{}
		}
		asked = false
		select {
		case r := <-recv:
			msg, err = r.msg, r.err
		case <-lock.supersede:
			interrupted = true
			return fmt.Errorf("%w: superseded by a newer stream for this artifact", ErrConflict)
		}
		if err == io.EOF {
			// A half-close without a trailer is not a network failure: an
			// agent that gives up aborts the stream instead.
			return fmt.Errorf("%w: stream ended at offset %d without a trailer", ErrInvalid, up.Committed())
		}
		if err != nil {
			// A message the transport refused (over the size limit) is the
			// agent's fault; a broken connection is nobody's.
			interrupted = isInterruption(ctx, err)
			return err
		}
		switch m := msg.Msg.(type) {
		case *custodyv1.UploadRequest_Chunk:
			ch := m.Chunk
			// Alone, an upload reads the next message ahead (above) and
			// writes its records in the background (saver); with others
			// running it does neither.
			alone := len(s.uploads) == 1
			if alone {
				want <- struct{}{}
				asked = true
			}
			err := up.Write(chunk.Chunk{Seq: ch.GetSequence(), Offset: ch.GetOffset(), RawLen: ch.GetRawLength(),
				SHA256: ch.GetSha256(), StreamSHA256: ch.GetStreamSha256(), Data: ch.GetData()})
			releaseChunk(ch) // written or refused: its data is not needed again
			if err != nil {
				return err
			}
			sinceCheckpoint += ch.GetRawLength()
			if err := stream.Send(&custodyv1.UploadResponse{Msg: &custodyv1.UploadResponse_Ack{Ack: &custodyv1.ChunkAck{
				Sequence: ch.GetSequence(), CommittedOffset: up.Committed(),
			}}}); err != nil {
				interrupted = true
				return err
			}
			sv.inline = !alone
			now := s.now()
			if up.Resumable() && (sinceCheckpoint >= checkpointBytes || now.Sub(lastCheckpoint) >= checkpointEvery) {
				if err := s.checkpoint(ctx, up, &sess, &sv, log, false); err != nil {
					return err
				}
				sinceCheckpoint, lastCheckpoint = 0, now
			}
			// Progress is for watchers: when the database is still busy
			// with this upload's last write, it waits for the next chunk.
			if now.Sub(lastProgress) > 250*time.Millisecond && !sv.busy() {
				lastProgress = now
				done := up.Committed()
				if err := sv.start(func() error {
					s.setArtifact(ctx, col.ID, art.Name, func(a *state.Artifact) { a.BytesDone = done })
					return nil
				}); err != nil {
					return err
				}
			}
		case *custodyv1.UploadRequest_Trailer:
			return s.finishUpload(ctx, stream, col, art.Name, up, m.Trailer, compressed, sess, &sv, log)
		default:
			return fmt.Errorf("%w: unexpected %T after open", ErrInvalid, m)
		}
	}
}

// openUpload begins a new upload or resumes the tracked one.
func (s *Server) openUpload(ctx context.Context, col state.Collection, name, key string, open *custodyv1.UploadOpen,
	compressed bool, log *slog.Logger) (*ingest.Upload, state.UploadSession, error) {
	sess, err := s.db.GetUpload(ctx, col.ID, name)
	switch {
	case err == nil && (open.GetRestart() || sess.Key != key || sess.Compressed != compressed || len(sess.StoreState) == 0):
		s.discardUpload(ctx, sess, log)
	case err == nil:
		if rs, ok := s.store.(store.Resumable); ok {
			up, rerr := ingest.Resume(ctx, rs, key, ingest.Checkpoint{
				StoreState: sess.StoreState, Stored: sess.Stored, StoredHash: sess.StoredHash,
				Position: chunk.Position{Seq: sess.Seq, Offset: sess.Offset, HashState: sess.RawHash},
			}, compressed)
			if rerr == nil {
				sess.Resumes++
				s.db.PutUpload(ctx, sess)
				log.Info("upload resumed", "upload", sess.ID, "offset", sess.Offset, "resumes", sess.Resumes)
				return up, sess, nil
			}
			log.Warn("cannot resume upload; starting over", "upload", sess.ID, "err", rerr)
		}
		s.discardUpload(ctx, sess, log)
	case !errors.Is(err, state.ErrNotFound):
		return nil, sess, err
	}
	up, err := ingest.Begin(ctx, s.store, key, open.GetExpectedSize(), compressed)
	if err != nil {
		return nil, sess, err
	}
	sess = state.UploadSession{ID: newID("u", s.now()), CollectionID: col.ID, Artifact: name, Key: key, Compressed: compressed}
	if err := s.db.PutUpload(ctx, sess); err != nil {
		up.Abort(ctx)
		return nil, sess, err
	}
	return up, sess, nil
}

// discardUpload abandons a tracked partial upload.
func (s *Server) discardUpload(ctx context.Context, sess state.UploadSession, log *slog.Logger) {
	if rs, ok := s.store.(store.Resumable); ok && len(sess.StoreState) > 0 {
		if w, _, err := rs.Resume(ctx, sess.Key, sess.StoreState); err == nil {
			w.Abort(ctx)
		}
	}
	s.db.DeleteUpload(ctx, sess.CollectionID, sess.Artifact)
	log.Info("partial upload discarded", "upload", sess.ID)
}

// checkpoint persists where the upload durably stands, in sess and, through
// sv, in the state database. A store may make bytes durable in the
// background, so a checkpoint may cover only what an earlier one started,
// and sv may write the record in the background too. A final checkpoint
// (the upload is stopping) waits for both: it takes a second store
// checkpoint, which the Store contract (store.ResumableWriter) says covers
// all the store can make durable now, and writes its record itself. A cut
// then costs only the chunks in flight.
func (s *Server) checkpoint(ctx context.Context, up *ingest.Upload, sess *state.UploadSession, sv *saver, log *slog.Logger, final bool) error {
	if final {
		if _, err := up.Checkpoint(ctx); err != nil {
			log.Warn("checkpoint failed", "err", err)
			return err
		}
	}
	cp, err := up.Checkpoint(ctx)
	if err != nil {
		log.Warn("checkpoint failed", "err", err)
		return err
	}
	sess.StoreState, sess.Stored, sess.StoredHash = cp.StoreState, cp.Stored, cp.StoredHash
	sess.Seq, sess.Offset, sess.RawHash = cp.Position.Seq, cp.Position.Offset, cp.Position.HashState
	rec := *sess
	if final {
		// The write in flight, if any, holds an older record.
		sv.wait()
		return s.db.PutUpload(ctx, rec)
	}
	return sv.start(func() error { return s.db.PutUpload(ctx, rec) })
}

// saver runs an upload's database writes off its loop, one at a time. With
// the evidence being synced to the same disk, a write there waited 12 ms
// for its fsync (measured: 32 checkpoints and 15 progress writes per 2 GiB
// held the loop for 0.45 s of 3.8), while the agent waited on the window.
//
// Only a lone upload does so. With many running, the database writes of
// all of them queue on one lock, and that queue is what kept the loops from
// outrunning the collector's memory: 16 agents uploading 128 MiB each to
// S3 went from 146 to 127 MiB/s, at 7.0 -> 8.7 collector CPU-s per GiB,
// with every upload's writes in the background.
type saver struct {
	// inline makes start write on its caller's goroutine, as soon as the
	// write in flight is done.
	inline bool
	done   chan struct{} // closed when the write in flight ends; nil if none
	err    error         // the first write that failed
}

// busy reports whether a write is still running.
func (v *saver) busy() bool {
	if v.done == nil {
		return false
	}
	select {
	case <-v.done:
		return false
	default:
		return true
	}
}

// wait waits for the write in flight and returns the first error any
// write has had.
func (v *saver) wait() error {
	if v.done != nil {
		<-v.done
		v.done = nil
	}
	return v.err
}

// start waits for the write in flight, then starts write. It returns the
// first error an earlier write had, and then starts nothing.
func (v *saver) start(write func() error) error {
	if err := v.wait(); err != nil {
		return err
	}
	if v.inline {
		if err := write(); err != nil {
			v.err = err
		}
		return v.err
	}
	done := make(chan struct{})
	v.done = done
	go func() {
		defer close(done)
		if err := write(); err != nil {
			v.err = err
		}
	}()
	return nil
}

func (s *Server) finishUpload(ctx context.Context, stream custodyv1.AgentService_UploadServer, col state.Collection, name string,
	up *ingest.Upload, t *custodyv1.UploadTrailer, compressed bool, sess state.UploadSession, sv *saver, log *slog.Logger) error {
	res, err := up.Finish(ctx, chunk.Trailer{Total: t.GetTotalLength(), SHA256: t.GetSha256(), Count: t.GetChunkCount()})
	if err != nil {
		return err
	}
	// The object is committed: a checkpoint still being written is moot,
	// and must land before the record is deleted, not after.
	sv.wait()
	s.db.DeleteUpload(ctx, col.ID, name)
	err = s.setArtifact(ctx, col.ID, name, func(a *state.Artifact) {
		a.State = state.Complete
		if t.GetError() != "" {
			// What arrived is verified evidence, but not all there was.
			a.State, a.Error = state.Failed, "agent: capture incomplete: "+t.GetError()
		}
		a.BytesDone, a.RawSize, a.Chunks = res.RawSize, res.RawSize, int(res.Chunks)
		a.AgentSHA256, a.CollectorSHA256 = hex.EncodeToString(t.GetSha256()), hex.EncodeToString(res.RawSHA256)
		a.StoredSize, a.StoredSHA256 = res.StoredSize, hex.EncodeToString(res.Stored)
		a.Location, a.VersionID, a.ETag = res.Info.Location, res.Info.VersionID, res.Info.ETag
		a.Source, a.Warnings, a.Details = t.GetSource(), t.GetWarnings(), t.GetDetails()
		if sess.Resumes > 0 {
			if a.Details == nil {
				a.Details = map[string]string{}
			}
			a.Details["upload_resumes"] = fmt.Sprint(sess.Resumes)
		}
		a.Tool = state.ToolInfo{Name: t.GetTool().GetName(), Version: t.GetTool().GetVersion()}
		if compressed {
			a.Compression = "zstd"
		}
		for _, r := range t.GetSkippedRanges() {
			a.Skipped = append(a.Skipped, state.Range{Start: r.GetStart(), End: r.GetEnd(), Reason: r.GetReason()})
		}
	})
	if err != nil {
		// The object is stored but the collection moved on (cancelled or
		// failed meanwhile); it stays, and the manifest does not claim it.
		return err
	}
	log.Info("artifact stored", "key", res.Info.Key, "raw_bytes", res.RawSize, "stored_bytes", res.StoredSize, "sha256", hex.EncodeToString(res.RawSHA256))
	// Sealing outlives this stream: the agent may hang up the moment it
	// has its commit.
	defer func() {
		bg, cancel := background()
		defer cancel()
		s.maybeSeal(bg, col.ID)
	}()
	err = stream.Send(&custodyv1.UploadResponse{Msg: &custodyv1.UploadResponse_Committed{Committed: &custodyv1.UploadCommitted{
		Key: res.Info.Key, StoredSize: res.StoredSize, StoredSha256: res.Stored, RawSha256: res.RawSHA256,
	}}})
	if err != nil {
		log.Info("commit not delivered to the agent; evidence is stored", "err", err)
	}
	return nil
}

// refused reports errors that are a verdict on the upload itself, never an
// interruption, whatever else happened to the connection.
func refused(err error) bool {
	for _, e := range []error{chunk.ErrSequence, chunk.ErrOffset, chunk.ErrTooLarge, chunk.ErrLength, chunk.ErrHash,
		chunk.ErrCorrupt, chunk.ErrTrailer, store.ErrDigestMismatch, ErrInvalid, ErrForbidden} {
		if errors.Is(err, e) {
			return true
		}
	}
	return status.Code(err) == codes.ResourceExhausted
}

// isInterruption tells a broken stream (resume later) from a refused one.
func isInterruption(ctx context.Context, err error) bool {
	if status.Code(err) == codes.ResourceExhausted {
		return false // the transport refused an oversized message
	}
	if ctx.Err() != nil || errors.Is(err, io.ErrUnexpectedEOF) {
		return true
	}
	switch status.Code(err) {
	case codes.Canceled, codes.Unavailable, codes.DeadlineExceeded:
		return true
	}
	return false
}

// artLock is held by the one upload handler of an artifact.
type artLock struct {
	done       chan struct{} // closed when the holder has finished
	supersede  chan struct{} // closed to ask the holder to stop
	superseded sync.Once
}

// lockArtifact serialises the upload handlers of one artifact. A new stream
// for an artifact supersedes an old one still open (the agent reconnected
// and the old connection is half-open): the old handler is asked to stop,
// checkpoints, and only then the new one proceeds.
func (s *Server) lockArtifact(ctx context.Context, key string) (*artLock, func(), error) {
	for {
		s.artMu.Lock()
		busy, ok := s.artLocks[key]
		if !ok {
			l := &artLock{done: make(chan struct{}), supersede: make(chan struct{})}
			s.artLocks[key] = l
			s.artMu.Unlock()
			return l, func() {
				s.artMu.Lock()
				delete(s.artLocks, key)
				s.artMu.Unlock()
				close(l.done)
			}, nil
		}
		s.artMu.Unlock()
		busy.superseded.Do(func() { close(busy.supersede) })
		select {
		case <-busy.done:
		case <-ctx.Done():
			return nil, nil, ctx.Err()
		}
	}
}
