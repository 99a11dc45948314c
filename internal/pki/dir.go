package pki

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"time"
)

// Files in the collector's PKI directory.
const (
	CACertFile      = "ca.crt"
	CAKeyFile       = "ca.key"
	ServerCertFile  = "collector.crt"
	ServerKeyFile   = "collector.key"
	SigningKeyFile  = "signing.key"
	SigningCertFile = "signing.crt"
)

// Defaults for InitOptions.
const (
	DefaultCollectorName  = "collector"
	DefaultCAValidity     = 10 * 365 * 24 * time.Hour
	DefaultServerValidity = 365 * 24 * time.Hour
	caCommonName          = "custody CA"
)

// InitOptions configures Init. Zero fields take the documented defaults.
type InitOptions struct {
	Dir            string
	CollectorName  string        // default "collector"
	DNSNames       []string      // default ["localhost"]
	IPs            []net.IP      // default 127.0.0.1, ::1
	CAValidity     time.Duration // default 10 years
	ServerValidity time.Duration // default 1 year; also the signing certificate's
}

func (o *InitOptions) setDefaults() {
	if o.CollectorName == "" {
		o.CollectorName = DefaultCollectorName
	}
	if len(o.DNSNames) == 0 {
		o.DNSNames = []string{"localhost"}
	}
	if len(o.IPs) == 0 {
		o.IPs = []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}
	}
	if o.CAValidity == 0 {
		o.CAValidity = DefaultCAValidity
	}
	if o.ServerValidity == 0 {
		o.ServerValidity = DefaultServerValidity
	}
}

// Init creates a collector's PKI directory: a new CA, the collector's TLS
// key and certificate (server and client usage, identity
// collector/<name>) and its Ed25519 manifest-signing key and certificate.
//
// It refuses with ErrExists if Dir/ca.key exists: replacing a CA silently
// would orphan every agent and responder certificate already issued. All key
// material is generated before anything is written and ca.key is written
// last, so an interrupted Init leaves no ca.key and can simply be re-run.
func Init(opts InitOptions) error {
	opts.setDefaults()
	if opts.Dir == "" {
		return errors.New("pki: init: no directory given")
	}
	id, err := NewIdentity(RoleCollector, opts.CollectorName)
	if err != nil {
		return fmt.Errorf("pki: init: %w", err)
	}
	caKeyPath := filepath.Join(opts.Dir, CAKeyFile)
	switch _, err := os.Lstat(caKeyPath); {
	case err == nil:
		return fmt.Errorf("pki: init: %s: %w", caKeyPath, ErrExists)
	case !errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("pki: init: %w", err)
	}
	if err := os.MkdirAll(opts.Dir, dirMode); err != nil {
		return fmt.Errorf("pki: init: %w", err)
	}

	ca, err := NewCA(caCommonName, opts.CAValidity)
	if err != nil {
		return err
	}
	serverKey, err := GenerateKey()
	if err != nil {
		return err
	}
	_, serverPEM, err := ca.Issue(IssueRequest{
		Identity:  id,
		PublicKey: serverKey.Public(),
		Usage:     UsageServerClient,
		Validity:  opts.ServerValidity,
		DNSNames:  opts.DNSNames,
		IPs:       opts.IPs,
	})
	if err != nil {
		return err
	}
	signingKey, err := GenerateSigningKey()
	if err != nil {
		return err
	}
	_, signingPEM, err := ca.Issue(IssueRequest{
		Identity:  id,
		PublicKey: signingKey.Public(),
		Usage:     UsageSigning,
		Validity:  opts.ServerValidity,
	})
	if err != nil {
		return err
	}

	path := func(name string) string { return filepath.Join(opts.Dir, name) }
	if err := WriteCert(path(CACertFile), ca.CertPEM); err != nil {
		return err
	}
	if err := WriteKey(path(ServerKeyFile), serverKey); err != nil {
		return err
	}
	if err := WriteCert(path(ServerCertFile), serverPEM); err != nil {
		return err
	}
	if err := WriteKey(path(SigningKeyFile), signingKey); err != nil {
		return err
	}
	if err := WriteCert(path(SigningCertFile), signingPEM); err != nil {
		return err
	}
	// Not replacing: a concurrent Init that won the race keeps its CA.
	return writeKey(caKeyPath, ca.Key, false)
}

// ResponderFiles returns the paths IssueResponder writes for name.
func ResponderFiles(dir, name string) (certPath, keyPath string) {
	base := filepath.Join(dir, "responder-"+name)
	return base + ".crt", base + ".key"
}

// IssueResponder creates a key and a client certificate with identity
// responder/<name>, signed by the CA in dir, and writes them to
// dir/responder-<name>.crt and .key. It refuses with ErrExists if the key
// file exists, so a responder's working credential is never overwritten by
// accident; remove the files first to reissue.
func IssueResponder(dir, name string, validity time.Duration) (certPath, keyPath string, err error) {
	id, err := NewIdentity(RoleResponder, name)
	if err != nil {
		return "", "", fmt.Errorf("pki: issue responder: %w", err)
	}
	ca, err := LoadCA(dir)
	if err != nil {
		return "", "", err
	}
	key, err := GenerateKey()
	if err != nil {
		return "", "", err
	}
	_, certPEM, err := ca.Issue(IssueRequest{
		Identity:  id,
		PublicKey: key.Public(),
		Usage:     UsageClient,
		Validity:  validity,
	})
	if err != nil {
		return "", "", err
	}
	certPath, keyPath = ResponderFiles(dir, name)
	if err := writeKey(keyPath, key, false); err != nil {
		return "", "", err
	}
	if err := WriteCert(certPath, certPEM); err != nil {
		return "", "", err
	}
	return certPath, keyPath, nil
}
