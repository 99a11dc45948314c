package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/custodyhq/custody/collector/store"
	s3store "github.com/custodyhq/custody/collector/store/s3"
)

// fileConfig is the collector's configuration file (serve --config).
// Unknown keys are an error: a misspelt retention setting must not
// silently leave evidence unlocked.
type fileConfig struct {
	Store *storeConfig `yaml:"store"`
}

// storeConfig selects and configures the evidence store. Keys belong to
// one type; a key of the other type is an error.
type storeConfig struct {
	Type string `yaml:"type"` // fs (default) or s3

	// fs
	Dir string `yaml:"dir"`

	// s3
	Bucket           string            `yaml:"bucket"`
	Prefix           string            `yaml:"prefix"`
	Region           string            `yaml:"region"`
	Endpoint         string            `yaml:"endpoint"`
	PathStyle        bool              `yaml:"path_style"`
	KMSKeyID         string            `yaml:"kms_key_id"`
	ObjectLock       *objectLockConfig `yaml:"object_lock"`
	PartSize         byteSize          `yaml:"part_size"`
	MaxPartsInFlight int               `yaml:"max_parts_in_flight"`
	MaxAttempts      int               `yaml:"max_attempts"`
	MaxBackoff       time.Duration     `yaml:"max_backoff"`
	StallTimeout     time.Duration     `yaml:"stall_timeout"`
	SignPayload      bool              `yaml:"sign_payload"`
}

type objectLockConfig struct {
	Mode       string `yaml:"mode"`
	RetainDays int    `yaml:"retain_days"`
	LegalHold  bool   `yaml:"legal_hold"`
}

// byteSize is a size in bytes, written as a number or with a binary unit:
// 16777216, 16MiB, 512KiB, 1GiB.
type byteSize int64

func (b *byteSize) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return fmt.Errorf("line %d: want a size such as 16MiB", n.Line)
	}
	s := strings.TrimSpace(n.Value)
	mult := int64(1)
	for _, u := range []struct {
		suffix string
		mult   int64
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"B", 1}} {
		if rest, ok := strings.CutSuffix(s, u.suffix); ok {
			s, mult = strings.TrimSpace(rest), u.mult
			break
		}
	}
	v, err := strconv.ParseInt(s, 10, 64)
	if err != nil || v < 0 {
		return fmt.Errorf("line %d: size %q: want a number of bytes or KiB, MiB, GiB", n.Line, n.Value)
	}
	*b = byteSize(v * mult)
	return nil
}

// loadConfig reads a configuration file. An empty file is an empty
// configuration.
func loadConfig(path string) (fileConfig, error) {
	var cfg fileConfig
	f, err := os.Open(path)
	if err != nil {
		return cfg, fmt.Errorf("config: %w", err)
	}
	defer f.Close()
	dec := yaml.NewDecoder(f)
	dec.KnownFields(true)
	if err := dec.Decode(&cfg); err != nil && !errors.Is(err, io.EOF) {
		return cfg, fmt.Errorf("config %s: %w", path, err)
	}
	if cfg.Store != nil {
		if err := cfg.Store.validate(); err != nil {
			return cfg, fmt.Errorf("config %s: store: %w", path, err)
		}
	}
	return cfg, nil
}

func (c *storeConfig) validate() error {
	if c.Type == "" {
		c.Type = "fs"
	}
	s3Keys := map[string]bool{
		"bucket": c.Bucket != "", "prefix": c.Prefix != "", "region": c.Region != "", "endpoint": c.Endpoint != "",
		"path_style": c.PathStyle, "kms_key_id": c.KMSKeyID != "", "object_lock": c.ObjectLock != nil, "part_size": c.PartSize != 0,
		"max_parts_in_flight": c.MaxPartsInFlight != 0, "max_attempts": c.MaxAttempts != 0, "max_backoff": c.MaxBackoff != 0,
		"stall_timeout": c.StallTimeout != 0, "sign_payload": c.SignPayload,
	}
	switch c.Type {
	case "fs":
		for _, k := range sortedKeys(s3Keys) {
			if s3Keys[k] {
				return fmt.Errorf("%s is an s3 setting, but type is fs", k)
			}
		}
		return nil
	case "s3":
		if c.Dir != "" {
			return errors.New("dir is an fs setting, but type is s3")
		}
		return c.s3().Validate()
	}
	return fmt.Errorf("type %q: want fs or s3", c.Type)
}

func sortedKeys(m map[string]bool) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

func (c *storeConfig) s3() s3store.Config {
	cfg := s3store.Config{
		Bucket: c.Bucket, Prefix: c.Prefix, Region: c.Region, Endpoint: c.Endpoint, PathStyle: c.PathStyle,
		KMSKeyID: c.KMSKeyID, PartSize: int64(c.PartSize), MaxPartsInFlight: c.MaxPartsInFlight,
		MaxAttempts: c.MaxAttempts, MaxBackoff: c.MaxBackoff, StallTimeout: c.StallTimeout, SignPayload: c.SignPayload,
	}
	if ol := c.ObjectLock; ol != nil {
		cfg.ObjectLock = s3store.ObjectLock{Mode: ol.Mode, RetainDays: ol.RetainDays, LegalHold: ol.LegalHold}
	}
	return cfg
}

// openStore opens the configured evidence store (the fs store in
// defaultDir if none is configured) and returns it with a description for
// the log.
func openStore(ctx context.Context, c *storeConfig, defaultDir string, log *slog.Logger) (store.Store, string, error) {
	if c == nil {
		c = &storeConfig{Type: "fs"}
	}
	switch c.Type {
	case "s3":
		s, err := s3store.New(ctx, c.s3(), log)
		if err != nil {
			return nil, "", err
		}
		desc := "s3://" + c.Bucket
		if c.Prefix != "" {
			desc += "/" + c.Prefix
		}
		return s, desc, nil
	default:
		dir := c.Dir
		if dir == "" {
			dir = defaultDir
		}
		s, err := store.NewFS(dir)
		if err != nil {
			return nil, "", err
		}
		return s, s.Dir(), nil
	}
}
