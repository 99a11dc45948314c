package manifest

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"hash"
	"io"
	"strings"

	"github.com/klauspost/compress/zstd"

	"github.com/custodyhq/custody/internal/source"
)

// maxWindow bounds the zstd decoder's memory. Agents compress chunks of at
// most 4 MiB raw as single frames, so no honest frame needs more; a stored
// object that asks for more is refused instead of allocated for.
const maxWindow = 8 << 20

// VerifyArtifact streams one stored object and checks it against a: the
// stored size and SHA-256 and, for a zstd artifact decompressed frame by
// frame, the raw size, the agent's raw SHA-256 and (if recorded) the
// collector's. Memory stays bounded whatever the object's size.
//
// Any difference is an ErrMismatch naming the artifact and each differing
// field with the value wanted and the value found. An error reading stored
// (or ctx ending) is returned as is: it says nothing about the evidence.
func VerifyArtifact(ctx context.Context, a Artifact, stored io.Reader) error {
	switch a.Compression {
	case "", CompressionZstd:
	default:
		return fmt.Errorf("%w: artifact %q: compression %q, want zstd or empty", ErrMalformed, a.Name, a.Compression)
	}
	src := source.NewReader(ctx, stored)
	storedSum := &digest{h: sha256.New()}
	tee := io.TeeReader(src, storedSum)

	var (
		rawSum    *digest
		decodeErr error
	)
	if a.Compression == "" {
		if _, err := io.Copy(io.Discard, tee); err != nil {
			return err
		}
		rawSum = storedSum
	} else {
		rawSum = &digest{h: sha256.New()}
		dec, err := zstd.NewReader(tee,
			zstd.WithDecoderMaxWindow(maxWindow),
			// One goroutine reading the stream in order keeps memory
			// bounded and every byte passes through tee exactly once.
			zstd.WithDecoderConcurrency(1),
			zstd.WithDecoderLowmem(true),
		)
		if err != nil {
			if err := src.Err(); err != nil {
				return err
			}
			return fmt.Errorf("manifest: artifact %q: zstd decoder: %w", a.Name, err)
		}
		_, decodeErr = io.Copy(rawSum, dec)
		dec.Close()
		if err := src.Err(); err != nil {
			return err
		}
		// After a decoding error the rest of the object still counts
		// towards the stored size and hash, which are reported too.
		if _, err := io.Copy(io.Discard, tee); err != nil {
			return err
		}
	}

	var diffs []string
	check := func(field string, want, got any) {
		if want != got {
			diffs = append(diffs, fmt.Sprintf("%s: want %v, got %v", field, want, got))
		}
	}
	check("stored_size", a.StoredSize, storedSum.n)
	check("stored_sha256", quoteEmpty(a.StoredSHA256), storedSum.hex())
	if decodeErr != nil {
		diffs = append(diffs, fmt.Sprintf("not a valid zstd stream: %v", decodeErr))
	} else {
		check("raw_size", a.RawSize, rawSum.n)
		check("agent_sha256", quoteEmpty(a.AgentSHA256), rawSum.hex())
		if a.CollectorSHA256 != "" {
			check("collector_sha256", a.CollectorSHA256, rawSum.hex())
		}
	}
	if len(diffs) > 0 {
		return fmt.Errorf("%w: artifact %q: %s", ErrMismatch, a.Name, strings.Join(diffs, "; "))
	}
	return nil
}

// quoteEmpty makes an unrecorded digest visible in a mismatch message.
func quoteEmpty(s string) string {
	if s == "" {
		return `""`
	}
	return s
}

type digest struct {
	h hash.Hash
	n int64
}

func (d *digest) Write(p []byte) (int, error) {
	d.n += int64(len(p))
	return d.h.Write(p)
}

func (d *digest) hex() string { return hex.EncodeToString(d.h.Sum(nil)) }
