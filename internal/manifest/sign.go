package manifest

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"
)

// Sign seals m: it sets m.Signer from the collector's signing certificate,
// marshals m, and returns the bytes to store as manifest.json and the raw
// 64-byte Ed25519 signature over exactly those bytes, to store as
// manifest.json.sig.
//
// certPEM may hold a chain or other blocks; only its first certificate is
// embedded, and it must carry key's public key and a
// spiffe://custody/collector/<name> URI SAN.
func Sign(m *Manifest, key ed25519.PrivateKey, certPEM []byte) (data, sig []byte, err error) {
	if m == nil {
		return nil, nil, errors.New("manifest: sign: nil manifest")
	}
	if len(key) != ed25519.PrivateKeySize {
		return nil, nil, fmt.Errorf("manifest: sign: Ed25519 private key is %d bytes, want %d", len(key), ed25519.PrivateKeySize)
	}
	cert, err := firstCertificate(certPEM)
	if err != nil {
		return nil, nil, fmt.Errorf("manifest: sign: %w", err)
	}
	pub, ok := cert.PublicKey.(ed25519.PublicKey)
	if !ok {
		return nil, nil, fmt.Errorf("manifest: sign: certificate %q carries a %T key, want Ed25519", cert.Subject, cert.PublicKey)
	}
	if !pub.Equal(key.Public()) {
		return nil, nil, fmt.Errorf("manifest: sign: certificate key %s is not the signing key %s",
			keyFingerprint(pub), keyFingerprint(key.Public().(ed25519.PublicKey)))
	}
	id, err := collectorIdentity(cert)
	if err != nil {
		return nil, nil, fmt.Errorf("manifest: sign: %w", err)
	}
	signer := &Signer{
		Identity: id,
		// Re-encoded from DER so that whatever else certPEM carried (a
		// chain, a private key by mistake) never ends up in evidence.
		Certificate:    string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw})),
		KeyFingerprint: keyFingerprint(pub),
	}
	signed := *m
	signed.Signer = signer
	data, err = Marshal(&signed)
	if err != nil {
		return nil, nil, err
	}
	m.Signer = signer
	return data, ed25519.Sign(key, data), nil
}

// Verify checks that sig is the signer's Ed25519 signature over data, that
// the signer certificate embedded in the manifest is a custody collector
// certificate chaining to roots, and that it was valid when the collection
// finished or is valid now. It returns the parsed manifest and the signer
// certificate.
//
// The signature is checked before anything else about the signer, so that
// any change to the signed bytes reports ErrBadSignature rather than
// whichever consistency check the change happened to trip first.
func Verify(data, sig []byte, roots *x509.CertPool) (*Manifest, *x509.Certificate, error) {
	if roots == nil {
		// x509 would fall back to the system roots, which have no business
		// vouching for a custody collector.
		return nil, nil, fmt.Errorf("%w: no trusted roots given", ErrUntrustedSigner)
	}
	m, err := Parse(data)
	if err != nil {
		return nil, nil, err
	}
	if m.Signer == nil {
		return nil, nil, fmt.Errorf("%w: manifest has no signer", ErrUntrustedSigner)
	}
	cert, err := onlyCertificate(m.Signer.Certificate)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: signer certificate: %v", ErrMalformed, err)
	}
	pub, ok := cert.PublicKey.(ed25519.PublicKey)
	if !ok {
		return nil, nil, fmt.Errorf("%w: signer certificate carries a %T key, want Ed25519", ErrUntrustedSigner, cert.PublicKey)
	}
	if len(sig) != ed25519.SignatureSize {
		return nil, nil, fmt.Errorf("%w: signature is %d bytes, want %d", ErrBadSignature, len(sig), ed25519.SignatureSize)
	}
	if !ed25519.Verify(pub, data, sig) {
		return nil, nil, fmt.Errorf("%w: does not verify with signer key %s", ErrBadSignature, keyFingerprint(pub))
	}

	if got := keyFingerprint(pub); m.Signer.KeyFingerprint != got {
		return nil, nil, fmt.Errorf("%w: key_fingerprint %q, but the certificate key is %q", ErrUntrustedSigner, m.Signer.KeyFingerprint, got)
	}
	id, err := collectorIdentity(cert)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %v", ErrUntrustedSigner, err)
	}
	if m.Signer.Identity != id {
		return nil, nil, fmt.Errorf("%w: identity %q, but the certificate names %q", ErrUntrustedSigner, m.Signer.Identity, id)
	}
	if cert.IsCA {
		return nil, nil, fmt.Errorf("%w: %s: a CA certificate cannot sign manifests", ErrUntrustedSigner, id)
	}
	if cert.KeyUsage != 0 && cert.KeyUsage&x509.KeyUsageDigitalSignature == 0 {
		return nil, nil, fmt.Errorf("%w: %s: certificate key usage excludes digital signatures", ErrUntrustedSigner, id)
	}
	if err := verifyChain(cert, roots, m.FinishedAt); err != nil {
		return nil, nil, fmt.Errorf("%w: %s: %v", ErrUntrustedSigner, id, err)
	}
	return m, cert, nil
}

