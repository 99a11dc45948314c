package manifest

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"github.com/custodyhq/custody/internal/testenv"
	"math/big"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// testCA is a throwaway custody CA built with crypto/x509 alone, so these
// tests do not depend on the pki package's choices.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pool *x509.CertPool
}

func newTestCA(t *testing.T, name string) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-48 * time.Hour),
		NotAfter:              time.Now().Add(48 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &testCA{cert: cert, key: key, pool: pool}
}

type leafOpts struct {
	uris                []string
	notBefore, notAfter time.Time
	keyUsage            x509.KeyUsage
}

// issue returns the PEM of a certificate for pub signed by the CA.
func (ca *testCA) issue(t *testing.T, pub crypto.PublicKey, o leafOpts) []byte {
	t.Helper()
	if o.notBefore.IsZero() {
		o.notBefore = time.Now().Add(-time.Hour)
	}
	if o.notAfter.IsZero() {
		o.notAfter = time.Now().Add(time.Hour)
	}
	if o.keyUsage == 0 {
		o.keyUsage = x509.KeyUsageDigitalSignature
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: "collector"},
		NotBefore:    o.notBefore,
		NotAfter:     o.notAfter,
		KeyUsage:     o.keyUsage,
	}
	for _, s := range o.uris {
		u, err := url.Parse(s)
		if err != nil {
			t.Fatal(err)
		}
		tmpl.URIs = append(tmpl.URIs, u)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, pub, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

const collectorID = "spiffe://custody/collector/test"

func newSigner(t *testing.T, ca *testCA) (ed25519.PrivateKey, []byte) {
	t.Helper()
	pub, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return key, ca.issue(t, pub, leafOpts{uris: []string{collectorID}})
}

func TestSignVerify(t *testing.T) {
	ca := newTestCA(t, "custody CA")
	key, certPEM := newSigner(t, ca)
	m := testManifest()
	m.FinishedAt = time.Now().UTC().Truncate(time.Second)

	data, sig, err := Sign(m, key, certPEM)
	if err != nil {
		t.Fatal(err)
	}
	if len(sig) != ed25519.SignatureSize {
		t.Errorf("signature is %d bytes, want %d", len(sig), ed25519.SignatureSize)
	}
	wantSigner := &Signer{
		Identity:       collectorID,
		Certificate:    string(certPEM),
		KeyFingerprint: keyFingerprint(key.Public().(ed25519.PublicKey)),
	}
	if diff := cmp.Diff(wantSigner, m.Signer); diff != "" {
		t.Errorf("Sign set m.Signer (-want +got):\n%s", diff)
	}
	if want, err := Marshal(m); err != nil || !bytes.Equal(want, data) {
		t.Errorf("signed data is not Marshal(m) (err %v)", err)
	}

	got, cert, err := Verify(data, sig, ca.pool)
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	if diff := cmp.Diff(m, got); diff != "" {
		t.Errorf("Verify manifest (-want +got):\n%s", diff)
	}
	if len(cert.URIs) != 1 || cert.URIs[0].String() != collectorID {
		t.Errorf("Verify returned certificate with URIs %v", cert.URIs)
	}
}

// TestSignChainPEM checks that only the leaf certificate is embedded when
// the PEM handed to Sign carries more, such as a private key or the CA.
func TestSignChainPEM(t *testing.T) {
	ca := newTestCA(t, "custody CA")
	key, certPEM := newSigner(t, ca)
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	bundle := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
	bundle = append(bundle, certPEM...)
	bundle = append(bundle, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.cert.Raw})...)
	m := testManifest()
	data, sig, err := Sign(m, key, bundle)
	if err != nil {
		t.Fatal(err)
	}
	if m.Signer.Certificate != string(certPEM) {
		t.Errorf("embedded certificate is not just the leaf:\n%s", m.Signer.Certificate)
	}
	if _, _, err := Verify(data, sig, ca.pool); err != nil {
		t.Errorf("Verify: %v", err)
	}
}

