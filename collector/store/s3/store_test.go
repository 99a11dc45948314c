package s3_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"io"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	s3api "github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/google/go-cmp/cmp"

	"github.com/custodyhq/custody/collector/store"
	s3store "github.com/custodyhq/custody/collector/store/s3"
	"github.com/custodyhq/custody/collector/store/s3/s3test"
)

func randBytes(seed uint64, n int) []byte {
	b := make([]byte, n)
	var s [32]byte
	binary.LittleEndian.PutUint64(s[:], seed)
	rand.NewChaCha8(s).Read(b)
	return b
}

func sum(b []byte) []byte { s := sha256.Sum256(b); return s[:] }

// put writes data in Write calls of size write.
func put(ctx context.Context, s store.Store, key string, data []byte, write int) (store.Info, error) {
	w, err := s.Create(ctx, key, store.CreateOptions{ExpectedSize: int64(len(data)), ContentType: "application/zstd"})
	if err != nil {
		return store.Info{}, err
	}
	defer w.Abort(context.Background())
	for rest := data; len(rest) > 0; {
		n := min(write, len(rest))
		if _, err := w.Write(rest[:n]); err != nil {
			return store.Info{}, err
		}
		rest = rest[n:]
	}
	return w.Commit(ctx, int64(len(data)), sum(data))
}

