package s3

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"os"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awsmiddleware "github.com/aws/aws-sdk-go-v2/aws/middleware"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	s3api "github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"

	"github.com/custodyhq/custody/collector/store"
)

// Create implements store.Store. Nothing is sent until the first part is
// full: an object smaller than one part is sent with a single PutObject at
// Commit, and a larger one starts a multipart upload then.
func (s *Store) Create(ctx context.Context, key string, opts store.CreateOptions) (store.Writer, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := store.ValidateKey(key); err != nil {
		return nil, err
	}
	tagging, err := tags(key, opts.Tags)
	if err != nil {
		return nil, err
	}
	w := s.newWriter(ctx, key)
	w.contentType, w.tagging = opts.ContentType, tagging
	w.expected = opts.ExpectedSize
	w.partSize, w.growFrom, w.growEvery = partSizing(s.cfg.PartSize, opts.ExpectedSize)
	return w, nil
}

func (s *Store) newWriter(ctx context.Context, key string) *writer {
	// Parts are sent under the context of the upload that created the
	// writer (its values, its end) and end early on Abort.
	wctx, cancel := context.WithCancel(ctx)
	return &writer{s: s, key: key, obj: s.objectKey(key), ctx: wctx, cancel: cancel, h: store.NewDigest(sha256.New())}
}

// partSizing chooses the part size for an object of about expected bytes:
// the configured size, or more if 10,000 parts of it would not hold the
// object. Every part but the last is at least the part size (parts are
// sent once they reach it), so k parts hold at least (k-1) × size bytes.
// The expected size is a hint: if an object outgrows it, parts double in
// size (from part growFrom on, every growEvery parts) so that the 10,000
// parts S3 allows still cover S3's 5 TiB object limit.
func partSizing(base, expected int64) (size int64, growFrom, growEvery int32) {
	if expected < 0 {
		// Unknown size: 1,000 parts at each size, doubling.
		return base, 0, 1000
	}
	need := (expected + MaxParts - 2) / (MaxParts - 1)
	size = max(base, (need+1<<20-1)/(1<<20)*(1<<20))
	return min(size, MaxPartSize), 9000, 100
}

// partSizeFor is the size at which part n (1-based) is sent.
func (w *writer) partSizeFor(n int32) int64 {
	size := w.partSize
	if n > w.growFrom {
		for i := (n - w.growFrom - 1) / w.growEvery; i > 0 && size < MaxPartSize; i-- {
			size *= 2
		}
	}
	return min(size, MaxPartSize)
}

// writer is one object being written. Write, Commit and Checkpoint come
// from one goroutine; Abort may come from another, so it cancels first
// (which unblocks whatever the others wait on) and then takes op.
type writer struct {
	s   *Store
	key string
	obj string // bucket key

	ctx    context.Context
	cancel context.CancelFunc

	// Fixed at Create.
	contentType, tagging string
	expected             int64
	partSize             int64
	growFrom, growEvery  int32

	op        sync.Mutex    // held by Write, Commit, Checkpoint and Abort
	h         *store.Digest // SHA-256 of everything written
	n         int64
	buf       *part // part being filled
	uploadID  string
	parts     []*part // sealed parts, part n at index n-1
	finished  bool
	committed *store.Info
	broken    error // first failure; the write cannot be completed

	failMu  sync.Mutex
	partErr error // first failed part, set by the uploads
}

func (w *writer) Write(p []byte) (int, error) { return w.WriteTee(p, nil) }