// TestVerifyOpenSSL checks the promise that a manifest can be verified
// without custody: the signature is plain Ed25519 over the file's bytes.
func TestVerifyOpenSSL(t *testing.T) {
	openssl, err := exec.LookPath("openssl")
	if err != nil {
		testenv.Skip(t, "openssl not installed; it checks interoperability of manifest.json.sig")
	}
	ca := newTestCA(t, "custody CA")
	key, certPEM := newSigner(t, ca)
	data, sig, err := Sign(testManifest(), key, certPEM)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	mf := write("manifest.json", data)
	sf := write("manifest.json.sig", sig)
	cf := write("signer.pem", certPEM)
	verify := func() ([]byte, error) {
		return exec.CommandContext(t.Context(), openssl, "pkeyutl", "-verify", "-certin", "-inkey", cf,
			"-rawin", "-in", mf, "-sigfile", sf).CombinedOutput()
	}
	if out, err := verify(); err != nil {
		t.Fatalf("openssl pkeyutl -verify: %v\n%s", err, out)
	}
	data[len(data)/2] ^= 1
	write("manifest.json", data)
	if out, err := verify(); err == nil {
		t.Errorf("openssl verified a tampered manifest:\n%s", out)
	}
}

// signRaw signs arbitrary bytes with key, for manifests Sign would refuse
// to produce.
func signRaw(t *testing.T, m *Manifest, key ed25519.PrivateKey) ([]byte, []byte) {
	t.Helper()
	data, err := Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return data, ed25519.Sign(key, data)
}