// readBack reads an object with the SDK directly, not through the store.
func readBack(t *testing.T, c *s3api.Client, bucket, key string) []byte {
	t.Helper()
	out, err := c.GetObject(t.Context(), &s3api.GetObjectInput{Bucket: &bucket, Key: &key})
	if err != nil {
		t.Fatalf("GetObject %s: %v", key, err)
	}
	defer out.Body.Close()
	b, err := io.ReadAll(out.Body)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// uploads lists the multipart uploads in progress in a bucket.
func uploads(t *testing.T, c *s3api.Client, bucket string) []string {
	t.Helper()
	out, err := c.ListMultipartUploads(t.Context(), &s3api.ListMultipartUploadsInput{Bucket: &bucket})
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	for _, u := range out.Uploads {
		keys = append(keys, aws.ToString(u.Key))
	}
	return keys
}

// TestS3EvidenceControls checks what an object carries: its location,
// version and ETag, the tags derived from its key, Object Lock retention
// and legal hold, SSE-KMS, and a SHA-256 checksum S3 verified.
func TestS3EvidenceControls(t *testing.T) {
	t.Parallel()
	srv := s3test.Start(t)
	client := srv.Client()
	bucket := srv.Bucket(t, true)
	cfg := testConfig(srv.Endpoint, bucket)
	cfg.ObjectLock = s3store.ObjectLock{Mode: "COMPLIANCE", RetainDays: 7, LegalHold: true}
	cfg.KMSKeyID = "arn:aws:kms:us-east-1:111122223333:key/custody"
	proxy := s3test.NewProxy(t, srv.Endpoint)
	cfg.Endpoint = proxy.URL
	s := newStore(t, srv, cfg)

	for _, tc := range []struct {
		name string
		size int
		tags map[string]string
	}{
		{"processes.jsonl.zst", 1000, nil},                             // one PutObject
		{"memory.lime.zst", 2*s3store.MinPartSize + 1, nil},            // multipart
		{"host.json", 10, map[string]string{"artifact": "host-facts"}}, // a caller's tag wins
	} {
		t.Run(tc.name, func(t *testing.T) {
			key := "IR-7/i-0abc/col-1/" + tc.name
			data := randBytes(uint64(tc.size), tc.size)
			w, err := s.Create(t.Context(), key, store.CreateOptions{ExpectedSize: int64(tc.size), Tags: tc.tags})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := w.Write(data); err != nil {
				t.Fatal(err)
			}
			before := time.Now()
			info, err := w.Commit(t.Context(), int64(len(data)), sum(data))
			if err != nil {
				t.Fatal(err)
			}
			obj := "evidence/" + key
			if want := "s3://" + bucket + "/" + obj; info.Location != want {
				t.Errorf("Location = %q, want %q", info.Location, want)
			}
			if info.VersionID == "" || info.ETag == "" || strings.Contains(info.ETag, `"`) {
				t.Errorf("VersionID %q, ETag %q: want both, ETag unquoted", info.VersionID, info.ETag)
			}
			head, err := client.HeadObject(t.Context(), &s3api.HeadObjectInput{Bucket: &bucket, Key: &obj, ChecksumMode: types.ChecksumModeEnabled})
			if err != nil {
				t.Fatal(err)
			}
			if got := aws.ToString(head.VersionId); got != info.VersionID {
				t.Errorf("head version %q, Commit said %q", got, info.VersionID)
			}
			if head.ObjectLockMode != types.ObjectLockModeCompliance || head.ObjectLockLegalHoldStatus != types.ObjectLockLegalHoldStatusOn {
				t.Errorf("lock mode %q legal hold %q, want COMPLIANCE and ON", head.ObjectLockMode, head.ObjectLockLegalHoldStatus)
			}
			if until := aws.ToTime(head.ObjectLockRetainUntilDate); until.Before(before.Add(7*24*time.Hour-time.Minute)) || until.After(time.Now().Add(7*24*time.Hour+time.Minute)) {
				t.Errorf("retain until %v, want 7 days from now", until)
			}
			if aws.ToString(head.ChecksumSHA256) == "" {
				t.Error("object has no SHA-256 checksum")
			}
			tagOut, err := client.GetObjectTagging(t.Context(), &s3api.GetObjectTaggingInput{Bucket: &bucket, Key: &obj})
			if err != nil {
				t.Fatal(err)
			}
			got := map[string]string{}
			for _, tag := range tagOut.TagSet {
				got[aws.ToString(tag.Key)] = aws.ToString(tag.Value)
			}
			want := map[string]string{"case": "IR-7", "agent": "i-0abc", "collection": "col-1", "artifact": strings.SplitN(tc.name, ".", 2)[0]}
			for k, v := range tc.tags {
				want[k] = v
			}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("tags (-want +got):\n%s", diff)
			}
			if !bytes.Equal(readBack(t, client, bucket, obj), data) {
				t.Error("bytes read back differ")
			}
		})
	}
	// Every request that creates an object asked for SSE-KMS with the
	// key (versitygw accepts the headers but has no KMS to report back).
	creates := 0
	for _, r := range proxy.Requests() {
		if op := r.Op(); op == "PutObject" || op == "CreateMultipartUpload" {
			creates++
			sse, kms := r.Header.Get("X-Amz-Server-Side-Encryption"), r.Header.Get("X-Amz-Server-Side-Encryption-Aws-Kms-Key-Id")
			if sse != "aws:kms" || kms != cfg.KMSKeyID {
				t.Errorf("%s: SSE %q key %q, want aws:kms and %q", op, sse, kms, cfg.KMSKeyID)
			}
		}
	}
	if creates != 3 {
		t.Errorf("saw %d object-creating requests, want 3", creates)
	}
}

