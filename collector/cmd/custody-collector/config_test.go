package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	s3store "github.com/custodyhq/custody/collector/store/s3"
)

func TestLoadConfig(t *testing.T) {
	for _, tc := range []struct {
		file string
		want fileConfig
	}{
		{"fs.yaml", fileConfig{Store: &storeConfig{Type: "fs", Dir: "/var/lib/custody/evidence"}}},
		{"s3.yaml", fileConfig{Store: &storeConfig{
			Type: "s3", Bucket: "acme-ir-evidence", Prefix: "custody", Region: "eu-west-1",
			KMSKeyID:   "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab",
			ObjectLock: &objectLockConfig{Mode: "COMPLIANCE", RetainDays: 2555},
			PartSize:   16 << 20, MaxPartsInFlight: 8, MaxAttempts: 12, MaxBackoff: 30 * time.Second, StallTimeout: 45 * time.Second,
		}}},
		{"s3-compatible.yaml", fileConfig{Store: &storeConfig{Type: "s3", Bucket: "evidence", Endpoint: "http://10.0.0.5:7070", PathStyle: true, SignPayload: true}}},
	} {
		t.Run(tc.file, func(t *testing.T) {
			got, err := loadConfig(filepath.Join("testdata", tc.file))
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("config (-want +got):\n%s", diff)
			}
		})
	}
}

func TestLoadConfigS3(t *testing.T) {
	cfg, err := loadConfig(filepath.Join("testdata", "s3.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	want := s3store.Config{
		Bucket: "acme-ir-evidence", Prefix: "custody", Region: "eu-west-1",
		KMSKeyID:   "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab",
		ObjectLock: s3store.ObjectLock{Mode: "COMPLIANCE", RetainDays: 2555},
		PartSize:   16 << 20, MaxPartsInFlight: 8, MaxAttempts: 12, MaxBackoff: 30 * time.Second, StallTimeout: 45 * time.Second,
	}
	if diff := cmp.Diff(want, cfg.Store.s3()); diff != "" {
		t.Errorf("s3 store config (-want +got):\n%s", diff)
	}
}

func TestLoadConfigErrors(t *testing.T) {
	for _, tc := range []struct {
		name, yaml, wantErr string
	}{
		{"unknown-top-level", "stor:\n  type: fs\n", "field stor not found"},
		{"unknown-store-key", "store:\n  type: s3\n  bucket: b\n  retention_days: 30\n", "field retention_days not found"},
		{"unknown-lock-key", "store:\n  type: s3\n  bucket: b\n  object_lock: {mode: COMPLIANCE, days: 30}\n", "field days not found"},
		{"misspelt-type", "store:\n  type: S3\n  bucket: b\n", `type "S3"`},
		{"s3-key-on-fs", "store:\n  type: fs\n  bucket: b\n", "bucket is an s3 setting"},
		{"fs-key-on-s3", "store:\n  type: s3\n  bucket: b\n  dir: /x\n", "dir is an fs setting"},
		{"default-type-is-fs", "store:\n  kms_key_id: k\n", "kms_key_id is an s3 setting"},
		{"no-bucket", "store:\n  type: s3\n", "bucket is required"},
		{"bad-mode", "store:\n  type: s3\n  bucket: b\n  object_lock: {mode: LOCKED, retain_days: 1}\n", "GOVERNANCE or COMPLIANCE"},
		{"mode-without-days", "store:\n  type: s3\n  bucket: b\n  object_lock: {mode: COMPLIANCE}\n", "retain_days"},
		{"small-part", "store:\n  type: s3\n  bucket: b\n  part_size: 1MiB\n", "part_size"},
		{"bad-size", "store:\n  type: s3\n  bucket: b\n  part_size: 16 megs\n", `size "16 megs"`},
		{"bad-duration", "store:\n  type: s3\n  bucket: b\n  max_backoff: soon\n", "line 4: cannot unmarshal !!str `soon` into time.Duration"},
		{"not-yaml", "store: [\n", "config"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "c.yaml")
			if err := os.WriteFile(p, []byte(tc.yaml), 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := loadConfig(p)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("loadConfig = %v, want an error containing %q", err, tc.wantErr)
			}
		})
	}
}

func TestLoadConfigEmpty(t *testing.T) {
	p := filepath.Join(t.TempDir(), "empty.yaml")
	if err := os.WriteFile(p, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := loadConfig(p)
	if err != nil || cfg.Store != nil {
		t.Fatalf("empty config = %+v, %v", cfg, err)
	}
	if _, err := loadConfig(filepath.Join(t.TempDir(), "missing.yaml")); err == nil {
		t.Error("a missing config file is not an error")
	}
}

func TestByteSize(t *testing.T) {
	for in, want := range map[string]int64{"5242880": 5 << 20, "16MiB": 16 << 20, "512 KiB": 512 << 10, "1GiB": 1 << 30, "100B": 100} {
		p := filepath.Join(t.TempDir(), "c.yaml")
		os.WriteFile(p, []byte("store:\n  type: s3\n  bucket: b\n  part_size: "+in+"\n"), 0o600)
		cfg, err := loadConfig(p)
		if in == "512 KiB" || in == "100B" {
			// Parsed, then refused as a part size.
			if err == nil || !strings.Contains(err.Error(), "part_size") {
				t.Errorf("%s: %v, want a part_size error", in, err)
			}
			continue
		}
		if err != nil {
			t.Fatalf("%s: %v", in, err)
		}
		if got := int64(cfg.Store.PartSize); got != want {
			t.Errorf("%s = %d, want %d", in, got, want)
		}
	}
}

// TestServeConfigConflicts: --evidence and a store section both choosing
// the store is refused rather than resolved silently.
func TestServeConfigConflicts(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "c.yaml")
	if err := os.WriteFile(p, []byte("store:\n  type: fs\n  dir: "+filepath.Join(dir, "ev")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	err := run(t.Context(), []string{"serve", "--config", p, "--evidence", filepath.Join(dir, "other"), "--data-dir", dir})
	if err == nil || !strings.Contains(err.Error(), "--evidence") {
		t.Fatalf("serve = %v, want a conflict error", err)
	}
}
