// Package s3 is the evidence store in an S3 bucket (or an S3-compatible
// server): the store AWS responders use, usually with Object Lock and
// SSE-KMS on the bucket.
//
// Objects are streamed with multipart uploads whose parts are filled with
// whole Write calls, each part sent with its SHA-256, and completed only if
// no object exists at the key (If-None-Match), with the composite SHA-256
// of the parts: a failed or refused upload is aborted and never leaves a
// complete-looking object. Part buffers are bounded store-wide
// (Config.MaxPartsInFlight), so a slow bucket slows the agents' streams
// instead of growing the collector's memory.
package s3

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"path"
	"slices"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/ratelimit"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	"github.com/aws/aws-sdk-go-v2/config"
	s3api "github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/aws/smithy-go"
	"github.com/aws/smithy-go/middleware"
	"golang.org/x/sync/semaphore"

	"github.com/custodyhq/custody/collector/store"
)

// ErrObjectLock means retention is configured but the bucket cannot
// enforce it.
var ErrObjectLock = errors.New("s3: bucket does not have Object Lock enabled")

// Store is a store.Store in an S3 bucket.
type Store struct {
	cfg    Config
	client *s3api.Client
	log    *slog.Logger
	// budget bounds the bytes of part buffers across all writers.
	budget    *semaphore.Weighted
	budgetMax int64
	blocks    *blockPool
	now       func() time.Time
}

var (
	_ store.Store     = (*Store)(nil)
	_ store.Resumable = (*Store)(nil)
	_ store.Sweeper   = (*Store)(nil)
)

// New connects to the bucket and checks, before any evidence is sent, that
// it exists, is reachable with the credentials of the standard chain, and
// has Object Lock enabled if retention or legal hold is configured. optFns
// adjust the S3 client after the configuration is applied (tests use them
// for static credentials).
func New(ctx context.Context, cfg Config, log *slog.Logger, optFns ...func(*s3api.Options)) (*Store, error) {
	cfg.withDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	loadOpts := []func(*config.LoadOptions) error{
		config.WithHTTPClient(newHTTPClient(cfg.StallTimeout)),
		config.WithRetryer(func() aws.Retryer {
			r := retry.NewStandard(func(o *retry.StandardOptions) {
				o.MaxAttempts = cfg.MaxAttempts
				o.MaxBackoff = cfg.MaxBackoff
				o.Backoff = retry.NewExponentialJitterBackoff(cfg.MaxBackoff)
				// The client-side retry quota fails fast once a burst of
				// throttling used it up; evidence uploads would rather
				// wait out a throttling storm with backoff than fail.
				o.RateLimiter = ratelimit.None
			})
			// A body that arrived altered is worth sending again: the
			// store keeps every part in memory until S3 accepts it.
			return retry.AddWithErrorCodes(r, "BadDigest", "XAmzContentSHA256Mismatch")
		}),
	}
	if cfg.Region != "" {
		loadOpts = append(loadOpts, config.WithRegion(cfg.Region))
	}
	awsCfg, err := config.LoadDefaultConfig(ctx, loadOpts...)
	if err != nil {
		return nil, fmt.Errorf("s3: AWS configuration: %w", err)
	}
	if awsCfg.Region == "" {
		if cfg.Endpoint == "" {
			return nil, errors.New("s3: no region: set region in the store configuration or AWS_REGION")
		}
		awsCfg.Region = "us-east-1" // S3-compatible servers sign with any region
	}
	client := s3api.NewFromConfig(awsCfg, func(o *s3api.Options) {
		if cfg.Endpoint != "" {
			o.BaseEndpoint = aws.String(cfg.Endpoint)
		}
		o.UsePathStyle = cfg.PathStyle
		// Reading a multipart object back (Stat, Open) cannot check its
		// composite checksum; the SDK would log a warning every time.
		o.DisableLogOutputChecksumValidationSkipped = true
		for _, fn := range optFns {
			fn(o)
		}
	})
	s := &Store{
		cfg: cfg, client: client, log: log.With("component", "store", "store", "s3", "bucket", cfg.Bucket),
		budgetMax: int64(cfg.MaxPartsInFlight) * cfg.PartSize, blocks: newBlockPool(), now: time.Now,
	}
	s.budget = semaphore.NewWeighted(s.budgetMax)
	if err := s.check(ctx); err != nil {
		return nil, err
	}
	return s, nil
}