// TestS3ObjectLockDeleteRefused: with retention configured, the server
// refuses to delete a stored object's version, and deleting the key only
// hides it behind a delete marker while the evidence stays readable.
func TestS3ObjectLockDeleteRefused(t *testing.T) {
	t.Parallel()
	srv := s3test.Start(t)
	client := srv.Client()
	for _, lock := range []s3store.ObjectLock{
		{Mode: "GOVERNANCE", RetainDays: 1},
		{Mode: "COMPLIANCE", RetainDays: 1},
		{LegalHold: true},
	} {
		t.Run(lock.Mode+map[bool]string{true: "legal-hold"}[lock.LegalHold], func(t *testing.T) {
			bucket := srv.Bucket(t, true)
			cfg := testConfig(srv.Endpoint, bucket)
			cfg.ObjectLock = lock
			s := newStore(t, srv, cfg)
			data := randBytes(7, 4096)
			info, err := put(t.Context(), s, "IR-1/agent-1/col-1/processes.jsonl.zst", data, 1000)
			if err != nil {
				t.Fatal(err)
			}
			obj := "evidence/IR-1/agent-1/col-1/processes.jsonl.zst"
			_, err = client.DeleteObject(t.Context(), &s3api.DeleteObjectInput{Bucket: &bucket, Key: &obj, VersionId: &info.VersionID})
			if err == nil {
				t.Fatal("deleting a locked object version succeeded")
			}
			t.Logf("delete refused: %v", err)
			// A delete without a version adds a delete marker; the
			// version itself stays.
			client.DeleteObject(t.Context(), &s3api.DeleteObjectInput{Bucket: &bucket, Key: &obj})
			out, err := client.GetObject(t.Context(), &s3api.GetObjectInput{Bucket: &bucket, Key: &obj, VersionId: &info.VersionID})
			if err != nil {
				t.Fatalf("locked version after delete attempts: %v", err)
			}
			got, _ := io.ReadAll(out.Body)
			out.Body.Close()
			if !bytes.Equal(got, data) {
				t.Error("locked version's bytes changed")
			}
		})
	}
}

// TestS3StartupChecks: misconfiguration fails New with a clear error
// before any evidence is sent.
func TestS3StartupChecks(t *testing.T) {
	t.Parallel()
	srv := s3test.Start(t)
	plain := srv.Bucket(t, false)
	for _, tc := range []struct {
		name    string
		mutate  func(*s3store.Config)
		wantErr string
		is      error
	}{
		{"retention-without-object-lock", func(c *s3store.Config) {
			c.ObjectLock = s3store.ObjectLock{Mode: "COMPLIANCE", RetainDays: 30}
		}, "does not have Object Lock enabled", s3store.ErrObjectLock},
		{"legal-hold-without-object-lock", func(c *s3store.Config) { c.ObjectLock.LegalHold = true }, "legal hold", s3store.ErrObjectLock},
		{"no-such-bucket", func(c *s3store.Config) { c.Bucket = "no-such-bucket" }, `bucket "no-such-bucket"`, nil},
		{"bad-mode", func(c *s3store.Config) { c.ObjectLock = s3store.ObjectLock{Mode: "FOREVER", RetainDays: 1} }, "GOVERNANCE or COMPLIANCE", nil},
		{"mode-without-days", func(c *s3store.Config) { c.ObjectLock = s3store.ObjectLock{Mode: "GOVERNANCE"} }, "retain_days", nil},
		{"days-without-mode", func(c *s3store.Config) { c.ObjectLock = s3store.ObjectLock{RetainDays: 3} }, "needs a mode", nil},
		{"small-parts", func(c *s3store.Config) { c.PartSize = 1 << 20 }, "part_size", nil},
		{"bad-prefix", func(c *s3store.Config) { c.Prefix = "/evidence/" }, "prefix", nil},
		{"no-bucket", func(c *s3store.Config) { c.Bucket = "" }, "bucket is required", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := testConfig(srv.Endpoint, plain)
			cfg.MaxAttempts = 1
			tc.mutate(&cfg)
			_, err := s3store.New(t.Context(), cfg, logger(), srv.Options())
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) || tc.is != nil && !errors.Is(err, tc.is) {
				t.Fatalf("New = %v, want an error saying %q", err, tc.wantErr)
			}
		})
	}
}

