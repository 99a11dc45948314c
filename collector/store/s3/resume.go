package s3

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	s3api "github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/custodyhq/custody/collector/store"
)

// state is what an S3 checkpoint records: the multipart upload, the parts
// S3 acknowledged with their checksums, and the running SHA-256 at the end
// of the last of them.
type state struct {
	V         int         `json:"v"`
	Store     string      `json:"store"`
	Bucket    string      `json:"bucket"`
	Key       string      `json:"key"`
	UploadID  string      `json:"upload_id"`
	Expected  int64       `json:"expected_size"`
	PartSize  int64       `json:"part_size"`
	GrowFrom  int32       `json:"grow_from"`
	GrowEvery int32       `json:"grow_every"`
	Size      int64       `json:"size"`
	SHA256    []byte      `json:"sha256_state"`
	Parts     []statePart `json:"parts"`
}

type statePart struct {
	N      int32  `json:"n"`
	Size   int64  `json:"size"`
	ETag   string `json:"etag"`
	SHA256 []byte `json:"sha256"`
}

const stateVersion = 1

// UploadID returns the multipart upload a checkpoint state describes, for
// a collector that keeps its own list of uploads to sweep around.
func UploadID(checkpoint []byte) (string, error) {
	st, err := parseState(checkpoint)
	return st.UploadID, err
}

func parseState(b []byte) (state, error) {
	var st state
	if err := json.Unmarshal(b, &st); err != nil {
		return st, fmt.Errorf("s3: checkpoint state: %w", err)
	}
	if st.V != stateVersion || st.Store != "s3" {
		return st, fmt.Errorf("s3: not an s3 checkpoint state (store %q, version %d)", st.Store, st.V)
	}
	if err := store.ValidateKey(st.Key); err != nil {
		return st, fmt.Errorf("s3: checkpoint state: %w", err)
	}
	var total int64
	for i, p := range st.Parts {
		if p.N != int32(i+1) || p.Size < 0 || len(p.SHA256) != sha256.Size || p.ETag == "" {
			return st, fmt.Errorf("s3: checkpoint state: bad part %d", i+1)
		}
		total += p.Size
	}
	switch {
	case st.UploadID == "":
		return st, errors.New("s3: checkpoint state: no upload id")
	case total != st.Size:
		return st, fmt.Errorf("s3: checkpoint state: parts hold %d bytes, state says %d", total, st.Size)
	case st.PartSize < MinPartSize || st.PartSize > MaxPartSize || st.GrowEvery < 1:
		return st, errors.New("s3: checkpoint state: bad part sizing")
	}
	return st, nil
}

// Checkpoint implements store.ResumableWriter. It starts the multipart
// upload if the object had not needed one yet (so that there is something
// to resume, and to abort), and waits for the parts in flight: the durable
// size is every part S3 acknowledged. Bytes still filling the next part
// are not durable; they are at most one part.
func (w *writer) Checkpoint(ctx context.Context) ([]byte, int64, error) {
	w.op.Lock()
	defer w.op.Unlock()
	if w.finished {
		return nil, 0, fmt.Errorf("s3: checkpoint %s: %w", w.key, os.ErrClosed)
	}
	if err := ctx.Err(); err != nil {
		return nil, 0, err
	}
	if err := w.failure(); err != nil {
		return nil, 0, err
	}
	ctx, cancel := w.joined(ctx)
	defer cancel()
	if err := w.startUpload(ctx); err != nil {
		w.broken = err
		return nil, 0, err
	}
	if err := w.wait(ctx); err != nil {
		return nil, 0, fmt.Errorf("s3: checkpoint %s: %w", w.key, err)
	}
	st := state{
		V: stateVersion, Store: "s3", Bucket: w.s.cfg.Bucket, Key: w.key, UploadID: w.uploadID,
		Expected: w.expected, PartSize: w.partSize, GrowFrom: w.growFrom, GrowEvery: w.growEvery,
	}
	for _, p := range w.parts {
		st.Parts = append(st.Parts, statePart{N: p.num, Size: p.size, ETag: p.etag, SHA256: p.sha256})
		st.Size += p.size
	}
	if n := len(w.parts); n > 0 {
		st.SHA256 = w.parts[n-1].hashAfter
	} else {
		hs, err := store.MarshalHash(sha256.New())
		if err != nil {
			return nil, 0, err
		}
		st.SHA256 = hs
	}
	b, err := json.Marshal(st)
	if err != nil {
		return nil, 0, err
	}
	return b, st.Size, nil
}