// WriteTee implements store.TeeWriter: the bytes written go into the
// object's digest and, in the same pass, into h (if not nil).
func (w *writer) WriteTee(p []byte, h hash.Hash) (int, error) {
	w.op.Lock()
	defer w.op.Unlock()
	if w.finished {
		return 0, fmt.Errorf("s3: write %s: %w", w.key, os.ErrClosed)
	}
	if err := w.failure(); err != nil {
		return 0, err
	}
	if len(p) == 0 {
		return 0, nil
	}
	if w.buf == nil {
		num := int32(len(w.parts) + 1)
		if num > MaxParts {
			w.broken = fmt.Errorf("s3: write %s: more than %d parts (expected size %d)", w.key, MaxParts, w.expected)
			return 0, w.broken
		}
		reserve := w.partSizeFor(num)
		if num == 1 && w.expected >= 0 && w.expected < reserve {
			// A small object (a manifest) reserves its size, not a
			// whole part.
			reserve = max(w.expected, int64(len(p)), 1)
		}
		reserve = min(reserve, w.s.budgetMax)
		if err := w.s.budget.Acquire(w.ctx, reserve); err != nil {
			return 0, fmt.Errorf("s3: write %s: waiting for part memory: %w", w.key, err)
		}
		w.buf = newPart(w.s.blocks, reserve)
	}
	w.buf.write(p)
	if over := w.buf.allocated() - w.buf.reserved; over > 0 && w.s.budget.TryAcquire(over) {
		// The last Write took the part past its reservation. Account for
		// it if the budget allows; waiting here could deadlock writers
		// that each hold part of a part, so past the budget it is an
		// overdraft of less than one Write.
		w.buf.reserved += over
	}
	w.h.Write(p, h)
	w.n += int64(len(p))
	if w.buf.size >= w.partSizeFor(int32(len(w.parts)+1)) {
		if err := w.seal(w.ctx); err != nil {
			return len(p), err
		}
	}
	return len(p), nil
}

// failure returns the first failed part's error, if any.
func (w *writer) failure() error {
	if w.broken == nil {
		w.failMu.Lock()
		w.broken = w.partErr
		w.failMu.Unlock()
	}
	return w.broken
}

// seal sends the part being filled, starting the multipart upload if this
// is the first part.
func (w *writer) seal(ctx context.Context) error {
	if err := w.startUpload(ctx); err != nil {
		w.broken = err
		return err
	}
	p := w.buf
	w.buf = nil
	p.num = int32(len(w.parts) + 1)
	hs, err := w.h.MarshalBinary()
	if err != nil {
		w.s.budget.Release(p.reserved)
		p.release()
		w.broken = err
		return err
	}
	p.hashAfter = hs
	w.parts = append(w.parts, p)
	go w.upload(p, w.uploadID)
	return nil
}

func (w *writer) startUpload(ctx context.Context) error {
	if w.uploadID != "" {
		return nil
	}
	c := w.controls()
	in := &s3api.CreateMultipartUploadInput{
		Bucket: &w.s.cfg.Bucket, Key: &w.obj,
		ChecksumAlgorithm: types.ChecksumAlgorithmSha256, ChecksumType: types.ChecksumTypeComposite,
		ContentType: c.contentType, Tagging: c.tagging, ServerSideEncryption: c.sse, SSEKMSKeyId: c.kmsKeyID,
		ObjectLockMode: c.lockMode, ObjectLockRetainUntilDate: c.retainUntil, ObjectLockLegalHoldStatus: c.legalHold,
	}
	start := time.Now()
	out, err := w.s.client.CreateMultipartUpload(ctx, in)
	if err != nil {
		w.s.abortStrays(ctx, w.obj, "", start)
		return fmt.Errorf("s3: write %s: start multipart upload: %w", w.key, err)
	}
	w.uploadID = aws.ToString(out.UploadId)
	if r, ok := retry.GetAttemptResults(out.ResultMetadata); ok && len(r.Results) > 1 {
		w.s.abortStrays(ctx, w.obj, w.uploadID, start)
	}
	return nil
}