// TestS3PartsAndMemory checks that parts are cut at Write boundaries, are
// at least the part size (but the last), carry a SHA-256, and that no more
// parts than the store-wide bound are in flight however many writers there
// are.
func TestS3PartsAndMemory(t *testing.T) {
	t.Parallel()
	srv := s3test.Start(t)
	bucket := srv.Bucket(t, false)
	proxy := s3test.NewProxy(t, srv.Endpoint)
	cfg := testConfig(proxy.URL, bucket)
	cfg.MaxPartsInFlight = 2
	s := newStore(t, srv, cfg)
	const write = 700 << 10 // does not divide the part size
	objects := map[string][]byte{}
	var wg sync.WaitGroup
	var mu sync.Mutex
	for i := range 6 {
		key := "c/a/x/" + string(rune('a'+i))
		data := randBytes(uint64(i), 3*s3store.MinPartSize+i*99999)
		mu.Lock()
		objects[key] = data
		mu.Unlock()
		wg.Go(func() {
			if _, err := put(t.Context(), s, key, data, write); err != nil {
				t.Errorf("put %s: %v", key, err)
			}
		})
	}
	wg.Wait()
	if got := proxy.Peak("UploadPart"); got > cfg.MaxPartsInFlight {
		t.Errorf("%d parts in flight at once, bound is %d", got, cfg.MaxPartsInFlight)
	}
	sizes := map[string][]int64{}
	for _, r := range proxy.Requests() {
		if r.Op() != "UploadPart" {
			continue
		}
		cs, err := base64.StdEncoding.DecodeString(r.Header.Get("X-Amz-Checksum-Sha256"))
		if err != nil || len(cs) != sha256.Size {
			t.Errorf("part without a SHA-256 checksum: %v", r.Query)
		}
		// The signature covers the checksum header; the body is not
		// hashed a second time by the SDK, nor by the server.
		if got := r.Header.Get("X-Amz-Content-Sha256"); got != "UNSIGNED-PAYLOAD" {
			t.Errorf("part signed with payload hash %q, want UNSIGNED-PAYLOAD", got)
		}
		if !strings.Contains(r.Header.Get("Authorization"), "x-amz-checksum-sha256") {
			t.Errorf("the checksum header is not signed: %s", r.Header.Get("Authorization"))
		}
		sizes[strings.TrimPrefix(r.Path, "/"+bucket+"/evidence/")] = append(sizes[strings.TrimPrefix(r.Path, "/"+bucket+"/evidence/")], r.Size)
	}
	for key, data := range objects {
		parts := sizes[key]
		if len(parts) < 2 {
			t.Errorf("%s: %d parts, want a multipart upload", key, len(parts))
			continue
		}
		var total int64
		for i, n := range parts {
			total += n
			if n%write != 0 && i < len(parts)-1 {
				t.Errorf("%s: part %d is %d bytes, not a whole number of %d-byte writes", key, i+1, n, write)
			}
			if n < s3store.MinPartSize && i < len(parts)-1 {
				t.Errorf("%s: part %d is %d bytes, under the part size", key, i+1, n)
			}
		}
		if total != int64(len(data)) {
			t.Errorf("%s: parts hold %d bytes, object has %d", key, total, len(data))
		}
		if got := readBack(t, srv.Client(), bucket, "evidence/"+key); !bytes.Equal(got, data) {
			t.Errorf("%s: bytes read back differ", key)
		}
	}
}

