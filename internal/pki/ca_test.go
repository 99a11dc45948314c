package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"net"
	"net/url"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

func TestNewCA(t *testing.T) {
	before := time.Now()
	ca, err := NewCA("custody test CA", 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	type caProps struct {
		CN             string
		IsCA           bool
		MaxPathLen     int
		MaxPathLenZero bool
		KeyUsage       x509.KeyUsage
		SelfSigned     bool
		BackdatedSkew  bool
		PEMRoundTrips  bool
	}
	got := caProps{
		CN:             ca.Cert.Subject.CommonName,
		IsCA:           ca.Cert.IsCA,
		MaxPathLen:     ca.Cert.MaxPathLen,
		MaxPathLenZero: ca.Cert.MaxPathLenZero,
		KeyUsage:       ca.Cert.KeyUsage,
		SelfSigned:     ca.Cert.CheckSignatureFrom(ca.Cert) == nil,
		BackdatedSkew:  !ca.Cert.NotBefore.After(before.Add(-clockSkew + time.Second)),
		PEMRoundTrips:  string(ca.CertPEM) == string(EncodeCert(ca.Cert.Raw)),
	}
	want := caProps{
		CN:             "custody test CA",
		IsCA:           true,
		MaxPathLen:     0,
		MaxPathLenZero: true,
		KeyUsage:       x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		SelfSigned:     true,
		BackdatedSkew:  true,
		PEMRoundTrips:  true,
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("CA certificate (-want +got):\n%s", diff)
	}
}

func TestNewCARejects(t *testing.T) {
	for _, tc := range []struct {
		desc     string
		cn       string
		validity time.Duration
	}{
		{"empty name", "", time.Hour},
		{"zero validity", "x", 0},
		{"negative validity", "x", -time.Hour},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			if _, err := NewCA(tc.cn, tc.validity); err == nil {
				t.Errorf("NewCA(%q, %v) succeeded", tc.cn, tc.validity)
			}
		})
	}
}

// issued is what a test checks of an issued certificate.
type issued struct {
	Identity    Identity
	CN          string
	OU          []string
	KeyUsage    x509.KeyUsage
	ExtKeyUsage []x509.ExtKeyUsage
	DNSNames    []string
	IPs         []string
	IsCA        bool
}

func describeIssued(t *testing.T, cert *x509.Certificate) issued {
	t.Helper()
	id, err := IdentityFromCert(cert)
	if err != nil {
		t.Fatal(err)
	}
	var ips []string
	for _, ip := range cert.IPAddresses {
		ips = append(ips, ip.String())
	}
	return issued{
		Identity:    id,
		CN:          cert.Subject.CommonName,
		OU:          cert.Subject.OrganizationalUnit,
		KeyUsage:    cert.KeyUsage,
		ExtKeyUsage: cert.ExtKeyUsage,
		DNSNames:    cert.DNSNames,
		IPs:         ips,
		IsCA:        cert.IsCA,
	}
}

func TestIssue(t *testing.T) {
	ca := newTestCA(t)
	edKey, err := GenerateSigningKey()
	if err != nil {
		t.Fatal(err)
	}
	p384, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	collector := mustIdentity(t, RoleCollector, "c1")
	agent := mustIdentity(t, RoleAgent, "i-1")

	tests := []struct {
		desc      string
		req       IssueRequest
		want      issued
		verifyFor []x509.ExtKeyUsage
	}{
		{
			desc: "server",
			req: IssueRequest{Identity: collector, PublicKey: mustKey(t).Public(), Usage: UsageServer,
				DNSNames: []string{"collector.example"}, IPs: []net.IP{net.ParseIP("10.0.0.1")}},
			want: issued{Identity: collector, CN: "c1", OU: []string{"collector"},
				KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
				DNSNames: []string{"collector.example"}, IPs: []string{"10.0.0.1"}},
			verifyFor: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		},
		{
			desc: "client",
			req:  IssueRequest{Identity: agent, PublicKey: p384.Public(), Usage: UsageClient},
			want: issued{Identity: agent, CN: "i-1", OU: []string{"agent"},
				KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}},
			verifyFor: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		},
		{
			desc: "server and client",
			req:  IssueRequest{Identity: collector, PublicKey: mustKey(t).Public(), Usage: UsageServerClient},
			want: issued{Identity: collector, CN: "c1", OU: []string{"collector"},
				KeyUsage:    x509.KeyUsageDigitalSignature,
				ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}},
			verifyFor: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		},
		{
			desc: "signing",
			req:  IssueRequest{Identity: collector, PublicKey: edKey.Public(), Usage: UsageSigning},
			want: issued{Identity: collector, CN: "c1", OU: []string{"collector"},
				KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageContentCommitment},
			verifyFor: []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
		},
	}
	for _, tc := range tests {
		t.Run(tc.desc, func(t *testing.T) {
			tc.req.Validity = time.Hour
			before := time.Now()
			cert, certPEM, err := ca.Issue(tc.req)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, describeIssued(t, cert)); diff != "" {
				t.Errorf("issued certificate (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(EncodeCert(cert.Raw), certPEM); diff != "" {
				t.Errorf("PEM (-want +got):\n%s", diff)
			}
			if cert.NotBefore.After(before.Add(-clockSkew + time.Second)) {
				t.Errorf("NotBefore %v is not backdated by %v", cert.NotBefore, clockSkew)
			}
			if n := cert.SerialNumber.BitLen(); n == 0 || n > 128 {
				t.Errorf("serial number is %d bits, want 1..128", n)
			}
			for _, u := range tc.verifyFor {
				if err := verify(cert, poolOf(ca), u); err != nil {
					t.Errorf("verify for %v: %v", u, err)
				}
			}
		})
	}
}

