package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

const (
	pemPrivateKey  = "PRIVATE KEY"
	pemCertificate = "CERTIFICATE"

	keyFileMode  fs.FileMode = 0o600
	certFileMode fs.FileMode = 0o644
	dirMode      fs.FileMode = 0o700
)

// GenerateKey returns a new ECDSA P-256 key, the type used for the CA and
// every TLS key: universally supported by TLS 1.3 stacks and fast to sign.
func GenerateKey() (*ecdsa.PrivateKey, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("pki: generate ECDSA P-256 key: %w", err)
	}
	return key, nil
}

// GenerateSigningKey returns a new Ed25519 key for signing manifests:
// deterministic signatures, so signing needs no randomness at seal time.
func GenerateSigningKey() (ed25519.PrivateKey, error) {
	_, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("pki: generate Ed25519 key: %w", err)
	}
	return key, nil
}

// WriteKey writes key as a PKCS#8 "PRIVATE KEY" PEM file with mode 0600. The
// file appears complete or not at all, so a crash never leaves a truncated
// key behind. An existing file is replaced.
func WriteKey(path string, key crypto.PrivateKey) error {
	return writeKey(path, key, true)
}

func writeKey(path string, key crypto.PrivateKey, replace bool) error {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return fmt.Errorf("pki: encode key for %s: %w", path, err)
	}
	data := pem.EncodeToMemory(&pem.Block{Type: pemPrivateKey, Bytes: der})
	clear(der)
	defer clear(data)
	return writeFileAtomic(path, data, keyFileMode, replace)
}

// ReadKey reads a PKCS#8 "PRIVATE KEY" PEM file. A missing file yields an
// error wrapping both ErrNotFound and fs.ErrNotExist.
func ReadKey(path string) (crypto.Signer, error) {
	data, err := readFile(path)
	if err != nil {
		return nil, err
	}
	defer clear(data)
	for rest := data; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			return nil, fmt.Errorf("pki: %s: no %q PEM block", path, pemPrivateKey)
		}
		if block.Type != pemPrivateKey {
			continue
		}
		key, err := x509.ParsePKCS8PrivateKey(block.Bytes)
		clear(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("pki: %s: %w", path, err)
		}
		signer, ok := key.(crypto.Signer)
		if !ok {
			return nil, fmt.Errorf("pki: %s: %T cannot sign", path, key)
		}
		return signer, nil
	}
}

// WriteCert writes PEM certificate data with mode 0644, atomically.
func WriteCert(path string, certPEM []byte) error {
	return writeFileAtomic(path, certPEM, certFileMode, true)
}

// ReadCert returns the first certificate in a PEM file; later blocks (a
// chain) are ignored.
func ReadCert(path string) (*x509.Certificate, error) {
	certs, err := readCerts(path, 1)
	if err != nil {
		return nil, err
	}
	return certs[0], nil
}

// ReadCertPool returns a pool holding every certificate in a PEM bundle.
// An empty bundle is an error: an empty pool would silently trust nothing and
// surface much later as a confusing handshake failure.
func ReadCertPool(path string) (*x509.CertPool, error) {
	certs, err := readCerts(path, -1)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	for _, c := range certs {
		pool.AddCert(c)
	}
	return pool, nil
}

// readCerts parses up to limit (all if limit < 0) CERTIFICATE blocks, skipping
// other block types, and fails if there are none.
func readCerts(path string, limit int) ([]*x509.Certificate, error) {
	data, err := readFile(path)
	if err != nil {
		return nil, err
	}
	var certs []*x509.Certificate
	for rest := data; limit < 0 || len(certs) < limit; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		if block.Type != pemCertificate {
			continue
		}
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("pki: %s: certificate %d: %w", path, len(certs)+1, err)
		}
		certs = append(certs, cert)
	}
	if len(certs) == 0 {
		return nil, fmt.Errorf("pki: %s: no %q PEM block", path, pemCertificate)
	}
	return certs, nil
}

// EncodeCert returns the PEM encoding of a DER certificate.
func EncodeCert(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: pemCertificate, Bytes: der})
}

// Fingerprint returns "sha256:" and the hex SHA-256 of the certificate's DER,
// the form manifests record to pin the exact certificate an agent used.
func Fingerprint(cert *x509.Certificate) string {
	sum := sha256.Sum256(cert.Raw)
	return "sha256:" + hex.EncodeToString(sum[:])
}

func readFile(path string) ([]byte, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("pki: %w: %w", ErrNotFound, err)
	}
	if err != nil {
		return nil, fmt.Errorf("pki: %w", err)
	}
	return data, nil
}

// writeFileAtomic writes data to a temporary file beside path and moves it
// into place, so readers (a collector reloading its certificate, an agent
// restarting mid-renewal) see the old content or the new, never a torn file.
// The temporary file is created 0600, so key bytes are never readable by
// others even for an instant. With replace false an existing path is left
// alone and ErrExists returned; a hard link rather than a rename makes that
// check and the creation one atomic step.
func writeFileAtomic(path string, data []byte, mode fs.FileMode, replace bool) (err error) {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, dirMode); err != nil {
		return fmt.Errorf("pki: %w", err)
	}
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("pki: %w", err)
	}
	tmpName := tmp.Name()
	defer func() {
		if tmp != nil {
			tmp.Close()
		}
		// After a successful rename the name is gone; after a link it still
		// needs removing. Either way a failure here is harmless.
		os.Remove(tmpName)
		if err != nil {
			err = fmt.Errorf("pki: write %s: %w", path, err)
		}
	}()
	if err := tmp.Chmod(mode); err != nil {
		return err
	}
	if _, err := tmp.Write(data); err != nil {
		return err
	}
	if err := tmp.Sync(); err != nil {
		return err
	}
	err = tmp.Close()
	tmp = nil
	if err != nil {
		return err
	}
	if replace {
		err = os.Rename(tmpName, path)
	} else {
		err = os.Link(tmpName, path)
		if errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("%w: %w", ErrExists, err)
		}
	}
	if err != nil {
		return err
	}
	return syncDir(dir)
}

// syncDir makes a rename durable: without it a power loss can forget the new
// directory entry even though the file's data reached the disk.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