// check is the startup check of the bucket.
func (s *Store) check(ctx context.Context) error {
	if _, err := s.client.HeadBucket(ctx, &s3api.HeadBucketInput{Bucket: &s.cfg.Bucket}); err != nil {
		return fmt.Errorf("s3: bucket %q: %w", s.cfg.Bucket, err)
	}
	if !s.cfg.ObjectLock.Enabled() {
		return nil
	}
	out, err := s.client.GetObjectLockConfiguration(ctx, &s3api.GetObjectLockConfigurationInput{Bucket: &s.cfg.Bucket})
	if code(err) == "ObjectLockConfigurationNotFoundError" ||
		err == nil && (out.ObjectLockConfiguration == nil || out.ObjectLockConfiguration.ObjectLockEnabled != types.ObjectLockEnabledEnabled) {
		return fmt.Errorf("%w: bucket %q, but object_lock is configured (%s); evidence would not be locked. "+
			"Use a bucket created with Object Lock, or remove object_lock from the configuration", ErrObjectLock, s.cfg.Bucket, s.lockSummary())
	}
	if err != nil {
		return fmt.Errorf("s3: bucket %q: reading the Object Lock configuration: %w", s.cfg.Bucket, err)
	}
	return nil
}

func (s *Store) lockSummary() string {
	ol := s.cfg.ObjectLock
	var parts []string
	if ol.Mode != "" {
		parts = append(parts, fmt.Sprintf("mode %s for %d days", ol.Mode, ol.RetainDays))
	}
	if ol.LegalHold {
		parts = append(parts, "legal hold")
	}
	return strings.Join(parts, ", ")
}

// Bucket returns the bucket's name.
func (s *Store) Bucket() string { return s.cfg.Bucket }

// Client returns the S3 client the store uses.
func (s *Store) Client() *s3api.Client { return s.client }

// objectKey is the bucket key of a store key.
func (s *Store) objectKey(key string) string {
	if s.cfg.Prefix == "" {
		return key
	}
	return s.cfg.Prefix + "/" + key
}

func (s *Store) location(key string) string {
	return "s3://" + s.cfg.Bucket + "/" + s.objectKey(key)
}

// code is the S3 error code of err ("NoSuchKey", "SlowDown"), or "".
func code(err error) string {
	var ae smithy.APIError
	if errors.As(err, &ae) {
		return ae.ErrorCode()
	}
	return ""
}

func isNotFound(err error) bool {
	switch code(err) {
	case "NoSuchKey", "NotFound", "NoSuchVersion":
		return true
	}
	return false
}

// Stat implements store.Store. An object uploaded in one request carries
// its full SHA-256 as a checksum S3 verified on upload; a multipart
// object's checksum is of its parts, so its SHA-256 comes from reading it,
// as fs does for every object.
func (s *Store) Stat(ctx context.Context, key string) (store.Info, error) {
	if err := ctx.Err(); err != nil {
		return store.Info{}, err
	}
	if err := store.ValidateKey(key); err != nil {
		return store.Info{}, err
	}
	return s.stat(ctx, key, "")
}

func (s *Store) stat(ctx context.Context, key, versionID string) (store.Info, error) {
	in := &s3api.HeadObjectInput{Bucket: &s.cfg.Bucket, Key: aws.String(s.objectKey(key)), ChecksumMode: types.ChecksumModeEnabled}
	if versionID != "" {
		in.VersionId = &versionID
	}
	head, err := s.client.HeadObject(ctx, in)
	if isNotFound(err) {
		return store.Info{}, fmt.Errorf("%w: %s", store.ErrNotFound, key)
	}
	if err != nil {
		return store.Info{}, fmt.Errorf("s3: stat %s: %w", key, err)
	}
	info := store.Info{
		Key: key, Size: aws.ToInt64(head.ContentLength), Location: s.location(key),
		VersionID: aws.ToString(head.VersionId), ETag: unquote(aws.ToString(head.ETag)), ModTime: aws.ToTime(head.LastModified),
	}
	if sum, ok := fullObjectSHA256(head.ChecksumSHA256, head.ChecksumType); ok {
		info.SHA256 = hex.EncodeToString(sum)
		return info, nil
	}
	get := &s3api.GetObjectInput{Bucket: &s.cfg.Bucket, Key: aws.String(s.objectKey(key))}
	if info.VersionID != "" {
		get.VersionId = &info.VersionID
	}
	obj, err := s.client.GetObject(ctx, get)
	if err != nil {
		return store.Info{}, fmt.Errorf("s3: stat %s: read to hash: %w", key, err)
	}
	defer obj.Body.Close()
	h := sha256.New()
	n, err := io.Copy(h, obj.Body)
	if err != nil {
		return store.Info{}, fmt.Errorf("s3: stat %s: read to hash: %w", key, err)
	}
	if n != info.Size {
		return store.Info{}, fmt.Errorf("s3: stat %s: read %d bytes, object has %d", key, n, info.Size)
	}
	info.SHA256 = hex.EncodeToString(h.Sum(nil))
	return info, nil
}

