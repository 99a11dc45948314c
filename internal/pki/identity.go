package pki

import (
	"crypto/x509"
	"fmt"
	"net/url"
	"strings"
)

// Role is the kind of party an identity names. Authorization is decided by
// role first: the agent-facing service admits only agents, the responder API
// only responders.
type Role string

// The roles custody knows. There is deliberately no wildcard or admin role.
const (
	RoleAgent     Role = "agent"
	RoleResponder Role = "responder"
	RoleCollector Role = "collector"
)

const (
	trustDomain   = "custody"
	uriPrefix     = "spiffe://" + trustDomain + "/"
	maxNameLength = 128
)

// Valid reports whether r is one of the known roles.
func (r Role) Valid() bool {
	switch r {
	case RoleAgent, RoleResponder, RoleCollector:
		return true
	}
	return false
}

// Identity is who a certificate speaks for: spiffe://custody/<role>/<name>.
type Identity struct {
	Role Role
	Name string
}

// NewIdentity returns the identity for role and name, or an error wrapping
// ErrBadIdentity. Names are restricted to ^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$
// so that an identity is also safe as a file name and an object-key segment,
// and so that its URI has exactly one spelling.
func NewIdentity(role Role, name string) (Identity, error) {
	if !role.Valid() {
		return Identity{}, fmt.Errorf("pki: role %q: %w", role, ErrBadIdentity)
	}
	if !validName(name) {
		return Identity{}, fmt.Errorf("pki: name %q: %w", name, ErrBadIdentity)
	}
	return Identity{Role: role, Name: name}, nil
}

func validName(name string) bool {
	if len(name) == 0 || len(name) > maxNameLength {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case i > 0 && (c == '.' || c == '_' || c == '-'):
		default:
			return false
		}
	}
	return true
}

// validate re-checks an Identity that may have been built as a struct
// literal rather than through NewIdentity.
func (id Identity) validate() error {
	_, err := NewIdentity(id.Role, id.Name)
	return err
}

// URI returns spiffe://custody/<role>/<name>.
func (id Identity) URI() *url.URL {
	return &url.URL{Scheme: "spiffe", Host: trustDomain, Path: "/" + string(id.Role) + "/" + id.Name}
}

// String returns the identity's URI.
func (id Identity) String() string {
	return uriPrefix + string(id.Role) + "/" + id.Name
}

// ParseIdentity parses the canonical URI form of an identity. Only the exact
// spelling String produces is accepted — no upper-case scheme or host, no
// percent-encoding, port, user info, query or fragment — so that two
// different strings can never name the same identity.
func ParseIdentity(uri string) (Identity, error) {
	rest, ok := strings.CutPrefix(uri, uriPrefix)
	if !ok {
		return Identity{}, fmt.Errorf("pki: identity %q is not under %s: %w", uri, uriPrefix, ErrBadIdentity)
	}
	role, name, ok := strings.Cut(rest, "/")
	if !ok {
		return Identity{}, fmt.Errorf("pki: identity %q has no name: %w", uri, ErrBadIdentity)
	}
	id, err := NewIdentity(Role(role), name)
	if err != nil {
		return Identity{}, fmt.Errorf("pki: identity %q: %w", uri, err)
	}
	return id, nil
}

// IdentityFromCert returns the identity a certificate carries. A certificate
// with no URI SAN yields ErrNoIdentity; one with several URI SANs, or whose
// single URI SAN is not a valid custody identity, yields ErrBadIdentity —
// refusing rather than choosing one keeps the mapping from certificate to
// identity unambiguous. It does not verify the certificate: callers must pass
// a certificate from a verified chain (see PeerIdentity).
func IdentityFromCert(cert *x509.Certificate) (Identity, error) {
	if cert == nil {
		return Identity{}, fmt.Errorf("pki: nil certificate: %w", ErrNoIdentity)
	}
	switch len(cert.URIs) {
	case 0:
		return Identity{}, fmt.Errorf("pki: certificate %s: %w", describeCert(cert), ErrNoIdentity)
	case 1:
	default:
		return Identity{}, fmt.Errorf("pki: certificate %s has %d URI SANs, want exactly one: %w",
			describeCert(cert), len(cert.URIs), ErrBadIdentity)
	}
	id, err := ParseIdentity(cert.URIs[0].String())
	if err != nil {
		return Identity{}, fmt.Errorf("pki: certificate %s: %w", describeCert(cert), err)
	}
	return id, nil
}

func describeCert(cert *x509.Certificate) string {
	serial := "<none>"
	if cert.SerialNumber != nil {
		serial = cert.SerialNumber.Text(16)
	}
	return fmt.Sprintf("%q (serial %s)", cert.Subject.String(), serial)
}