// Resume implements store.Resumable. The upload must still exist and hold
// every checkpointed part with the checksum recorded; parts sent after the
// checkpoint are overwritten as the write continues, and never completed.
func (s *Store) Resume(ctx context.Context, key string, checkpoint []byte) (store.ResumableWriter, int64, error) {
	if err := ctx.Err(); err != nil {
		return nil, 0, err
	}
	if err := store.ValidateKey(key); err != nil {
		return nil, 0, err
	}
	st, err := parseState(checkpoint)
	if err != nil {
		return nil, 0, err
	}
	if st.Key != key || st.Bucket != s.cfg.Bucket {
		return nil, 0, fmt.Errorf("s3: resume %s in %s: checkpoint is for %s in %s", key, s.cfg.Bucket, st.Key, st.Bucket)
	}
	h, err := store.ResumeHash(st.SHA256, st.Size)
	if err != nil {
		return nil, 0, fmt.Errorf("s3: resume %s: %w", key, err)
	}
	w := s.newWriter(ctx, key)
	uploaded, err := s.listParts(ctx, w.obj, st.UploadID)
	if code(err) == "NoSuchUpload" {
		w.cancel()
		return nil, 0, fmt.Errorf("%w: resume %s: multipart upload %s is gone (aborted or completed)", store.ErrNotFound, key, st.UploadID)
	}
	if err != nil {
		w.cancel()
		return nil, 0, fmt.Errorf("s3: resume %s: %w", key, err)
	}
	w.uploadID, w.expected = st.UploadID, st.Expected
	w.partSize, w.growFrom, w.growEvery = st.PartSize, st.GrowFrom, st.GrowEvery
	w.h, w.n = store.NewDigest(h), st.Size
	for _, sp := range st.Parts {
		got, ok := uploaded[sp.N]
		if !ok || got.size != sp.Size || unquote(got.etag) != unquote(sp.ETag) || (got.sha256 != "" && got.sha256 != *b64(sp.SHA256)) {
			w.cancel()
			return nil, 0, fmt.Errorf("s3: resume %s: part %d of upload %s is not the checkpointed one", key, sp.N, st.UploadID)
		}
		p := newPart(w.s.blocks, 0)
		p.num, p.size, p.etag, p.sha256 = sp.N, sp.Size, sp.ETag, sp.SHA256
		close(p.done)
		w.parts = append(w.parts, p)
	}
	if n := len(w.parts); n > 0 {
		w.parts[n-1].hashAfter = st.SHA256
	}
	return w, st.Size, nil
}

type uploadedPart struct {
	size   int64
	etag   string
	sha256 string
}

func (s *Store) listParts(ctx context.Context, obj, uploadID string) (map[int32]uploadedPart, error) {
	parts := map[int32]uploadedPart{}
	pages := s3api.NewListPartsPaginator(s.client, &s3api.ListPartsInput{Bucket: &s.cfg.Bucket, Key: &obj, UploadId: &uploadID})
	for pages.HasMorePages() {
		page, err := pages.NextPage(ctx)
		if err != nil {
			return nil, err
		}
		for _, p := range page.Parts {
			parts[aws.ToInt32(p.PartNumber)] = uploadedPart{size: aws.ToInt64(p.Size), etag: aws.ToString(p.ETag), sha256: aws.ToString(p.ChecksumSHA256)}
		}
	}
	return parts, nil
}

// Sweep implements store.Sweeper: it aborts the multipart uploads under
// the store's prefix that were initiated before before and are not in
// keep. Uploads of keys outside the layout belong to something else in the
// bucket and are left alone.
func (s *Store) Sweep(ctx context.Context, keep [][]byte, before time.Time) (int, error) {
	ids := map[string]bool{}
	for _, k := range keep {
		id, err := UploadID(k)
		if err != nil {
			return 0, fmt.Errorf("s3: sweep: %w", err)
		}
		ids[id] = true
	}
	return s.AbortUntracked(ctx, ids, before)
}

// AbortUntracked aborts the store's multipart uploads initiated before
// before whose ids are not in tracked.
func (s *Store) AbortUntracked(ctx context.Context, tracked map[string]bool, before time.Time) (int, error) {
	prefix := ""
	if s.cfg.Prefix != "" {
		prefix = s.cfg.Prefix + "/"
	}
	aborted := 0
	var errs []error
	pages := s3api.NewListMultipartUploadsPaginator(s.client, &s3api.ListMultipartUploadsInput{Bucket: &s.cfg.Bucket, Prefix: &prefix})
	for pages.HasMorePages() {
		page, err := pages.NextPage(ctx)
		if err != nil {
			return aborted, fmt.Errorf("s3: sweep: list multipart uploads: %w", err)
		}
		for _, u := range page.Uploads {
			obj, id := aws.ToString(u.Key), aws.ToString(u.UploadId)
			key, ok := strings.CutPrefix(obj, prefix)
			if !ok || store.ValidateKey(key) != nil || tracked[id] || !aws.ToTime(u.Initiated).Before(before) {
				continue
			}
			if err := s.abortUpload(ctx, obj, id); err != nil {
				errs = append(errs, err)
				continue
			}
			s.log.Info("aborted an untracked multipart upload", "key", key, "upload_id", id, "initiated", aws.ToTime(u.Initiated))
			aborted++
		}
	}
	if err := errors.Join(errs...); err != nil {
		return aborted, fmt.Errorf("s3: sweep: %w", err)
	}
	return aborted, nil
}