// fullObjectSHA256 decodes a checksum that covers the whole object.
func fullObjectSHA256(b64 *string, typ types.ChecksumType) ([]byte, bool) {
	if b64 == nil || typ == types.ChecksumTypeComposite || strings.Contains(*b64, "-") {
		return nil, false
	}
	sum, err := base64.StdEncoding.DecodeString(*b64)
	if err != nil || len(sum) != sha256.Size {
		return nil, false
	}
	return sum, true
}

func unquote(etag string) string { return strings.Trim(etag, `"`) }

// Open implements store.Store.
func (s *Store) Open(ctx context.Context, key string) (io.ReadCloser, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := store.ValidateKey(key); err != nil {
		return nil, err
	}
	obj, err := s.client.GetObject(ctx, &s3api.GetObjectInput{Bucket: &s.cfg.Bucket, Key: aws.String(s.objectKey(key))})
	if isNotFound(err) {
		return nil, fmt.Errorf("%w: %s", store.ErrNotFound, key)
	}
	if err != nil {
		return nil, fmt.Errorf("s3: open %s: %w", key, err)
	}
	return obj.Body, nil
}

// List implements store.Store. Objects under the prefix that are not valid
// keys (written by something else) are skipped, as fs skips foreign files.
func (s *Store) List(ctx context.Context, prefix string) ([]store.Info, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := store.ValidatePrefix(prefix); err != nil {
		return nil, err
	}
	listPrefix := s.cfg.Prefix
	if prefix != "" {
		listPrefix = s.objectKey(prefix)
	}
	if listPrefix != "" {
		listPrefix += "/"
	}
	infos := []store.Info{}
	pages := s3api.NewListObjectsV2Paginator(s.client, &s3api.ListObjectsV2Input{Bucket: &s.cfg.Bucket, Prefix: &listPrefix})
	for pages.HasMorePages() {
		page, err := pages.NextPage(ctx)
		if err != nil {
			return nil, fmt.Errorf("s3: list %q: %w", prefix, err)
		}
		for _, o := range page.Contents {
			key := aws.ToString(o.Key)
			if s.cfg.Prefix != "" {
				key = strings.TrimPrefix(key, s.cfg.Prefix+"/")
			}
			if store.ValidateKey(key) != nil {
				continue
			}
			infos = append(infos, store.Info{
				Key: key, Size: aws.ToInt64(o.Size), Location: s.location(key),
				ETag: unquote(aws.ToString(o.ETag)), ModTime: aws.ToTime(o.LastModified),
			})
		}
	}
	slices.SortFunc(infos, func(a, b store.Info) int { return strings.Compare(a.Key, b.Key) })
	return infos, nil
}

// tags labels an object with where it belongs, so that lifecycle rules,
// IAM conditions and a responder browsing the bucket can select a case's
// evidence. The key layout is <case>/<agent>/<collection>/<file>; the
// artifact is the file name up to its first dot. Caller tags override.
func tags(key string, extra map[string]string) (string, error) {
	segs := strings.Split(key, "/")
	file := path.Base(key)
	artifact, _, _ := strings.Cut(file, ".")
	v := url.Values{}
	v.Set("case", segs[0])
	v.Set("agent", segs[1])
	v.Set("collection", segs[2])
	v.Set("artifact", artifact)
	for k, val := range extra {
		v.Set(k, val)
	}
	if len(v) > 10 {
		return "", fmt.Errorf("s3: %s: %d tags, S3 allows 10", key, len(v))
	}
	for k, vals := range v {
		if len(k) == 0 || len(k) > 128 || len(vals[0]) > 256 {
			return "", fmt.Errorf("s3: %s: tag %q=%q: keys are 1-128 characters, values up to 256", key, k, vals[0])
		}
	}
	return v.Encode(), nil
}

// withPayloadHash sets what a request with a body is signed with: by
// default UNSIGNED-PAYLOAD, the body's integrity resting on its SHA-256
// checksum header, which the signature covers and S3 verifies; with
// SignPayload, the SHA-256 the store already computed, so that the SDK does
// not hash the body again to sign it (it would on plain HTTP endpoints).
func (s *Store) withPayloadHash(sum []byte) func(*s3api.Options) {
	h := "UNSIGNED-PAYLOAD"
	if s.cfg.SignPayload {
		h = hex.EncodeToString(sum)
	}
	return func(o *s3api.Options) {
		o.APIOptions = append(o.APIOptions, func(st *middleware.Stack) error {
			return st.Initialize.Add(middleware.InitializeMiddlewareFunc("custodyPayloadHash",
				func(ctx context.Context, in middleware.InitializeInput, next middleware.InitializeHandler) (middleware.InitializeOutput, middleware.Metadata, error) {
					return next.HandleInitialize(v4.SetPayloadHash(ctx, h), in)
				}), middleware.After)
		})
	}
}

func b64(sum []byte) *string { return aws.String(base64.StdEncoding.EncodeToString(sum)) }
