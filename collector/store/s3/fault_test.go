package s3_test

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	s3api "github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/custodyhq/custody/collector/store"
	s3store "github.com/custodyhq/custody/collector/store/s3"
	"github.com/custodyhq/custody/collector/store/s3/s3test"
)

// firstAttempts injects f into the first n attempts of each request of the
// given operations (a part is identified by its upload and number).
func firstAttempts(n int, f s3test.Fault, ops ...string) func(s3test.Request) s3test.Fault {
	var mu sync.Mutex
	seen := map[string]int{}
	return func(r s3test.Request) s3test.Fault {
		op := r.Op()
		for _, o := range ops {
			if o != op {
				continue
			}
			id := fmt.Sprint(op, r.Path, r.Query["uploadId"], r.Query["partNumber"])
			mu.Lock()
			defer mu.Unlock()
			seen[id]++
			if seen[id] <= n {
				ff := f
				if ff.After < 0 { // half of the body
					ff.After = r.Size / 2
				}
				return ff
			}
		}
		return s3test.Fault{}
	}
}

func always(f s3test.Fault, op string) func(s3test.Request) s3test.Fault {
	return firstAttempts(1<<30, f, op)
}

// TestS3Faults puts a TCP proxy between the store and the server. An
// upload under transient faults completes with identical bytes; under
// faults that outlast the retries it fails with an error naming the cause,
// its multipart upload is aborted, and no object appears at the key.
func TestS3Faults(t *testing.T) {
	t.Parallel()
	srv := s3test.Start(t)
	client := srv.Client()
	size := 2*s3store.MinPartSize + 4321
	for _, tc := range []struct {
		name    string
		decide  func(s3test.Request) s3test.Fault
		kind    s3test.FaultKind
		size    int
		wantErr string // "" if the upload must complete
	}{
		{name: "slowdown-first-attempts", decide: firstAttempts(2, s3test.Fault{Kind: s3test.SlowDown},
			"CreateMultipartUpload", "UploadPart", "CompleteMultipartUpload"), kind: s3test.SlowDown},
		{name: "slowdown-single-put", decide: firstAttempts(2, s3test.Fault{Kind: s3test.SlowDown}, "PutObject"),
			kind: s3test.SlowDown, size: 100 << 10},
		{name: "internal-error", decide: firstAttempts(1, s3test.Fault{Kind: s3test.InternalError}, "UploadPart", "CompleteMultipartUpload"),
			kind: s3test.InternalError},
		{name: "reset-mid-part", decide: firstAttempts(1, s3test.Fault{Kind: s3test.Reset, After: -1}, "UploadPart"), kind: s3test.Reset},
		{name: "reset-before-body", decide: firstAttempts(1, s3test.Fault{Kind: s3test.Reset}, "UploadPart", "CompleteMultipartUpload"), kind: s3test.Reset},
		{name: "stall-mid-part", decide: firstAttempts(1, s3test.Fault{Kind: s3test.Stall, After: 1 << 20, For: 20 * time.Second}, "UploadPart"),
			kind: s3test.Stall},
		{name: "stall-before-response", decide: firstAttempts(1, s3test.Fault{Kind: s3test.Stall, After: 1 << 30, For: 20 * time.Second}, "CompleteMultipartUpload"),
			kind: s3test.Stall},
		// The server completed the upload but the answer was lost: the
		// retried Complete finds the object, and it is ours.
		{name: "complete-response-lost", decide: firstAttempts(1, s3test.Fault{Kind: s3test.DropResponse}, "CompleteMultipartUpload"),
			kind: s3test.DropResponse},
		// The server started the upload but the answer was lost: the
		// retried Create starts a second one, and the first, which nothing
		// would ever complete or abort, must not be left behind.
		{name: "create-response-lost", decide: firstAttempts(1, s3test.Fault{Kind: s3test.DropResponse}, "CreateMultipartUpload"),
			kind: s3test.DropResponse},
		{name: "create-response-stalled", decide: firstAttempts(2, s3test.Fault{Kind: s3test.Stall, After: 1 << 30, For: 20 * time.Second}, "CreateMultipartUpload"),
			kind: s3test.Stall},
		{name: "put-response-lost", decide: firstAttempts(1, s3test.Fault{Kind: s3test.DropResponse}, "PutObject"),
			kind: s3test.DropResponse, size: 1000},
		{name: "part-response-lost", decide: firstAttempts(1, s3test.Fault{Kind: s3test.DropResponse}, "UploadPart"),
			kind: s3test.DropResponse},

		// A part altered in transit is refused by S3 (its SHA-256 does
		// not match) and sent again.
		{name: "corrupt-part", decide: firstAttempts(1, s3test.Fault{Kind: s3test.Corrupt, After: -1}, "UploadPart"), kind: s3test.Corrupt},
		{name: "corrupt-single-put", decide: firstAttempts(1, s3test.Fault{Kind: s3test.Corrupt, After: 10}, "PutObject"),
			kind: s3test.Corrupt, size: 1000},
		{name: "corrupt-forever", decide: always(s3test.Fault{Kind: s3test.Corrupt, After: -1}, "UploadPart"),
			kind: s3test.Corrupt, wantErr: "BadDigest"},

		{name: "slowdown-forever", decide: always(s3test.Fault{Kind: s3test.SlowDown}, "UploadPart"),
			kind: s3test.SlowDown, wantErr: "SlowDown"},
		{name: "reset-forever", decide: always(s3test.Fault{Kind: s3test.Reset, After: -1}, "UploadPart"),
			kind: s3test.Reset, wantErr: "part"},
		{name: "stall-forever", decide: always(s3test.Fault{Kind: s3test.Stall, After: 1 << 20, For: 20 * time.Second}, "UploadPart"),
			kind: s3test.Stall, wantErr: "connection stalled: no byte moved for 1s"},
		{name: "complete-fails", decide: always(s3test.Fault{Kind: s3test.InternalError}, "CompleteMultipartUpload"),
			kind: s3test.InternalError, wantErr: "InternalError"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			bucket := srv.Bucket(t, false)
			proxy := s3test.NewProxy(t, srv.Endpoint)
			cfg := testConfig(proxy.URL, bucket)
			cfg.MaxAttempts, cfg.MaxBackoff, cfg.StallTimeout = 4, 50*time.Millisecond, time.Second
			s := newStore(t, srv, cfg)
			proxy.SetFaults(tc.decide)
			n := size
			if tc.size != 0 {
				n = tc.size
			}
			data := randBytes(uint64(len(tc.name)), n)
			key := "IR-1/agent-1/col-1/" + tc.name
			obj := "evidence/" + key

			start := time.Now()
			w, err := s.Create(t.Context(), key, store.CreateOptions{ExpectedSize: int64(n)})
			if err != nil {
				t.Fatal(err)
			}
			var info store.Info
			for rest := data; len(rest) > 0 && err == nil; {
				c := min(256<<10, len(rest))
				_, err = w.Write(rest[:c])
				rest = rest[c:]
			}
			if err == nil {
				info, err = w.Commit(t.Context(), int64(n), sum(data))
			}
			abortErr := w.Abort(t.Context())
			elapsed := time.Since(start)
			if proxy.Injected(tc.kind) == 0 {
				t.Fatalf("no %s fault was injected", tc.kind)
			}

			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("upload under transient %s faults failed: %v", tc.kind, err)
				}
				if got := readBack(t, client, bucket, obj); !bytes.Equal(got, data) {
					t.Fatalf("stored %d bytes sha256 %x, sent %d bytes sha256 %x", len(got), sum(got), len(data), sum(data))
				}
				if info.Size != int64(n) || info.SHA256 != fmt.Sprintf("%x", sum(data)) {
					t.Errorf("Commit Info = %+v", info)
				}
				stat, err := s.Stat(t.Context(), key)
				if err != nil || stat.SHA256 != info.SHA256 {
					t.Errorf("Stat = %+v, %v; want sha256 %s", stat, err, info.SHA256)
				}
				if tc.kind == s3test.Stall && elapsed > 15*time.Second {
					t.Errorf("took %s: the stall was waited out, not detected", elapsed)
				}
			} else {
				if err == nil {
					t.Fatalf("upload under persistent %s faults succeeded", tc.kind)
				}
				if !strings.Contains(err.Error(), tc.wantErr) {
					t.Errorf("error %q does not say %q", err, tc.wantErr)
				}
				t.Logf("failed as it should: %v", err)
				_, herr := client.HeadObject(t.Context(), &s3api.HeadObjectInput{Bucket: &bucket, Key: aws.String(obj)})
				if herr == nil {
					t.Error("a failed upload left an object at its key")
				}
				if _, err := s.Stat(t.Context(), key); !errors.Is(err, store.ErrNotFound) {
					t.Errorf("Stat after a failed upload = %v, want ErrNotFound", err)
				}
			}
			if abortErr != nil {
				t.Errorf("Abort: %v", abortErr)
			}
			if left := uploads(t, client, bucket); len(left) != 0 {
				t.Errorf("multipart uploads left behind: %v", left)
			}
		})
	}
}
