package pki

import (
	"crypto"
	"crypto/x509"
	"errors"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

func initDir(t *testing.T, opts InitOptions) string {
	t.Helper()
	if opts.Dir == "" {
		opts.Dir = filepath.Join(t.TempDir(), "pki")
	}
	if err := Init(opts); err != nil {
		t.Fatalf("Init: %v", err)
	}
	return opts.Dir
}

func TestInitFiles(t *testing.T) {
	dir := initDir(t, InitOptions{})
	got := map[string]fs.FileMode{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		got[rel] = fi.Mode()
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]fs.FileMode{
		".":             fs.ModeDir | 0o700,
		CACertFile:      0o644,
		CAKeyFile:       0o600,
		ServerCertFile:  0o644,
		ServerKeyFile:   0o600,
		SigningCertFile: 0o644,
		SigningKeyFile:  0o600,
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("directory contents and modes (-want +got):\n%s", diff)
	}
}

func TestInitContents(t *testing.T) {
	tests := []struct {
		desc       string
		opts       InitOptions
		wantServer issued
	}{
		{
			desc: "defaults",
			wantServer: issued{
				Identity: Identity{Role: RoleCollector, Name: "collector"}, CN: "collector", OU: []string{"collector"},
				KeyUsage:    x509.KeyUsageDigitalSignature,
				ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
				DNSNames:    []string{"localhost"}, IPs: []string{"127.0.0.1", "::1"},
			},
		},
		{
			desc: "custom",
			opts: InitOptions{
				CollectorName: "eu-west-1a", DNSNames: []string{"collector.internal", "collector"},
				IPs: []net.IP{net.ParseIP("10.1.2.3")}, CAValidity: 48 * time.Hour, ServerValidity: 24 * time.Hour,
			},
			wantServer: issued{
				Identity: Identity{Role: RoleCollector, Name: "eu-west-1a"}, CN: "eu-west-1a", OU: []string{"collector"},
				KeyUsage:    x509.KeyUsageDigitalSignature,
				ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
				DNSNames:    []string{"collector.internal", "collector"}, IPs: []string{"10.1.2.3"},
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.desc, func(t *testing.T) {
			dir := initDir(t, tc.opts)
			ca, err := LoadCA(dir)
			if err != nil {
				t.Fatalf("LoadCA: %v", err)
			}
			if !ca.Cert.IsCA {
				t.Errorf("loaded CA certificate is not a CA")
			}

			server, err := ReadCert(filepath.Join(dir, ServerCertFile))
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.wantServer, describeIssued(t, server)); diff != "" {
				t.Errorf("%s (-want +got):\n%s", ServerCertFile, diff)
			}
			for _, u := range []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth} {
				if err := verify(server, poolOf(ca), u); err != nil {
					t.Errorf("%s does not verify for %v: %v", ServerCertFile, u, err)
				}
			}
			if _, err := LoadKeypair(filepath.Join(dir, ServerCertFile), filepath.Join(dir, ServerKeyFile)); err != nil {
				t.Errorf("collector key pair: %v", err)
			}
			if tc.opts.ServerValidity != 0 {
				if got := server.NotAfter.Sub(server.NotBefore); got != tc.opts.ServerValidity+clockSkew {
					t.Errorf("server certificate lifetime %v, want %v", got, tc.opts.ServerValidity+clockSkew)
				}
			}

			signing, err := ReadCert(filepath.Join(dir, SigningCertFile))
			if err != nil {
				t.Fatal(err)
			}
			wantSigning := issued{
				Identity: tc.wantServer.Identity, CN: tc.wantServer.CN, OU: []string{"collector"},
				KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageContentCommitment,
			}
			if diff := cmp.Diff(wantSigning, describeIssued(t, signing)); diff != "" {
				t.Errorf("%s (-want +got):\n%s", SigningCertFile, diff)
			}
			if err := signing.CheckSignatureFrom(ca.Cert); err != nil {
				t.Errorf("%s not signed by the CA: %v", SigningCertFile, err)
			}
			signingKey, err := ReadKey(filepath.Join(dir, SigningKeyFile))
			if err != nil {
				t.Fatal(err)
			}
			if !signingKey.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(signing.PublicKey) {
				t.Errorf("%s does not match %s", SigningKeyFile, SigningCertFile)
			}
			if signing.PublicKeyAlgorithm != x509.Ed25519 {
				t.Errorf("signing key algorithm %v, want Ed25519", signing.PublicKeyAlgorithm)
			}
		})
	}
}

