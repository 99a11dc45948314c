package pki

import (
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

func TestIdentityRoundTrip(t *testing.T) {
	tests := []struct {
		role Role
		name string
		uri  string
	}{
		{RoleAgent, "i-0123456789abcdef0", "spiffe://custody/agent/i-0123456789abcdef0"},
		{RoleResponder, "alice", "spiffe://custody/responder/alice"},
		{RoleCollector, "collector", "spiffe://custody/collector/collector"},
		{RoleAgent, "a", "spiffe://custody/agent/a"},
		{RoleAgent, "web-1.prod_eu", "spiffe://custody/agent/web-1.prod_eu"},
		{RoleAgent, strings.Repeat("x", 128), "spiffe://custody/agent/" + strings.Repeat("x", 128)},
	}
	for _, tc := range tests {
		t.Run(tc.uri, func(t *testing.T) {
			id, err := NewIdentity(tc.role, tc.name)
			if err != nil {
				t.Fatalf("NewIdentity(%q, %q): %v", tc.role, tc.name, err)
			}
			if diff := cmp.Diff(tc.uri, id.String()); diff != "" {
				t.Errorf("String() (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tc.uri, id.URI().String()); diff != "" {
				t.Errorf("URI() (-want +got):\n%s", diff)
			}
			got, err := ParseIdentity(tc.uri)
			if err != nil {
				t.Fatalf("ParseIdentity(%q): %v", tc.uri, err)
			}
			if diff := cmp.Diff(id, got); diff != "" {
				t.Errorf("ParseIdentity (-want +got):\n%s", diff)
			}
		})
	}
}

func TestNewIdentityRejects(t *testing.T) {
	tests := []struct {
		desc string
		role Role
		name string
	}{
		{"unknown role", "admin", "x"},
		{"empty role", "", "x"},
		{"role case", "Agent", "x"},
		{"empty name", RoleAgent, ""},
		{"leading dot", RoleAgent, ".x"},
		{"leading dash", RoleAgent, "-x"},
		{"dot dot", RoleAgent, ".."},
		{"slash", RoleAgent, "a/b"},
		{"space", RoleAgent, "a b"},
		{"percent", RoleAgent, "a%2Fb"},
		{"colon", RoleAgent, "a:b"},
		{"non-ASCII", RoleAgent, "caf\u00e9"},
		{"NUL", RoleAgent, "a\x00"},
		{"too long", RoleAgent, strings.Repeat("x", 129)},
	}
	for _, tc := range tests {
		t.Run(tc.desc, func(t *testing.T) {
			_, err := NewIdentity(tc.role, tc.name)
			if diff := cmp.Diff(ErrBadIdentity, err, cmpopts.EquateErrors()); diff != "" {
				t.Errorf("NewIdentity(%q, %q) error (-want +got):\n%s", tc.role, tc.name, diff)
			}
		})
	}
}

func TestParseIdentityRejects(t *testing.T) {
	tests := []struct {
		desc string
		uri  string
	}{
		{"empty", ""},
		{"wrong scheme", "https://custody/agent/x"},
		{"scheme case", "SPIFFE://custody/agent/x"},
		{"wrong trust domain", "spiffe://other/agent/x"},
		{"trust domain prefix", "spiffe://custody.evil/agent/x"},
		{"trust domain case", "spiffe://Custody/agent/x"},
		{"port", "spiffe://custody:443/agent/x"},
		{"user info", "spiffe://u@custody/agent/x"},
		{"unknown role", "spiffe://custody/admin/x"},
		{"no name", "spiffe://custody/agent"},
		{"empty name", "spiffe://custody/agent/"},
		{"bad name chars", "spiffe://custody/agent/a b"},
		{"extra segment", "spiffe://custody/agent/a/b"},
		{"percent-encoded", "spiffe://custody/agent/%61"},
		{"query", "spiffe://custody/agent/x?y=1"},
		{"fragment", "spiffe://custody/agent/x#y"},
		{"dot segment", "spiffe://custody/agent/../collector/x"},
		{"double slash", "spiffe://custody//agent/x"},
	}
	for _, tc := range tests {
		t.Run(tc.desc, func(t *testing.T) {
			got, err := ParseIdentity(tc.uri)
			if diff := cmp.Diff(ErrBadIdentity, err, cmpopts.EquateErrors()); diff != "" {
				t.Errorf("ParseIdentity(%q) = %v; error (-want +got):\n%s", tc.uri, got, diff)
			}
		})
	}
}

// certWithURIs self-signs a certificate carrying exactly the given URI SANs,
// as an arbitrary issuer (not custody's CA) might.
func certWithURIs(t *testing.T, uris ...string) *x509.Certificate {
	t.Helper()
	key := mustKey(t).(*ecdsa.PrivateKey)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(0xc0ffee),
		Subject:      pkix.Name{CommonName: "subject-under-test"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
	}
	for _, s := range uris {
		u, err := url.Parse(s)
		if err != nil {
			t.Fatal(err)
		}
		tmpl.URIs = append(tmpl.URIs, u)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

func TestIdentityFromCert(t *testing.T) {
	tests := []struct {
		desc    string
		uris    []string
		want    Identity
		wantErr error
	}{
		{
			desc: "one custody URI",
			uris: []string{"spiffe://custody/agent/i-abc"},
			want: Identity{Role: RoleAgent, Name: "i-abc"},
		},
		{
			desc:    "none",
			wantErr: ErrNoIdentity,
		},
		{
			desc:    "two custody URIs",
			uris:    []string{"spiffe://custody/agent/a", "spiffe://custody/responder/b"},
			wantErr: ErrBadIdentity,
		},
		{
			desc:    "custody URI and another",
			uris:    []string{"spiffe://custody/agent/a", "https://example.com/"},
			wantErr: ErrBadIdentity,
		},
		{
			desc:    "foreign trust domain",
			uris:    []string{"spiffe://other/agent/x"},
			wantErr: ErrBadIdentity,
		},
		{
			desc:    "unknown role",
			uris:    []string{"spiffe://custody/admin/x"},
			wantErr: ErrBadIdentity,
		},
		{
			desc:    "percent-encoded name",
			uris:    []string{"spiffe://custody/agent/%61"},
			wantErr: ErrBadIdentity,
		},
	}
	for _, tc := range tests {
		t.Run(tc.desc, func(t *testing.T) {
			got, err := IdentityFromCert(certWithURIs(t, tc.uris...))
			if diff := cmp.Diff(tc.wantErr, err, cmpopts.EquateErrors()); diff != "" {
				t.Fatalf("error (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("identity (-want +got):\n%s", diff)
			}
			if err != nil {
				for _, s := range []string{"subject-under-test", "c0ffee"} {
					if !strings.Contains(err.Error(), s) {
						t.Errorf("error %q does not name the certificate (%q)", err, s)
					}
				}
			}
		})
	}
}

func TestIdentityFromNilCert(t *testing.T) {
	_, err := IdentityFromCert(nil)
	if !errors.Is(err, ErrNoIdentity) {
		t.Errorf("IdentityFromCert(nil) error = %v, want ErrNoIdentity", err)
	}
}

// FuzzParseIdentity checks that the only strings accepted are canonical:
// anything ParseIdentity admits must be exactly what String gives back.
func FuzzParseIdentity(f *testing.F) {
	for _, s := range []string{
		"spiffe://custody/agent/x",
		"spiffe://custody/responder/alice.b_c-d",
		"spiffe://custody/collector/",
		"spiffe://custody/agent/%61",
		"spiffe://other/agent/x",
		"spiffe://custody/agent/a/b",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		id, err := ParseIdentity(s)
		if err != nil {
			if !errors.Is(err, ErrBadIdentity) {
				t.Fatalf("ParseIdentity(%q) error %v does not wrap ErrBadIdentity", s, err)
			}
			return
		}
		if id.String() != s {
			t.Fatalf("ParseIdentity(%q) accepted a non-canonical form of %q", s, id)
		}
		if id.URI().String() != s {
			t.Fatalf("URI() = %q, want %q", id.URI(), s)
		}
		if _, err := NewIdentity(id.Role, id.Name); err != nil {
			t.Fatalf("ParseIdentity(%q) returned an identity NewIdentity rejects: %v", s, err)
		}
	})
}