// abortStrays aborts the multipart uploads of obj, other than ours, that a
// CreateMultipartUpload begun at start may have started. An attempt whose
// answer was lost or late still starts an upload; the retry that answered
// (or the error) does not name it, and nothing would ever complete or
// abort it. Only uploads of exactly obj that S3 initiated since start, by
// S3's own clock, are touched: a key has one writer, so those can only be
// this call's. Failing here loses no evidence: the collector's sweep at
// its next start aborts what is left.
func (s *Store) abortStrays(ctx context.Context, obj, ours string, start time.Time) {
	const slack = 2 * time.Second // S3's Initiated may be truncated to the second
	out, err := s.client.ListMultipartUploads(ctx, &s3api.ListMultipartUploadsInput{Bucket: &s.cfg.Bucket, Prefix: &obj})
	if err != nil {
		s.log.Warn("could not look for multipart uploads started by a retried create", "key", obj, "err", err)
		return
	}
	now, ok := awsmiddleware.GetServerTime(out.ResultMetadata)
	if !ok {
		s.log.Warn("could not look for multipart uploads started by a retried create: S3 sent no Date", "key", obj)
		return
	}
	from := now.Add(-time.Since(start) - slack)
	for _, u := range out.Uploads {
		id, at := aws.ToString(u.UploadId), aws.ToTime(u.Initiated)
		if aws.ToString(u.Key) != obj || id == ours || at.Before(from) || at.After(now.Add(slack)) {
			continue
		}
		if err := s.abortUpload(ctx, obj, id); err != nil {
			s.log.Warn("could not abort a multipart upload started by a retried create", "key", obj, "upload_id", id, "err", err)
			continue
		}
		s.log.Info("aborted a multipart upload started by a retried create", "key", obj, "upload_id", id)
	}
}

// controls are the evidence controls every object gets, whether it is
// sent in one PutObject or as a multipart upload.
type controls struct {
	contentType, tagging *string
	sse                  types.ServerSideEncryption
	kmsKeyID             *string
	lockMode             types.ObjectLockMode
	retainUntil          *time.Time
	legalHold            types.ObjectLockLegalHoldStatus
}

func (w *writer) controls() controls {
	c := controls{tagging: aws.String(w.tagging)}
	if w.contentType != "" {
		c.contentType = aws.String(w.contentType)
	}
	if k := w.s.cfg.KMSKeyID; k != "" {
		c.sse, c.kmsKeyID = types.ServerSideEncryptionAwsKms, aws.String(k)
	}
	if ol := w.s.cfg.ObjectLock; ol.Mode != "" {
		c.lockMode = types.ObjectLockMode(ol.Mode)
		c.retainUntil = aws.Time(w.s.now().Add(time.Duration(ol.RetainDays) * 24 * time.Hour).UTC().Truncate(time.Second))
	}
	if w.s.cfg.ObjectLock.LegalHold {
		c.legalHold = types.ObjectLockLegalHoldStatusOn
	}
	return c
}

// upload sends one part with its SHA-256 (S3 refuses the part if the bytes
// it received hash differently), then frees its memory.
func (w *writer) upload(p *part, uploadID string) {
	defer close(p.done)
	defer func() {
		p.release()
		w.s.budget.Release(p.reserved)
	}()
	sum := p.sum()
	out, err := w.s.client.UploadPart(w.ctx, &s3api.UploadPartInput{
		Bucket: &w.s.cfg.Bucket, Key: &w.obj, UploadId: &uploadID, PartNumber: aws.Int32(p.num),
		Body: p.reader(), ContentLength: aws.Int64(p.size), ChecksumSHA256: b64(sum),
	}, w.s.withPayloadHash(sum))
	if err == nil {
		if got := aws.ToString(out.ChecksumSHA256); got != "" && got != *b64(sum) {
			err = fmt.Errorf("server checksum %s, sent %s", got, *b64(sum))
		}
	}
	if err != nil {
		w.failMu.Lock()
		if w.partErr == nil {
			w.partErr = fmt.Errorf("s3: write %s: part %d (%d bytes): %w", w.key, p.num, p.size, err)
		}
		w.failMu.Unlock()
		return
	}
	p.sha256, p.etag = sum, aws.ToString(out.ETag)
}

