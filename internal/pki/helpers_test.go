package pki

import (
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"testing"
	"time"
)

func mustIdentity(t testing.TB, role Role, name string) Identity {
	t.Helper()
	id, err := NewIdentity(role, name)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func newTestCA(t testing.TB) *CA {
	t.Helper()
	ca, err := NewCA("test CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

func mustKey(t testing.TB) crypto.Signer {
	t.Helper()
	key, err := GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	return key
}

// enrol goes through the path a real agent takes: its own key, a CSR, and
// SignCSR.
func enrol(t testing.TB, ca *CA, id Identity) tls.Certificate {
	t.Helper()
	key := mustKey(t)
	csr, err := CreateCSR(key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _, err := ca.SignCSR(csr, id, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return tlsCert(cert, key)
}

func tlsCert(cert *x509.Certificate, key crypto.Signer) tls.Certificate {
	return tls.Certificate{Certificate: [][]byte{cert.Raw}, PrivateKey: key, Leaf: cert}
}

// verify checks cert against the given roots for one extended key usage,
// the way a TLS peer would.
func verify(cert *x509.Certificate, roots *x509.CertPool, usage x509.ExtKeyUsage) error {
	_, err := cert.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{usage}})
	return err
}

func poolOf(cas ...*CA) *x509.CertPool {
	pool := x509.NewCertPool()
	for _, ca := range cas {
		pool.AddCert(ca.Cert)
	}
	return pool
}
