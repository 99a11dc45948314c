// Package enrol gives an agent its identity: a key generated on the host
// that never leaves it, and a short-lived certificate from the collector's
// CA, obtained with a join token and renewed over mutual TLS well before it
// expires.
package enrol

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"time"

	"github.com/custodyhq/custody/internal/pki"
	custodyv1 "github.com/custodyhq/custody/proto/custody/v1"
)

// Files in the agent's state directory.
const (
	KeyFile  = "agent.key"
	CertFile = "agent.crt"
	CAFile   = "ca.crt"
)

var ErrNotEnrolled = errors.New("enrol: agent is not enrolled")

// Identity is the agent's enrolled identity and the trust it needs to reach
// its collector.
type Identity struct {
	Dir   string
	ID    pki.Identity
	Keys  *pki.Keypair
	Roots *x509.CertPool
}

// Load reads an identity from dir. A missing or expired certificate is
// ErrNotEnrolled: the agent must enrol (again) with a join token.
func Load(dir string, now time.Time) (*Identity, error) {
	certPath, keyPath := filepath.Join(dir, CertFile), filepath.Join(dir, KeyFile)
	if _, err := os.Stat(certPath); errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%w: no %s", ErrNotEnrolled, certPath)
	}
	keys, err := pki.LoadKeypair(certPath, keyPath)
	if err != nil {
		return nil, err
	}
	leaf := keys.Current().Leaf
	if now.After(leaf.NotAfter) {
		return nil, fmt.Errorf("%w: certificate %s expired at %s", ErrNotEnrolled, certPath, leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	id, err := pki.IdentityFromCert(leaf)
	if err != nil {
		return nil, err
	}
	if id.Role != pki.RoleAgent {
		return nil, fmt.Errorf("enrol: %s holds a %s identity, not an agent's", certPath, id.Role)
	}
	roots, err := pki.ReadCertPool(filepath.Join(dir, CAFile))
	if err != nil {
		return nil, err
	}
	return &Identity{Dir: dir, ID: id, Keys: keys, Roots: roots}, nil
}

// Enroll generates a key in dir, sends a CSR with the join token and stores
// the certificate the collector returns. client must reach the collector
// over server-authenticated TLS (the agent has no certificate yet).
func Enroll(ctx context.Context, client custodyv1.AgentServiceClient, dir, token string, host *custodyv1.HostFacts) (*Identity, error) {
	if token == "" {
		return nil, fmt.Errorf("%w and no join token was given", ErrNotEnrolled)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("enrol: state directory: %w", err)
	}
	key, err := pki.GenerateKey()
	if err != nil {
		return nil, err
	}
	csr, err := pki.CreateCSR(key)
	if err != nil {
		return nil, err
	}
	resp, err := client.Enroll(ctx, &custodyv1.EnrollRequest{JoinToken: token, Csr: csr, Host: host})
	if err != nil {
		return nil, fmt.Errorf("enrol: %w", err)
	}
	if err := store(dir, key, resp.GetCertificate(), resp.GetCaBundle()); err != nil {
		return nil, err
	}
	return Load(dir, time.Now())
}

// store writes key, certificate and CA so that a crash between the writes
// leaves either the old identity or the new one loadable: the certificate
// is written last, and Load checks that it matches the key.
func store(dir string, key any, certPEM, caPEM []byte) error {
	if len(caPEM) > 0 {
		if err := pki.WriteCert(filepath.Join(dir, CAFile), caPEM); err != nil {
			return err
		}
	}
	if err := pki.WriteKey(filepath.Join(dir, KeyFile), key); err != nil {
		return err
	}
	if _, err := tls.X509KeyPair(certPEM, mustPEMKey(key)); err != nil {
		return fmt.Errorf("enrol: collector returned a certificate that does not match our key: %w", err)
	}
	return pki.WriteCert(filepath.Join(dir, CertFile), certPEM)
}

// Renew obtains a new certificate for a new key and swaps it in.
func (id *Identity) Renew(ctx context.Context, client custodyv1.AgentServiceClient) error {
	key, err := pki.GenerateKey()
	if err != nil {
		return err
	}
	csr, err := pki.CreateCSR(key)
	if err != nil {
		return err
	}
	resp, err := client.Renew(ctx, &custodyv1.RenewRequest{Csr: csr})
	if err != nil {
		return fmt.Errorf("enrol: renew: %w", err)
	}
	if err := store(id.Dir, key, resp.GetCertificate(), resp.GetCaBundle()); err != nil {
		return err
	}
	fresh, err := pki.LoadKeypair(filepath.Join(id.Dir, CertFile), filepath.Join(id.Dir, KeyFile))
	if err != nil {
		return err
	}
	id.Keys.Store(*fresh.Current())
	return nil
}

// RenewAt is when the current certificate should be renewed: halfway
// through its life, minus up to a tenth of it at random so that a fleet
// enrolled together does not renew together.
func (id *Identity) RenewAt() time.Time {
	leaf := id.Keys.Current().Leaf
	life := leaf.NotAfter.Sub(leaf.NotBefore)
	jitter := time.Duration(rand.Int64N(int64(life)/10 + 1))
	return leaf.NotBefore.Add(life/2 - jitter)
}
