package s3

import (
	"errors"
	"fmt"
	"strings"
	"time"
)

// S3's multipart limits.
const (
	MinPartSize = 5 << 20
	MaxPartSize = 5 << 30
	MaxParts    = 10000
)

// Defaults for the zero values of Config.
const (
	DefaultPartSize         = 8 << 20
	DefaultMaxPartsInFlight = 8
	DefaultMaxAttempts      = 10
	DefaultMaxBackoff       = 20 * time.Second
	DefaultStallTimeout     = 60 * time.Second
)

// Config is an S3 evidence store's configuration: where the evidence goes
// and which controls protect it. Credentials are not here: they come from
// the SDK's standard chain (environment, shared config, IMDS, ECS task role).
type Config struct {
	Bucket string
	// Prefix is prepended to every key ("evidence" puts objects under
	// evidence/<case>/...). Empty for the bucket's root.
	Prefix string
	// Region may be empty if the standard chain provides one.
	Region string
	// Endpoint and PathStyle are for S3-compatible servers.
	Endpoint  string
	PathStyle bool
	// KMSKeyID turns on SSE-KMS with this key (id, ARN or alias).
	KMSKeyID   string
	ObjectLock ObjectLock
	// PartSize is the smallest multipart part (at least 5 MiB); an artifact
	// whose expected size needs more than 10,000 parts of it gets larger
	// parts.
	PartSize int64
	// MaxPartsInFlight bounds the parts held in memory across all uploads
	// of the store, filling or being sent: part buffers take at most
	// MaxPartsInFlight × PartSize (plus, for each upload, less than one
	// Write by which its part may overshoot). Writers beyond it wait,
	// which is back-pressure on the agents' streams.
	MaxPartsInFlight int
	// MaxAttempts and MaxBackoff configure the SDK's standard retryer:
	// throttling (503 SlowDown), 5xx and connection errors are retried.
	MaxAttempts int
	MaxBackoff  time.Duration
	// StallTimeout fails a request attempt (which the retryer then
	// repeats) when its connection moves no byte in either direction for
	// this long.
	StallTimeout time.Duration
	// SignPayload signs each request's body hash as well as its SHA-256
	// checksum header, for S3-compatible servers that do not verify
	// x-amz-checksum-sha256. S3 verifies the checksum, and the signature
	// covers the header, so by default the body is not hashed a second
	// time by the server (which, on a server sharing the collector's
	// machine, costs the collector a third of its throughput).
	SignPayload bool
}

// ObjectLock is the retention applied to every object.
type ObjectLock struct {
	// Mode is GOVERNANCE or COMPLIANCE; empty for none.
	Mode string
	// RetainDays is how long each object is locked from its upload.
	RetainDays int
	// LegalHold places a legal hold on each object (no expiry).
	LegalHold bool
}

// Enabled reports whether any Object Lock control is configured, which
// makes a bucket without Object Lock a startup error.
func (o ObjectLock) Enabled() bool { return o.Mode != "" || o.RetainDays != 0 || o.LegalHold }

func (c *Config) withDefaults() {
	if c.PartSize == 0 {
		c.PartSize = DefaultPartSize
	}
	if c.MaxPartsInFlight == 0 {
		c.MaxPartsInFlight = DefaultMaxPartsInFlight
	}
	if c.MaxAttempts == 0 {
		c.MaxAttempts = DefaultMaxAttempts
	}
	if c.MaxBackoff == 0 {
		c.MaxBackoff = DefaultMaxBackoff
	}
	if c.StallTimeout == 0 {
		c.StallTimeout = DefaultStallTimeout
	}
	c.ObjectLock.Mode = strings.ToUpper(c.ObjectLock.Mode)
}

// Validate checks the configuration after defaults; every problem is
// reported, not just the first.
func (c Config) Validate() error {
	c.withDefaults()
	var errs []error
	if c.Bucket == "" {
		errs = append(errs, errors.New("bucket is required"))
	}
	if c.Prefix != "" {
		for i, seg := range strings.Split(c.Prefix, "/") {
			if seg == "" || seg == "." || seg == ".." {
				errs = append(errs, fmt.Errorf("prefix %q: segment %d is %q (no leading, trailing or double slashes, no . or ..)", c.Prefix, i+1, seg))
				break
			}
		}
	}
	if c.PartSize < MinPartSize || c.PartSize > MaxPartSize {
		errs = append(errs, fmt.Errorf("part_size %d: must be between %d (5 MiB) and %d (5 GiB)", c.PartSize, MinPartSize, int64(MaxPartSize)))
	}
	if c.MaxPartsInFlight < 1 {
		errs = append(errs, fmt.Errorf("max_parts_in_flight %d: must be at least 1", c.MaxPartsInFlight))
	}
	if c.MaxAttempts < 1 {
		errs = append(errs, fmt.Errorf("max_attempts %d: must be at least 1", c.MaxAttempts))
	}
	if c.MaxBackoff < 0 || c.StallTimeout < 0 {
		errs = append(errs, errors.New("max_backoff and stall_timeout must not be negative"))
	}
	switch ol := c.ObjectLock; {
	case ol.Mode != "" && ol.Mode != "GOVERNANCE" && ol.Mode != "COMPLIANCE":
		errs = append(errs, fmt.Errorf("object_lock.mode %q: want GOVERNANCE or COMPLIANCE", ol.Mode))
	case ol.Mode != "" && ol.RetainDays <= 0:
		errs = append(errs, fmt.Errorf("object_lock.mode %s needs retain_days > 0", ol.Mode))
	case ol.Mode == "" && ol.RetainDays != 0:
		errs = append(errs, errors.New("object_lock.retain_days needs a mode (GOVERNANCE or COMPLIANCE)"))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("s3 store config: %w", err)
	}
	return nil
}
