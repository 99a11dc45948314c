package main

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/custodyhq/custody/internal/manifest"
	"github.com/custodyhq/custody/internal/pki"
	custodyv1 "github.com/custodyhq/custody/proto/custody/v1"
)

const (
	manifestFile  = "manifest.json"
	signatureFile = "manifest.json.sig"
	maxManifest   = 16 << 20
)

func verifyCmd(client clientFunc, cf *connFlags) *cobra.Command {
	var dir string
	var unsigned bool
	cmd := &cobra.Command{
		Use:   "verify [COLLECTION-ID]",
		Short: "Check a collection's manifest signature and re-hash every stored object",
		Long: `verify checks that manifest.json is signed by a collector certificate issued by
the custody CA (--ca), then re-reads every stored artifact, recomputing its stored
SHA-256 and, decompressing it chunk by chunk, its raw SHA-256. It exits 0 only if
everything matches, 1 on any mismatch.

With --dir it verifies a collection directory on disk (an fs evidence store, a copy
of one, or the output of custody-agent collect with --unsigned) without a collector.`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var src evidenceSource
			var roots *x509.CertPool
			if dir != "" {
				src = dirSource(dir)
				if !unsigned {
					c, err := cf.caOnly()
					if err != nil {
						return err
					}
					if roots, err = pki.ReadCertPool(c); err != nil {
						return err
					}
				}
			} else {
				if len(args) != 1 {
					return errors.New("verify needs a collection id (or --dir)")
				}
				c, err := cf.resolve()
				if err != nil {
					return err
				}
				if roots, err = pki.ReadCertPool(c.CA); err != nil {
					return err
				}
				rc, done, err := client()
				if err != nil {
					return err
				}
				defer done()
				col, err := rc.GetCollection(cmd.Context(), &custodyv1.GetCollectionRequest{CollectionId: args[0]})
				if err != nil {
					return err
				}
				if col.GetCollection().GetManifestKey() == "" {
					return fmt.Errorf("collection %s is %s and has no sealed manifest yet", args[0], stateName(col.GetCollection().GetState()))
				}
				src = &remoteSource{c: rc, id: args[0], prefix: path.Dir(col.GetCollection().GetManifestKey())}
			}
			ok, err := verify(cmd.Context(), src, roots, unsigned, cmd.OutOrStdout())
			if err != nil {
				return err
			}
			if !ok {
				return exitError{code: 1}
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&dir, "dir", "", "verify a collection directory on disk instead of asking the collector")
	cmd.Flags().BoolVar(&unsigned, "unsigned", false, "with --dir: accept an unsigned manifest (one-shot local collections) and check hashes only")
	return cmd
}

// caOnly resolves just the CA bundle, for offline verification.
func (c *connFlags) caOnly() (string, error) {
	ca := first(c.CA, os.Getenv("CUSTODY_CA"))
	if ca == "" {
		full, err := c.resolve()
		if err != nil {
			return "", fmt.Errorf("offline verify needs --ca: %w", err)
		}
		ca = full.CA
	}
	return ca, nil
}

type evidenceSource interface {
	// open returns the object named by file (a base name in the collection).
	open(ctx context.Context, file string) (io.ReadCloser, error)
}

type dirSource string

func (d dirSource) open(_ context.Context, file string) (io.ReadCloser, error) {
	return os.Open(filepath.Join(string(d), file))
}

type remoteSource struct {
	c      custodyv1.ResponderServiceClient
	id     string
	prefix string
}

func (r *remoteSource) open(ctx context.Context, file string) (io.ReadCloser, error) {
	ctx, cancel := context.WithCancel(ctx)
	stream, err := r.c.ReadEvidence(ctx, &custodyv1.ReadEvidenceRequest{CollectionId: r.id, Key: r.prefix + "/" + file})
	if err != nil {
		cancel()
		return nil, err
	}
	pr, pw := io.Pipe()
	go func() {
		for {
			msg, err := stream.Recv()
			if err == io.EOF {
				pw.Close()
				return
			}
			if err != nil {
				pw.CloseWithError(fmt.Errorf("reading %s: %w", file, err))
				return
			}
			if _, err := pw.Write(msg.GetData()); err != nil {
				return
			}
		}
	}()
	return readCloser{pr, func() { cancel(); pr.Close() }}, nil
}

type readCloser struct {
	io.Reader
	close func()
}

func (r readCloser) Close() error { r.close(); return nil }

func readAll(ctx context.Context, src evidenceSource, file string) ([]byte, error) {
	r, err := src.open(ctx, file)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	b, err := io.ReadAll(io.LimitReader(r, maxManifest+1))
	if err != nil {
		return nil, err
	}
	if len(b) > maxManifest {
		return nil, fmt.Errorf("%s is larger than %d bytes", file, maxManifest)
	}
	return b, nil
}

// verify prints one line per check and reports whether all passed.
func verify(ctx context.Context, src evidenceSource, roots *x509.CertPool, allowUnsigned bool, w io.Writer) (bool, error) {
	data, err := readAll(ctx, src, manifestFile)
	if err != nil {
		return false, fmt.Errorf("manifest: %w", err)
	}
	ok := true
	var m *manifest.Manifest
	sig, sigErr := readAll(ctx, src, signatureFile)
	switch {
	case sigErr != nil && allowUnsigned:
		if m, err = manifest.Parse(data); err != nil {
			return false, err
		}
		fmt.Fprintf(w, "signature   NONE (unsigned manifest accepted with --unsigned: hashes only, no chain of custody)\n")
	case sigErr != nil:
		return false, fmt.Errorf("signature: %w", sigErr)
	default:
		var signer *x509.Certificate
		m, signer, err = manifest.Verify(data, sig, roots)
		if errors.Is(err, manifest.ErrMalformed) {
			fmt.Fprintf(w, "manifest    FAIL  %v\n", err)
			return false, nil
		}
		if err != nil {
			fmt.Fprintf(w, "signature   FAIL  %v\n", err)
			return false, nil
		}
		id, err := pki.IdentityFromCert(signer)
		if err != nil || id.Role != pki.RoleCollector {
			fmt.Fprintf(w, "signature   FAIL  signer %s is not a collector identity (%v)\n", id, err)
			return false, nil
		}
		fmt.Fprintf(w, "signature   OK    Ed25519, signed by %s (%s)\n", id, m.Signer.KeyFingerprint)
	}
	fmt.Fprintf(w, "collection  %s  case %s  state %s  requested by %s\n", m.CollectionID, m.CaseID, m.State, m.RequestedBy)
	for _, a := range m.Artifacts {
		if a.Key == "" {
			fmt.Fprintf(w, "artifact    %-12s %s, nothing stored: %v\n", a.Name, a.State, a.Errors)
			if m.State == "complete" {
				ok = false
			}
			continue
		}
		r, err := src.open(ctx, path.Base(a.Key))
		if err != nil {
			fmt.Fprintf(w, "artifact    %-12s FAIL  %v\n", a.Name, err)
			ok = false
			continue
		}
		err = manifest.VerifyArtifact(ctx, a, r)
		r.Close()
		if err != nil {
			fmt.Fprintf(w, "artifact    %-12s FAIL  %v\n", a.Name, err)
			ok = false
			continue
		}
		fmt.Fprintf(w, "artifact    %-12s OK    %d raw bytes, sha256 %s (%s)\n", a.Name, a.RawSize, a.AgentSHA256, a.State)
	}
	if ok {
		fmt.Fprintln(w, "verified: every stored byte matches the signed manifest")
	} else {
		fmt.Fprintln(w, "VERIFICATION FAILED")
	}
	return ok, nil
}