func TestIssueSerialsDiffer(t *testing.T) {
	ca := newTestCA(t)
	req := IssueRequest{Identity: mustIdentity(t, RoleAgent, "a"), PublicKey: mustKey(t).Public(), Usage: UsageClient, Validity: time.Hour}
	a, _, err := ca.Issue(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _, err := ca.Issue(req)
	if err != nil {
		t.Fatal(err)
	}
	if a.SerialNumber.Cmp(b.SerialNumber) == 0 {
		t.Errorf("two issues share serial %x", a.SerialNumber)
	}
}

func TestIssueCapsValidityAtCA(t *testing.T) {
	ca := newTestCA(t) // valid for an hour
	cert, _, err := ca.Issue(IssueRequest{
		Identity: mustIdentity(t, RoleAgent, "a"), PublicKey: mustKey(t).Public(),
		Usage: UsageClient, Validity: 365 * 24 * time.Hour,
	})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(ca.Cert.NotAfter, cert.NotAfter); diff != "" {
		t.Errorf("NotAfter (-want +got):\n%s", diff)
	}
}

func TestIssueRejects(t *testing.T) {
	ca := newTestCA(t)
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	p224, err := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	good := IssueRequest{Identity: mustIdentity(t, RoleAgent, "a"), PublicKey: mustKey(t).Public(), Usage: UsageClient, Validity: time.Hour}
	tests := []struct {
		desc    string
		edit    func(*IssueRequest)
		wantErr error
	}{
		{"zero identity", func(r *IssueRequest) { r.Identity = Identity{} }, ErrBadIdentity},
		{"unknown role", func(r *IssueRequest) { r.Identity = Identity{Role: "admin", Name: "a"} }, ErrBadIdentity},
		{"bad name", func(r *IssueRequest) { r.Identity = Identity{Role: RoleAgent, Name: "a/b"} }, ErrBadIdentity},
		{"no key", func(r *IssueRequest) { r.PublicKey = nil }, nil},
		{"RSA key", func(r *IssueRequest) { r.PublicKey = rsaKey.Public() }, nil},
		{"P-224 key", func(r *IssueRequest) { r.PublicKey = p224.Public() }, nil},
		{"short Ed25519 key", func(r *IssueRequest) { r.PublicKey = ed25519.PublicKey(make([]byte, 16)) }, nil},
		{"zero usage", func(r *IssueRequest) { r.Usage = 0 }, nil},
		{"unknown usage", func(r *IssueRequest) { r.Usage = UsageSigning + 1 }, nil},
		{"zero validity", func(r *IssueRequest) { r.Validity = 0 }, nil},
	}
	for _, tc := range tests {
		t.Run(tc.desc, func(t *testing.T) {
			req := good
			tc.edit(&req)
			_, _, err := ca.Issue(req)
			if err == nil {
				t.Fatal("Issue succeeded")
			}
			if tc.wantErr != nil && !errors.Is(err, tc.wantErr) {
				t.Errorf("error %v, want %v", err, tc.wantErr)
			}
		})
	}
}

func TestSignCSR(t *testing.T) {
	ca := newTestCA(t)
	_, edKey, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	p384, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	evil, _ := url.Parse("spiffe://custody/collector/evil")
	// What a hostile requester might ask for; all of it must be ignored.
	greedy := &x509.CertificateRequest{
		Subject:        pkix.Name{CommonName: "collector", OrganizationalUnit: []string{"collector"}},
		DNSNames:       []string{"collector.example"},
		IPAddresses:    []net.IP{net.ParseIP("10.0.0.1")},
		EmailAddresses: []string{"root@example.com"},
		URIs:           []*url.URL{evil},
	}
	id := mustIdentity(t, RoleAgent, "i-0abc")
	want := issued{
		Identity: id, CN: "i-0abc", OU: []string{"agent"},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	tests := []struct {
		desc string
		key  crypto.Signer
		tmpl *x509.CertificateRequest
	}{
		{"plain P-256", mustKey(t), &x509.CertificateRequest{}},
		{"CreateCSR P-384", p384, nil},
		{"Ed25519", edKey, nil},
		{"requests SANs and subject", mustKey(t), greedy},
	}
	for _, tc := range tests {
		t.Run(tc.desc, func(t *testing.T) {
			var csr []byte
			var err error
			if tc.tmpl == nil {
				csr, err = CreateCSR(tc.key)
			} else {
				csr, err = x509.CreateCertificateRequest(rand.Reader, tc.tmpl, tc.key)
			}
			if err != nil {
				t.Fatal(err)
			}
			cert, certPEM, err := ca.SignCSR(csr, id, time.Hour)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(want, describeIssued(t, cert)); diff != "" {
				t.Errorf("issued certificate (-want +got):\n%s", diff)
			}
			if len(cert.EmailAddresses) != 0 || len(cert.URIs) != 1 {
				t.Errorf("certificate carries requested names: emails %v, URIs %v", cert.EmailAddresses, cert.URIs)
			}
			if !cert.PublicKey.(interface{ Equal(crypto.PublicKey) bool }).Equal(tc.key.Public()) {
				t.Errorf("certificate is not for the CSR's key")
			}
			if diff := cmp.Diff(EncodeCert(cert.Raw), certPEM); diff != "" {
				t.Errorf("PEM (-want +got):\n%s", diff)
			}
			if err := verify(cert, poolOf(ca), x509.ExtKeyUsageClientAuth); err != nil {
				t.Errorf("verify as client: %v", err)
			}
			if err := verify(cert, poolOf(ca), x509.ExtKeyUsageServerAuth); err == nil {
				t.Errorf("an enrolled agent certificate verifies as a server")
			}
		})
	}
}

func TestSignCSRRejects(t *testing.T) {
	ca := newTestCA(t)
	id := mustIdentity(t, RoleAgent, "a")
	csr, err := CreateCSR(mustKey(t))
	if err != nil {
		t.Fatal(err)
	}
	flipped := append([]byte(nil), csr...)
	flipped[len(flipped)-1] ^= 0x01 // inside the signature

	csrFor := func(key crypto.Signer) []byte {
		t.Helper()
		der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
		if err != nil {
			t.Fatal(err)
		}
		return der
	}
	rsa1024, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	rsa2048, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	p224, err := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		desc string
		csr  []byte
	}{
		{"broken signature", flipped},
		{"empty", nil},
		{"garbage", []byte("not a CSR")},
		{"truncated", csr[:len(csr)/2]},
		{"oversized", make([]byte, maxCSRSize+1)},
		{"RSA-1024", csrFor(rsa1024)},
		{"RSA-2048", csrFor(rsa2048)},
		{"P-224", csrFor(p224)},
	}
	for _, tc := range tests {
		t.Run(tc.desc, func(t *testing.T) {
			cert, _, err := ca.SignCSR(tc.csr, id, time.Hour)
			if diff := cmp.Diff(ErrBadCSR, err, cmpopts.EquateErrors()); diff != "" {
				t.Errorf("SignCSR error (-want +got):\n%s", diff)
			}
			if cert != nil {
				t.Errorf("SignCSR returned a certificate with its error")
			}
		})
	}

	t.Run("bad identity", func(t *testing.T) {
		_, _, err := ca.SignCSR(csr, Identity{Role: RoleAgent, Name: "../x"}, time.Hour)
		if diff := cmp.Diff(ErrBadIdentity, err, cmpopts.EquateErrors()); diff != "" {
			t.Errorf("SignCSR error (-want +got):\n%s", diff)
		}
	})
}

// FuzzSignCSR feeds SignCSR what an unauthenticated enrolling agent could
// send. Whatever it is, SignCSR must not panic, must fail with ErrBadCSR, or
// must issue a client certificate carrying only the caller's identity.
func FuzzSignCSR(f *testing.F) {
	ca := newTestCA(f)
	id := mustIdentity(f, RoleAgent, "fuzz")
	csr, err := CreateCSR(mustKey(f))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(csr)
	f.Add([]byte{})
	f.Add([]byte{0x30, 0x82, 0x01, 0x00})
	f.Fuzz(func(t *testing.T, der []byte) {
		cert, _, err := ca.SignCSR(der, id, time.Hour)
		if err != nil {
			if !errors.Is(err, ErrBadCSR) {
				t.Fatalf("error %v does not wrap ErrBadCSR", err)
			}
			return
		}
		got, err := IdentityFromCert(cert)
		if err != nil {
			t.Fatal(err)
		}
		if got != id || len(cert.DNSNames) != 0 || len(cert.IPAddresses) != 0 || len(cert.EmailAddresses) != 0 {
			t.Fatalf("issued %v with DNS %v IPs %v emails %v", got, cert.DNSNames, cert.IPAddresses, cert.EmailAddresses)
		}
	})
}
