package s3_test

import (
	"context"
	"io"
	"log/slog"
	"os"
	"testing"
	"time"

	s3api "github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/custodyhq/custody/collector/store"
	s3store "github.com/custodyhq/custody/collector/store/s3"
	"github.com/custodyhq/custody/collector/store/s3/s3test"
	"github.com/custodyhq/custody/collector/store/storetest"
)

func logger() *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// testConfig is a store on srv's bucket, with the minimum part size so
// that the suite's objects span several parts.
func testConfig(endpoint, bucket string) s3store.Config {
	return s3store.Config{
		Bucket: bucket, Prefix: "evidence", Region: s3test.Region, Endpoint: endpoint, PathStyle: true,
		PartSize: s3store.MinPartSize, MaxPartsInFlight: 8, MaxBackoff: 200 * time.Millisecond, StallTimeout: 5 * time.Second,
	}
}

func newStore(t testing.TB, srv *s3test.Server, cfg s3store.Config, opts ...func(*s3api.Options)) *s3store.Store {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := s3store.New(ctx, cfg, logger(), append([]func(*s3api.Options){srv.Options()}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestS3(t *testing.T) {
	t.Parallel()
	srv := s3test.Start(t)
	t.Run("plain", func(t *testing.T) {
		storetest.Run(t, func(t *testing.T) store.Store {
			return newStore(t, srv, testConfig(srv.Endpoint, srv.Bucket(t, false)))
		})
	})
	t.Run("object-lock", func(t *testing.T) {
		storetest.Run(t, func(t *testing.T) store.Store {
			cfg := testConfig(srv.Endpoint, srv.Bucket(t, true))
			cfg.Prefix = ""
			cfg.ObjectLock = s3store.ObjectLock{Mode: "GOVERNANCE", RetainDays: 1, LegalHold: true}
			cfg.KMSKeyID = "alias/custody-evidence"
			return newStore(t, srv, cfg)
		})
	})
}

func TestS3Resumable(t *testing.T) {
	t.Parallel()
	srv := s3test.Start(t)
	storetest.RunResumable(t, storetest.ResumeOptions{Size: 3*s3store.MinPartSize + 12345, Write: 256 << 10},
		func(t *testing.T) (store.Resumable, func(t *testing.T) store.Resumable) {
			cfg := testConfig(srv.Endpoint, srv.Bucket(t, false))
			return newStore(t, srv, cfg), func(t *testing.T) store.Resumable { return newStore(t, srv, cfg) }
		})
}