func TestInitRefusesTwice(t *testing.T) {
	dir := initDir(t, InitOptions{})
	before, err := os.ReadFile(filepath.Join(dir, CAKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	err = Init(InitOptions{Dir: dir})
	if diff := cmp.Diff(ErrExists, err, cmpopts.EquateErrors()); diff != "" {
		t.Errorf("second Init error (-want +got):\n%s", diff)
	}
	after, err := os.ReadFile(filepath.Join(dir, CAKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(before, after); diff != "" {
		t.Errorf("second Init changed %s", CAKeyFile)
	}
}

func TestInitRejects(t *testing.T) {
	tests := []struct {
		desc    string
		noDir   bool
		name    string
		wantErr error
	}{
		{desc: "bad collector name", name: "a b", wantErr: ErrBadIdentity},
		{desc: "no directory", noDir: true},
	}
	for _, tc := range tests {
		t.Run(tc.desc, func(t *testing.T) {
			opts := InitOptions{Dir: filepath.Join(t.TempDir(), "pki"), CollectorName: tc.name}
			if tc.noDir {
				opts.Dir = ""
			}
			err := Init(opts)
			if err == nil {
				t.Fatal("Init succeeded")
			}
			if tc.wantErr != nil && !errors.Is(err, tc.wantErr) {
				t.Errorf("error %v, want %v", err, tc.wantErr)
			}
			if opts.Dir != "" {
				if _, err := os.Stat(filepath.Join(opts.Dir, CAKeyFile)); !errors.Is(err, fs.ErrNotExist) {
					t.Errorf("failed Init left %s behind", CAKeyFile)
				}
			}
		})
	}
}

func TestLoadCAMissing(t *testing.T) {
	dir := initDir(t, InitOptions{})
	if err := os.Remove(filepath.Join(dir, CAKeyFile)); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{dir, filepath.Join(t.TempDir(), "nothing")} {
		_, err := LoadCA(d)
		if diff := cmp.Diff(ErrNotFound, err, cmpopts.EquateErrors()); diff != "" {
			t.Errorf("LoadCA(%s) error (-want +got):\n%s", d, diff)
		}
	}
}

func TestLoadCAMismatchedKey(t *testing.T) {
	dir := initDir(t, InitOptions{})
	if err := os.Remove(filepath.Join(dir, CAKeyFile)); err != nil {
		t.Fatal(err)
	}
	if err := WriteKey(filepath.Join(dir, CAKeyFile), mustKey(t)); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadCA(dir); err == nil {
		t.Errorf("LoadCA accepted a key that does not match ca.crt")
	}
}

func TestIssueResponder(t *testing.T) {
	dir := initDir(t, InitOptions{})
	certPath, keyPath, err := IssueResponder(dir, "alice", 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	wantCert, wantKey := filepath.Join(dir, "responder-alice.crt"), filepath.Join(dir, "responder-alice.key")
	if diff := cmp.Diff([]string{wantCert, wantKey}, []string{certPath, keyPath}); diff != "" {
		t.Errorf("paths (-want +got):\n%s", diff)
	}
	modes := map[string]fs.FileMode{}
	for _, p := range []string{certPath, keyPath} {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		modes[filepath.Base(p)] = fi.Mode().Perm()
	}
	if diff := cmp.Diff(map[string]fs.FileMode{"responder-alice.crt": 0o644, "responder-alice.key": 0o600}, modes); diff != "" {
		t.Errorf("modes (-want +got):\n%s", diff)
	}

	kp, err := LoadKeypair(certPath, keyPath)
	if err != nil {
		t.Fatal(err)
	}
	want := issued{
		Identity: Identity{Role: RoleResponder, Name: "alice"}, CN: "alice", OU: []string{"responder"},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	if diff := cmp.Diff(want, describeIssued(t, kp.Current().Leaf)); diff != "" {
		t.Errorf("responder certificate (-want +got):\n%s", diff)
	}
	roots, err := ReadCertPool(filepath.Join(dir, CACertFile))
	if err != nil {
		t.Fatal(err)
	}
	if err := verify(kp.Current().Leaf, roots, x509.ExtKeyUsageClientAuth); err != nil {
		t.Errorf("responder certificate does not verify: %v", err)
	}

	_, _, err = IssueResponder(dir, "alice", 24*time.Hour)
	if diff := cmp.Diff(ErrExists, err, cmpopts.EquateErrors()); diff != "" {
		t.Errorf("reissue error (-want +got):\n%s", diff)
	}
	after, err := LoadKeypair(certPath, keyPath)
	if err != nil {
		t.Fatalf("refused reissue broke the existing key pair: %v", err)
	}
	if diff := cmp.Diff(Fingerprint(kp.Current().Leaf), Fingerprint(after.Current().Leaf)); diff != "" {
		t.Errorf("refused reissue changed the certificate (-want +got):\n%s", diff)
	}
}

func TestIssueResponderRejects(t *testing.T) {
	dir := initDir(t, InitOptions{})
	tests := []struct {
		desc     string
		dir      string
		name     string
		validity time.Duration
		wantErr  error
	}{
		{"path traversal", dir, "../evil", time.Hour, ErrBadIdentity},
		{"empty name", dir, "", time.Hour, ErrBadIdentity},
		{"no CA", filepath.Join(t.TempDir(), "empty"), "bob", time.Hour, ErrNotFound},
		{"zero validity", dir, "bob", 0, nil},
	}
	for _, tc := range tests {
		t.Run(tc.desc, func(t *testing.T) {
			_, _, err := IssueResponder(tc.dir, tc.name, tc.validity)
			if err == nil {
				t.Fatal("IssueResponder succeeded")
			}
			if tc.wantErr != nil && !errors.Is(err, tc.wantErr) {
				t.Errorf("error %v, want %v", err, tc.wantErr)
			}
		})
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	slices.Sort(names)
	want := []string{CACertFile, CAKeyFile, ServerCertFile, ServerKeyFile, SigningCertFile, SigningKeyFile}
	slices.Sort(want)
	if diff := cmp.Diff(want, names); diff != "" {
		t.Errorf("failed issues left files behind (-want +got):\n%s", diff)
	}
}