// wait waits for every sealed part, returning the first failure.
func (w *writer) wait(ctx context.Context) error {
	for _, p := range w.parts {
		select {
		case <-p.done:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return w.failure()
}

// joined is ctx, also ended by the writer's own end (Abort).
func (w *writer) joined(ctx context.Context) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(w.ctx, cancel)
	return ctx, func() { stop(); cancel() }
}

// Commit implements store.Writer. Whatever the outcome, the write is
// finished: its memory is returned and, unless it completed, its multipart
// upload is aborted.
func (w *writer) Commit(ctx context.Context, size int64, sum []byte) (store.Info, error) {
	w.op.Lock()
	defer w.op.Unlock()
	if w.committed != nil {
		return *w.committed, nil
	}
	if w.finished {
		return store.Info{}, fmt.Errorf("s3: commit %s: %w", w.key, os.ErrClosed)
	}
	info, err := w.commit(ctx, size, sum)
	// The cleanup must run even when ctx ended: that is when an upload is
	// most likely to be left behind.
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
	defer cancel()
	if derr := w.discard(cctx); derr != nil {
		w.s.log.Warn("aborting a multipart upload", "key", w.key, "err", derr)
	}
	if err != nil {
		return store.Info{}, err
	}
	w.committed = &info
	return info, nil
}

// cleanupTimeout bounds aborting an upload whose caller has given up.
const cleanupTimeout = 2 * time.Minute

func (w *writer) commit(ctx context.Context, size int64, sum []byte) (store.Info, error) {
	if err := ctx.Err(); err != nil {
		return store.Info{}, err
	}
	if err := w.failure(); err != nil {
		return store.Info{}, err
	}
	got := w.h.Sum()
	if size != w.n || !bytes.Equal(sum, got) {
		return store.Info{}, fmt.Errorf("%w: %s: want %d bytes sha256 %x, wrote %d bytes sha256 %x",
			store.ErrDigestMismatch, w.key, size, sum, w.n, got)
	}
	ctx, cancel := w.joined(ctx)
	defer cancel()
	ours := store.Info{Key: w.key, Size: w.n, SHA256: hex.EncodeToString(got), Location: w.s.location(w.key)}
	var versionID string
	var err error
	if w.uploadID == "" {
		versionID, err = w.putObject(ctx, got)
	} else {
		versionID, err = w.complete(ctx)
	}
	if errors.Is(err, errTaken) {
		return w.existing(ctx, ours)
	}
	if err != nil {
		return store.Info{}, err
	}
	// Read back what S3 now holds under that version: the size proves no
	// part is missing, and the server's timestamp is the object's.
	stored, err := w.s.client.HeadObject(ctx, &s3api.HeadObjectInput{Bucket: &w.s.cfg.Bucket, Key: &w.obj, VersionId: nonEmpty(versionID)})
	if err != nil {
		return store.Info{}, fmt.Errorf("s3: commit %s: head after upload: %w", w.key, err)
	}
	if n := aws.ToInt64(stored.ContentLength); n != w.n {
		return store.Info{}, fmt.Errorf("s3: commit %s: stored object has %d bytes, wrote %d", w.key, n, w.n)
	}
	ours.VersionID = aws.ToString(stored.VersionId)
	ours.ETag = unquote(aws.ToString(stored.ETag))
	ours.ModTime = aws.ToTime(stored.LastModified)
	return ours, nil
}

func nonEmpty(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

// errTaken means the key already holds an object: If-None-Match refused
// the write.
var errTaken = errors.New("s3: key taken")

func (w *writer) putObject(ctx context.Context, sum []byte) (string, error) {
	body := newPart(w.s.blocks, 0)
	if w.buf != nil {
		body = w.buf
	}
	c := w.controls()
	in := &s3api.PutObjectInput{
		Bucket: &w.s.cfg.Bucket, Key: &w.obj, Body: body.reader(), ContentLength: aws.Int64(body.size),
		ChecksumSHA256: b64(sum), IfNoneMatch: aws.String("*"),
		ContentType: c.contentType, Tagging: c.tagging, ServerSideEncryption: c.sse, SSEKMSKeyId: c.kmsKeyID,
		ObjectLockMode: c.lockMode, ObjectLockRetainUntilDate: c.retainUntil, ObjectLockLegalHoldStatus: c.legalHold,
	}
	out, err := w.s.client.PutObject(ctx, in, w.s.withPayloadHash(sum))
	if code(err) == "PreconditionFailed" {
		return "", errTaken
	}
	if err != nil {
		return "", fmt.Errorf("s3: commit %s: %w", w.key, err)
	}
	return aws.ToString(out.VersionId), nil
}

// complete sends the last part, waits for all of them and completes the
// upload with the parts' checksums and their composite, which S3 checks.
func (w *writer) complete(ctx context.Context) (string, error) {
	if w.buf != nil || len(w.parts) == 0 {
		if w.buf == nil {
			w.buf = newPart(w.s.blocks, 0) // an empty object after a checkpoint
		}
		if err := w.seal(ctx); err != nil {
			return "", err
		}
	}
	if err := w.wait(ctx); err != nil {
		return "", err
	}
	completed := make([]types.CompletedPart, len(w.parts))
	var sums []byte
	for i, p := range w.parts {
		completed[i] = types.CompletedPart{PartNumber: aws.Int32(p.num), ETag: aws.String(p.etag), ChecksumSHA256: b64(p.sha256)}
		sums = append(sums, p.sha256...)
	}
	composite := compositeSHA256(sums, len(w.parts))
	out, err := w.s.client.CompleteMultipartUpload(ctx, &s3api.CompleteMultipartUploadInput{
		Bucket: &w.s.cfg.Bucket, Key: &w.obj, UploadId: &w.uploadID,
		MultipartUpload: &types.CompletedMultipartUpload{Parts: completed},
		ChecksumSHA256:  aws.String(composite), IfNoneMatch: aws.String("*"),
	})
	switch code(err) {
	case "PreconditionFailed":
		return "", errTaken
	case "NoSuchUpload":
		// A retried Complete whose first attempt succeeded: the upload
		// is gone because the object exists. existing decides whether it
		// is ours.
		return "", errTaken
	}
	if err != nil {
		return "", fmt.Errorf("s3: commit %s: complete multipart upload: %w", w.key, err)
	}
	if got := aws.ToString(out.ChecksumSHA256); got != "" && got != composite {
		return "", fmt.Errorf("s3: commit %s: server's composite checksum %s, want %s", w.key, got, composite)
	}
	w.uploadID = "" // completed: nothing to abort
	return aws.ToString(out.VersionId), nil
}

// compositeSHA256 is S3's checksum of a multipart object: the SHA-256 of
// the parts' SHA-256s, with the part count.
func compositeSHA256(sums []byte, parts int) string {
	c := sha256.Sum256(sums)
	return fmt.Sprintf("%s-%d", base64.StdEncoding.EncodeToString(c[:]), parts)
}

// existing decides a commit that found the key taken: the same bytes are a
// successful idempotent put, anything else is never overwritten.
func (w *writer) existing(ctx context.Context, ours store.Info) (store.Info, error) {
	theirs, err := w.s.stat(ctx, w.key, "")
	if err != nil {
		return store.Info{}, fmt.Errorf("s3: commit %s: %w", w.key, err)
	}
	if theirs.Size != ours.Size || theirs.SHA256 != ours.SHA256 {
		return store.Info{}, fmt.Errorf("%w: %s holds %d bytes sha256 %s, refusing %d bytes sha256 %s",
			store.ErrExists, w.key, theirs.Size, theirs.SHA256, ours.Size, ours.SHA256)
	}
	return theirs, nil
}

// Abort implements store.Writer.
func (w *writer) Abort(ctx context.Context) error {
	w.cancel() // unblocks a Write, Commit or Checkpoint in progress
	w.op.Lock()
	defer w.op.Unlock()
	if w.finished && w.uploadID == "" {
		return nil
	}
	return w.discard(ctx)
}

// discard ends the write: parts in flight are cancelled and waited for,
// memory is returned, and the multipart upload, if any, is aborted so
// that its parts are neither billed nor ever completed.
func (w *writer) discard(ctx context.Context) error {
	w.finished = true
	w.cancel()
	for _, p := range w.parts {
		<-p.done
	}
	w.parts = nil
	if w.buf != nil {
		w.buf.release()
		w.s.budget.Release(w.buf.reserved)
		w.buf = nil
	}
	if w.uploadID == "" {
		return nil
	}
	if err := w.s.abortUpload(ctx, w.obj, w.uploadID); err != nil {
		return err // kept, so that a later Abort tries again
	}
	w.uploadID = ""
	return nil
}

func (s *Store) abortUpload(ctx context.Context, obj, id string) error {
	_, err := s.client.AbortMultipartUpload(ctx, &s3api.AbortMultipartUploadInput{Bucket: &s.cfg.Bucket, Key: &obj, UploadId: &id})
	if err != nil && code(err) != "NoSuchUpload" {
		return fmt.Errorf("s3: abort upload %s of %s: %w", id, obj, err)
	}
	return nil
}