func TestVerifyFails(t *testing.T) {
	ca := newTestCA(t, "custody CA")
	otherCA := newTestCA(t, "other CA")
	key, certPEM := newSigner(t, ca)
	m := testManifest()
	m.FinishedAt = time.Now().UTC()
	data, sig, err := Sign(m, key, certPEM)
	if err != nil {
		t.Fatal(err)
	}
	signer := *m.Signer

	// withSigner signs m with key as if Sign had accepted certPEM.
	withSigner := func(key ed25519.PrivateKey, certPEM []byte, edit func(s *Signer)) ([]byte, []byte) {
		m := testManifest()
		m.FinishedAt = time.Now().UTC()
		m.Signer = &Signer{Identity: collectorID, Certificate: string(certPEM), KeyFingerprint: keyFingerprint(key.Public().(ed25519.PublicKey))}
		if edit != nil {
			edit(m.Signer)
		}
		return signRaw(t, m, key)
	}

	otherKey, otherCert := newSigner(t, otherCA)
	expiredPub, expiredKey, _ := ed25519.GenerateKey(rand.Reader)
	expiredCert := ca.issue(t, expiredPub, leafOpts{uris: []string{collectorID},
		notBefore: time.Now().Add(-3 * time.Hour), notAfter: time.Now().Add(-2 * time.Hour)})
	responderPub, responderKey, _ := ed25519.GenerateKey(rand.Reader)
	responderCert := ca.issue(t, responderPub, leafOpts{uris: []string{"spiffe://custody/responder/mallory"}})
	noSigPub, noSigKey, _ := ed25519.GenerateKey(rand.Reader)
	noSigCert := ca.issue(t, noSigPub, leafOpts{uris: []string{collectorID}, keyUsage: x509.KeyUsageKeyEncipherment})
	ecKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ecCert := ca.issue(t, &ecKey.PublicKey, leafOpts{uris: []string{collectorID}})

	flipped := bytes.Clone(data)
	flipped[bytes.Index(flipped, []byte("GuardDuty"))] ^= 0x20 // "guardDuty": still valid JSON
	flippedSig := bytes.Clone(sig)
	flippedSig[10] ^= 1

	for _, tc := range []struct {
		name      string
		data, sig []byte
		roots     *x509.CertPool
		want      error
	}{
		{"flipped-data-byte", flipped, sig, ca.pool, ErrBadSignature},
		{"flipped-sig-byte", data, flippedSig, ca.pool, ErrBadSignature},
		{"sig-empty", data, nil, ca.pool, ErrBadSignature},
		{"sig-63-bytes", data, sig[:63], ca.pool, ErrBadSignature},
		{"sig-65-bytes", data, append(bytes.Clone(sig), 0), ca.pool, ErrBadSignature},
		{"sig-128-bytes", data, []byte(string(sig) + string(sig)), ca.pool, ErrBadSignature},
		{"other-ca", data, sig, otherCA.pool, ErrUntrustedSigner},
		{"nil-roots", data, sig, nil, ErrUntrustedSigner},
		{"cert-from-other-ca", nil, nil, ca.pool, ErrUntrustedSigner},
		{"expired", nil, nil, ca.pool, ErrUntrustedSigner},
		{"responder-cert", nil, nil, ca.pool, ErrUntrustedSigner},
		{"no-digital-signature-usage", nil, nil, ca.pool, ErrUntrustedSigner},
		{"ecdsa-cert", nil, nil, ca.pool, ErrUntrustedSigner},
		{"wrong-fingerprint", nil, nil, ca.pool, ErrUntrustedSigner},
		{"wrong-identity", nil, nil, ca.pool, ErrUntrustedSigner},
		{"unsigned", nil, nil, ca.pool, ErrUntrustedSigner},
		{"garbage-certificate", nil, nil, ca.pool, ErrMalformed},
		{"two-certificates", nil, nil, ca.pool, ErrMalformed},
		{"not-json", []byte("not a manifest"), sig, ca.pool, ErrMalformed},
	} {
		switch tc.name {
		case "cert-from-other-ca":
			tc.data, tc.sig = withSigner(otherKey, otherCert, nil)
		case "expired":
			tc.data, tc.sig = withSigner(expiredKey, expiredCert, nil)
		case "responder-cert":
			tc.data, tc.sig = withSigner(responderKey, responderCert, func(s *Signer) { s.Identity = "spiffe://custody/responder/mallory" })
		case "no-digital-signature-usage":
			tc.data, tc.sig = withSigner(noSigKey, noSigCert, nil)
		case "ecdsa-cert":
			tc.data, tc.sig = withSigner(key, ecCert, nil)
		case "wrong-fingerprint":
			tc.data, tc.sig = withSigner(key, certPEM, func(s *Signer) { s.KeyFingerprint = keyFingerprint(otherKey.Public().(ed25519.PublicKey)) })
		case "wrong-identity":
			tc.data, tc.sig = withSigner(key, certPEM, func(s *Signer) { s.Identity = "spiffe://custody/collector/other" })
		case "unsigned":
			tc.data, tc.sig = signRaw(t, testManifest(), key)
		case "garbage-certificate":
			tc.data, tc.sig = withSigner(key, []byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"), nil)
		case "two-certificates":
			tc.data, tc.sig = withSigner(key, append(bytes.Clone(certPEM), certPEM...), nil)
		}
		t.Run(tc.name, func(t *testing.T) {
			m, cert, err := Verify(tc.data, tc.sig, tc.roots)
			if !errors.Is(err, tc.want) {
				t.Fatalf("Verify = %v, want %v", err, tc.want)
			}
			t.Log(err)
			if m != nil || cert != nil {
				t.Error("Verify returned a manifest or certificate with its error")
			}
		})
	}
	if diff := cmp.Diff(signer, *m.Signer); diff != "" {
		t.Errorf("test bug: signer changed (-want +got):\n%s", diff)
	}
}

// TestVerifyEveryByte flips each byte of a signed manifest in turn: no
// single change may verify, and each must fail with one of the package's
// errors.
func TestVerifyEveryByte(t *testing.T) {
	ca := newTestCA(t, "custody CA")
	key, certPEM := newSigner(t, ca)
	data, sig, err := Sign(testManifest(), key, certPEM)
	if err != nil {
		t.Fatal(err)
	}
	for i := range data {
		tampered := bytes.Clone(data)
		tampered[i] ^= 0x01
		_, _, err := Verify(tampered, sig, ca.pool)
		if err == nil {
			t.Fatalf("Verify accepted the manifest with byte %d flipped", i)
		}
		if !errors.Is(err, ErrBadSignature) && !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrUntrustedSigner) {
			t.Fatalf("byte %d flipped: Verify = %v, want one of the package's errors", i, err)
		}
	}
}

