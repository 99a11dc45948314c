package pki

import (
	"crypto"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestWriteReadKey(t *testing.T) {
	ecKey, err := GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	edKey, err := GenerateSigningKey()
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		desc string
		key  crypto.Signer
	}{
		{"ECDSA P-256", ecKey},
		{"Ed25519", edKey},
	}
	for _, tc := range tests {
		t.Run(tc.desc, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "new", "dir")
			path := filepath.Join(dir, "k.key")
			if err := WriteKey(path, tc.key); err != nil {
				t.Fatal(err)
			}
			got, err := ReadKey(path)
			if err != nil {
				t.Fatal(err)
			}
			if !got.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(tc.key.Public()) {
				t.Errorf("ReadKey returned a different key")
			}
			modes := map[string]fs.FileMode{}
			for _, p := range []string{dir, path} {
				fi, err := os.Stat(p)
				if err != nil {
					t.Fatal(err)
				}
				modes[p] = fi.Mode().Perm()
			}
			want := map[string]fs.FileMode{dir: 0o700, path: 0o600}
			if diff := cmp.Diff(want, modes); diff != "" {
				t.Errorf("modes (-want +got):\n%s", diff)
			}
			// The temporary file must not survive the rename.
			entries, err := os.ReadDir(dir)
			if err != nil {
				t.Fatal(err)
			}
			var names []string
			for _, e := range entries {
				names = append(names, e.Name())
			}
			if diff := cmp.Diff([]string{"k.key"}, names); diff != "" {
				t.Errorf("directory entries (-want +got):\n%s", diff)
			}
		})
	}
}

func TestWriteKeyReplaces(t *testing.T) {
	path := filepath.Join(t.TempDir(), "k.key")
	first, second := mustKey(t), mustKey(t)
	for _, k := range []crypto.Signer{first, second} {
		if err := WriteKey(path, k); err != nil {
			t.Fatal(err)
		}
	}
	got, err := ReadKey(path)
	if err != nil {
		t.Fatal(err)
	}
	if !got.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(second.Public()) {
		t.Errorf("ReadKey after two writes did not return the second key")
	}
}

func TestReadErrors(t *testing.T) {
	dir := t.TempDir()
	ca := newTestCA(t)
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	missing := filepath.Join(dir, "missing")
	empty := write("empty", nil)
	garbage := write("garbage", []byte("not PEM at all\n"))
	certOnly := write("cert.pem", ca.CertPEM)
	badCert := write("bad.pem", EncodeCert([]byte("not DER")))

	tests := []struct {
		desc     string
		read     func(string) error
		path     string
		notFound bool
	}{
		{"ReadKey missing", readKeyErr, missing, true},
		{"ReadKey empty", readKeyErr, empty, false},
		{"ReadKey garbage", readKeyErr, garbage, false},
		{"ReadKey given a certificate", readKeyErr, certOnly, false},
		{"ReadCert missing", readCertErr, missing, true},
		{"ReadCert empty", readCertErr, empty, false},
		{"ReadCert bad DER", readCertErr, badCert, false},
		{"ReadCertPool missing", readPoolErr, missing, true},
		{"ReadCertPool empty", readPoolErr, empty, false},
		{"ReadCertPool garbage", readPoolErr, garbage, false},
	}
	for _, tc := range tests {
		t.Run(tc.desc, func(t *testing.T) {
			err := tc.read(tc.path)
			if err == nil {
				t.Fatalf("no error reading %s", tc.path)
			}
			if !strings.Contains(err.Error(), tc.path) {
				t.Errorf("error %q does not name %s", err, tc.path)
			}
			got := map[string]bool{
				"ErrNotFound":    errors.Is(err, ErrNotFound),
				"fs.ErrNotExist": errors.Is(err, fs.ErrNotExist),
			}
			want := map[string]bool{"ErrNotFound": tc.notFound, "fs.ErrNotExist": tc.notFound}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("errors.Is(%v) (-want +got):\n%s", err, diff)
			}
		})
	}
}

func readKeyErr(p string) error  { _, err := ReadKey(p); return err }
func readCertErr(p string) error { _, err := ReadCert(p); return err }
func readPoolErr(p string) error { _, err := ReadCertPool(p); return err }

func TestReadCertAndPool(t *testing.T) {
	a, b := newTestCA(t), newTestCA(t)
	path := filepath.Join(t.TempDir(), "bundle.pem")
	// A key block in the middle must be skipped, not end the bundle.
	bundle := append(append([]byte{}, a.CertPEM...), "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"...)
	bundle = append(bundle, b.CertPEM...)
	if err := WriteCert(path, bundle); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(fs.FileMode(0o644), fi.Mode().Perm()); diff != "" {
		t.Errorf("certificate file mode (-want +got):\n%s", diff)
	}

	first, err := ReadCert(path)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(Fingerprint(a.Cert), Fingerprint(first)); diff != "" {
		t.Errorf("ReadCert returned the wrong certificate (-want +got):\n%s", diff)
	}

	pool, err := ReadCertPool(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, ca := range []*CA{a, b} {
		cert, _, err := ca.Issue(IssueRequest{
			Identity: mustIdentity(t, RoleAgent, "x"), PublicKey: mustKey(t).Public(),
			Usage: UsageClient, Validity: time.Hour,
		})
		if err != nil {
			t.Fatal(err)
		}
		if err := verify(cert, pool, x509.ExtKeyUsageClientAuth); err != nil {
			t.Errorf("certificate from %s does not verify against the pool: %v", ca.Cert.Subject, err)
		}
	}
}

func TestFingerprint(t *testing.T) {
	ca := newTestCA(t)
	sum := sha256.Sum256(ca.Cert.Raw)
	want := "sha256:" + hex.EncodeToString(sum[:])
	if diff := cmp.Diff(want, Fingerprint(ca.Cert)); diff != "" {
		t.Errorf("Fingerprint (-want +got):\n%s", diff)
	}
}