// TestS3Sweep: the startup sweep aborts the multipart uploads a crashed
// collector left behind, except those it still tracks, those started
// after it, and anything outside the store's prefix and key layout.
func TestS3Sweep(t *testing.T) {
	t.Parallel()
	srv := s3test.Start(t)
	client := srv.Client()
	bucket := srv.Bucket(t, false)
	cfg := testConfig(srv.Endpoint, bucket)
	s := newStore(t, srv, cfg)
	start := func(key string) []byte {
		w, err := s.Create(t.Context(), key, store.CreateOptions{ExpectedSize: -1})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := w.Write(randBytes(1, s3store.MinPartSize+1)); err != nil {
			t.Fatal(err)
		}
		state, _, err := w.(store.ResumableWriter).Checkpoint(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		return state // the writer is dropped: a crash
	}
	start("c/a/x/crashed-1")
	start("c/a/x/crashed-2")
	tracked := start("c/a/x/tracked")
	for _, foreign := range []string{"other-app/upload", "evidence/not/a/key/at/all", "evidence/c/a/x/.hidden"} {
		if _, err := client.CreateMultipartUpload(t.Context(), &s3api.CreateMultipartUploadInput{Bucket: &bucket, Key: aws.String(foreign)}); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(1100 * time.Millisecond) // S3 times have a one-second resolution
	cutoff := time.Now()
	time.Sleep(1100 * time.Millisecond)
	late := start("c/a/x/started-after-the-cutoff")

	s2 := newStore(t, srv, cfg) // the restarted collector
	n, err := s2.Sweep(t.Context(), [][]byte{tracked}, cutoff)
	if err != nil {
		t.Fatal(err)
	}
	if n != 2 {
		t.Errorf("swept %d uploads, want 2", n)
	}
	got := uploads(t, client, bucket)
	slices.Sort(got)
	want := []string{"evidence/c/a/x/.hidden", "evidence/c/a/x/started-after-the-cutoff", "evidence/c/a/x/tracked", "evidence/not/a/key/at/all", "other-app/upload"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("uploads left (-want +got):\n%s", diff)
	}
	if _, _, err := s2.Resume(t.Context(), "c/a/x/tracked", tracked); err != nil {
		t.Errorf("Resume of a tracked upload after the sweep: %v", err)
	}
	if _, _, err := s2.Resume(t.Context(), "c/a/x/started-after-the-cutoff", late); err != nil {
		t.Errorf("Resume of a late upload after the sweep: %v", err)
	}
	if _, err := s2.Sweep(t.Context(), [][]byte{[]byte("garbage")}, cutoff); err == nil {
		t.Error("Sweep with an unparsable state succeeded")
	}
	id, err := s3store.UploadID(tracked)
	if err != nil || id == "" {
		t.Errorf("UploadID = %q, %v", id, err)
	}
}

// TestS3SignPayload: with sign_payload, parts are signed with the SHA-256
// the store computed (and the SDK does not hash them again), for servers
// that do not verify checksum headers; a part altered in transit is then
// refused by the signature check as well.
func TestS3SignPayload(t *testing.T) {
	t.Parallel()
	srv := s3test.Start(t)
	bucket := srv.Bucket(t, false)
	proxy := s3test.NewProxy(t, srv.Endpoint)
	cfg := testConfig(proxy.URL, bucket)
	cfg.SignPayload = true
	cfg.MaxAttempts = 2
	s := newStore(t, srv, cfg)
	data := randBytes(9, s3store.MinPartSize+100)
	if _, err := put(t.Context(), s, "c/a/x/signed", data, 1<<20); err != nil {
		t.Fatal(err)
	}
	parts := 0
	for _, r := range proxy.Requests() {
		if r.Op() != "UploadPart" {
			continue
		}
		parts++
		cs, _ := base64.StdEncoding.DecodeString(r.Header.Get("X-Amz-Checksum-Sha256"))
		if got := r.Header.Get("X-Amz-Content-Sha256"); got != hex.EncodeToString(cs) {
			t.Errorf("part signed with payload hash %q, checksum is %x", got, cs)
		}
	}
	if parts != 2 {
		t.Errorf("%d parts, want 2", parts)
	}
	proxy.SetFaults(always(s3test.Fault{Kind: s3test.Corrupt, After: 1000}, "UploadPart"))
	_, err := put(t.Context(), s, "c/a/x/altered", data, 1<<20)
	if err == nil {
		t.Fatal("a part altered in transit was accepted")
	}
	t.Logf("refused: %v", err)
	if left := uploads(t, srv.Client(), bucket); len(left) != 0 {
		t.Errorf("uploads left: %v", left)
	}
}