// TestVerifyAfterSignerExpired checks that a manifest stays verifiable once
// its short-lived signing certificate expires, as long as the certificate
// was valid when the collection finished.
func TestVerifyAfterSignerExpired(t *testing.T) {
	ca := newTestCA(t, "custody CA")
	pub, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	notBefore, notAfter := time.Now().Add(-3*time.Hour), time.Now().Add(-2*time.Hour)
	certPEM := ca.issue(t, pub, leafOpts{uris: []string{collectorID}, notBefore: notBefore, notAfter: notAfter})
	for _, tc := range []struct {
		name       string
		finishedAt time.Time
		want       error
	}{
		{"finished-while-valid", notBefore.Add(30 * time.Minute), nil},
		{"finished-after-expiry", notAfter.Add(time.Minute), ErrUntrustedSigner},
		{"finished-before-issue", notBefore.Add(-time.Minute), ErrUntrustedSigner},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := testManifest()
			m.FinishedAt = tc.finishedAt
			data, sig, err := Sign(m, key, certPEM)
			if err != nil {
				t.Fatal(err)
			}
			if _, _, err := Verify(data, sig, ca.pool); !errors.Is(err, tc.want) {
				t.Errorf("Verify = %v, want %v", err, tc.want)
			}
		})
	}
}

func TestSignRefuses(t *testing.T) {
	ca := newTestCA(t, "custody CA")
	key, certPEM := newSigner(t, ca)
	otherKey, _ := newSigner(t, ca)
	pub := key.Public()
	ecKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	for _, tc := range []struct {
		name    string
		key     ed25519.PrivateKey
		certPEM []byte
		mutate  func(m *Manifest)
	}{
		{name: "key-not-in-cert", key: otherKey, certPEM: certPEM},
		{name: "short-key", key: key[:32], certPEM: certPEM},
		{name: "not-pem", key: key, certPEM: []byte("certificate")},
		{name: "no-certificate-block", key: key, certPEM: pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: []byte{1}})},
		{name: "ecdsa-cert", key: key, certPEM: ca.issue(t, &ecKey.PublicKey, leafOpts{uris: []string{collectorID}})},
		{name: "no-uri-san", key: key, certPEM: ca.issue(t, pub, leafOpts{})},
		{name: "agent-identity", key: key, certPEM: ca.issue(t, pub, leafOpts{uris: []string{"spiffe://custody/agent/i-1"}})},
		{name: "other-trust-domain", key: key, certPEM: ca.issue(t, pub, leafOpts{uris: []string{"spiffe://example.org/collector/test"}})},
		{name: "nested-name", key: key, certPEM: ca.issue(t, pub, leafOpts{uris: []string{"spiffe://custody/collector/a/b"}})},
		{name: "empty-name", key: key, certPEM: ca.issue(t, pub, leafOpts{uris: []string{"spiffe://custody/collector/"}})},
		{name: "query", key: key, certPEM: ca.issue(t, pub, leafOpts{uris: []string{"spiffe://custody/collector/test?x=1"}})},
		{name: "two-spiffe-ids", key: key, certPEM: ca.issue(t, pub, leafOpts{uris: []string{collectorID, "spiffe://custody/collector/other"}})},
		{name: "invalid-manifest", key: key, certPEM: certPEM, mutate: func(m *Manifest) { m.SchemaVersion = 0 }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := testManifest()
			if tc.mutate != nil {
				tc.mutate(m)
			}
			data, sig, err := Sign(m, tc.key, tc.certPEM)
			if err == nil {
				t.Fatal("Sign succeeded")
			}
			if data != nil || sig != nil || m.Signer != nil {
				t.Error("Sign returned data or set m.Signer along with its error")
			}
		})
	}
	if _, _, err := Sign(nil, key, certPEM); err == nil {
		t.Error("Sign(nil) succeeded")
	}
}