// verifyChain accepts a certificate that chains to roots either when the
// collection finished or now. Signing certificates are short-lived, so a
// manifest must stay verifiable after its signer expired; and a manifest
// whose finished_at lies outside the validity period is still accepted while
// the certificate is current, since finished_at is only the collector's
// clock reading.
func verifyChain(cert *x509.Certificate, roots *x509.CertPool, finishedAt time.Time) error {
	verifyAt := func(at time.Time) error {
		_, err := cert.Verify(x509.VerifyOptions{
			Roots:       roots,
			CurrentTime: at,
			// The custody CA decides what a collector certificate is for;
			// chaining to it is what matters here.
			KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
		})
		return err
	}
	now := time.Now()
	if finishedAt.IsZero() {
		return verifyAt(now)
	}
	errFinished := verifyAt(finishedAt)
	if errFinished == nil {
		return nil
	}
	errNow := verifyAt(now)
	if errNow == nil {
		return nil
	}
	return fmt.Errorf("at finished_at %s: %v; now: %w", finishedAt.UTC().Format(time.RFC3339), errFinished, errNow)
}

// collectorIdentity returns the certificate's one spiffe://custody/collector/<name>
// URI SAN. More than one SPIFFE ID would make "who signed" ambiguous.
func collectorIdentity(cert *x509.Certificate) (string, error) {
	var ids []*url.URL
	for _, u := range cert.URIs {
		if strings.EqualFold(u.Scheme, "spiffe") {
			ids = append(ids, u)
		}
	}
	if len(ids) != 1 {
		return "", fmt.Errorf("certificate %q has %d SPIFFE URI SANs, want 1", cert.Subject, len(ids))
	}
	// Re-parsed with net/url rather than trusting the parsed form, so that
	// what is checked is the exact string recorded as the identity.
	raw := ids[0].String()
	u, err := url.Parse(raw)
	if err != nil {
		return "", fmt.Errorf("SPIFFE ID %q: %v", raw, err)
	}
	name, ok := strings.CutPrefix(u.Path, "/collector/")
	if u.Scheme != "spiffe" || u.Host != "custody" || u.User != nil || u.Opaque != "" ||
		u.RawQuery != "" || u.Fragment != "" || u.RawPath != "" || !ok || name == "" || strings.Contains(name, "/") {
		return "", fmt.Errorf("SPIFFE ID %q is not spiffe://custody/collector/<name>", raw)
	}
	return raw, nil
}

func firstCertificate(data []byte) (*x509.Certificate, error) {
	for rest := data; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			return nil, errors.New("no CERTIFICATE PEM block")
		}
		if block.Type == "CERTIFICATE" {
			return x509.ParseCertificate(block.Bytes)
		}
	}
}

// onlyCertificate parses the embedded signer certificate, which Sign writes
// as exactly one PEM block: anything else in the field was not written by
// Sign.
func onlyCertificate(s string) (*x509.Certificate, error) {
	block, rest := pem.Decode([]byte(s))
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, errors.New("not a CERTIFICATE PEM block")
	}
	if len(bytes.TrimSpace(rest)) != 0 {
		return nil, errors.New("data after the certificate")
	}
	return x509.ParseCertificate(block.Bytes)
}

func keyFingerprint(pub ed25519.PublicKey) string {
	sum := sha256.Sum256(pub)
	return "sha256:" + hex.EncodeToString(sum[:])
}
