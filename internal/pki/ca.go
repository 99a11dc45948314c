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
	"fmt"
	"math/big"
	"net"
	"net/url"
	"path/filepath"
	"time"
)

// clockSkew backdates NotBefore so that a host whose clock runs a little
// behind the collector's can use a certificate the moment it receives it.
const clockSkew = 5 * time.Minute

// maxCSRSize bounds what SignCSR will parse. CSRs arrive from not yet
// authenticated agents; a real one is a few hundred bytes.
const maxCSRSize = 16 << 10

// CA is custody's certificate authority: the root every party trusts and the
// key that issues every identity.
type CA struct {
	Cert    *x509.Certificate
	CertPEM []byte
	Key     crypto.Signer
}

// NewCA creates a self-signed CA with a new P-256 key. MaxPathLen 0 forbids
// intermediates: every certificate custody trusts is issued directly by this
// key, so there is no second key whose compromise would mint identities.
func NewCA(commonName string, validity time.Duration) (*CA, error) {
	if commonName == "" {
		return nil, errors.New("pki: CA common name is empty")
	}
	if validity <= 0 {
		return nil, fmt.Errorf("pki: CA validity %v is not positive", validity)
	}
	key, err := GenerateKey()
	if err != nil {
		return nil, err
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: commonName},
		NotBefore:             now.Add(-clockSkew),
		NotAfter:              now.Add(validity),
		IsCA:                  true,
		BasicConstraintsValid: true,
		MaxPathLen:            0,
		MaxPathLenZero:        true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("pki: create CA certificate %q: %w", commonName, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("pki: parse CA certificate %q: %w", commonName, err)
	}
	return &CA{Cert: cert, CertPEM: EncodeCert(der), Key: key}, nil
}

// LoadCA loads dir/ca.crt and dir/ca.key and checks that they belong
// together, so a mismatched pair fails here rather than producing
// certificates nobody can verify. Missing files yield ErrNotFound.
func LoadCA(dir string) (*CA, error) {
	cert, err := ReadCert(filepath.Join(dir, CACertFile))
	if err != nil {
		return nil, err
	}
	if !cert.IsCA {
		return nil, fmt.Errorf("pki: %s: certificate %s is not a CA", filepath.Join(dir, CACertFile), describeCert(cert))
	}
	keyPath := filepath.Join(dir, CAKeyFile)
	key, err := ReadKey(keyPath)
	if err != nil {
		return nil, err
	}
	pub, ok := key.Public().(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(cert.PublicKey) {
		return nil, fmt.Errorf("pki: %s does not match the public key of %s", keyPath, filepath.Join(dir, CACertFile))
	}
	return &CA{Cert: cert, CertPEM: EncodeCert(cert.Raw), Key: key}, nil
}

// Usage is what an issued certificate may be used for.
type Usage int

// Usages. Each maps to exactly the key usages it needs and nothing more, so
// that, for example, an agent's client certificate cannot serve TLS.
const (
	UsageServer Usage = iota + 1
	UsageClient
	UsageServerClient
	UsageSigning
)

func (u Usage) String() string {
	switch u {
	case UsageServer:
		return "server"
	case UsageClient:
		return "client"
	case UsageServerClient:
		return "server+client"
	case UsageSigning:
		return "signing"
	}
	return fmt.Sprintf("Usage(%d)", int(u))
}

// IssueRequest describes a certificate to issue.
type IssueRequest struct {
	Identity  Identity
	PublicKey crypto.PublicKey // *ecdsa.PublicKey (P-256, P-384) or ed25519.PublicKey
	Usage     Usage
	Validity  time.Duration
	DNSNames  []string
	IPs       []net.IP
}

// Issue signs a certificate for req. The subject (CN = name, OU = role) is
// only for humans reading the certificate; the URI SAN is the identity.
// NotAfter is capped at the CA's own NotAfter, since the chain stops
// verifying then anyway and a leaf should not claim otherwise.
func (ca *CA) Issue(req IssueRequest) (*x509.Certificate, []byte, error) {
	if req.Validity <= 0 {
		return nil, nil, fmt.Errorf("pki: issue %s: validity %v is not positive", req.Identity, req.Validity)
	}
	now := time.Now()
	return ca.issue(req, now.Add(-clockSkew), now.Add(req.Validity))
}

// issue signs with explicit validity bounds; tests use it to mint expired
// certificates.
func (ca *CA) issue(req IssueRequest, notBefore, notAfter time.Time) (*x509.Certificate, []byte, error) {
	if err := req.Identity.validate(); err != nil {
		return nil, nil, fmt.Errorf("pki: issue: %w", err)
	}
	if err := checkPublicKey(req.PublicKey); err != nil {
		return nil, nil, fmt.Errorf("pki: issue %s: %w", req.Identity, err)
	}
	if notAfter.After(ca.Cert.NotAfter) {
		notAfter = ca.Cert.NotAfter
	}
	if !notAfter.After(notBefore) {
		return nil, nil, fmt.Errorf("pki: issue %s: NotAfter %v is not after NotBefore %v", req.Identity, notAfter, notBefore)
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject: pkix.Name{
			CommonName:         req.Identity.Name,
			OrganizationalUnit: []string{string(req.Identity.Role)},
		},
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		BasicConstraintsValid: true,
		URIs:                  []*url.URL{req.Identity.URI()},
		DNSNames:              req.DNSNames,
		IPAddresses:           req.IPs,
	}
	switch req.Usage {
	case UsageServer:
		tmpl.KeyUsage = x509.KeyUsageDigitalSignature
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
	case UsageClient:
		tmpl.KeyUsage = x509.KeyUsageDigitalSignature
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	case UsageServerClient:
		tmpl.KeyUsage = x509.KeyUsageDigitalSignature
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
	case UsageSigning:
		// ContentCommitment (non-repudiation) states the key signs content
		// whose origin the signer stands behind: the manifest.
		tmpl.KeyUsage = x509.KeyUsageDigitalSignature | x509.KeyUsageContentCommitment
	default:
		return nil, nil, fmt.Errorf("pki: issue %s: unknown usage %v", req.Identity, req.Usage)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, req.PublicKey, ca.Key)
	if err != nil {
		return nil, nil, fmt.Errorf("pki: issue %s: %w", req.Identity, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, fmt.Errorf("pki: issue %s: parse: %w", req.Identity, err)
	}
	return cert, EncodeCert(der), nil
}

// checkPublicKey admits the key types custody issues for. RSA is refused at
// any size: nothing in custody generates RSA keys, and accepting them would
// only widen what a hostile enrolment request can make the CA sign.
func checkPublicKey(pub crypto.PublicKey) error {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		if k.Curve == elliptic.P256() || k.Curve == elliptic.P384() {
			return nil
		}
		return fmt.Errorf("ECDSA curve %s not accepted, want P-256 or P-384", k.Curve.Params().Name)
	case ed25519.PublicKey:
		if len(k) == ed25519.PublicKeySize {
			return nil
		}
		return fmt.Errorf("public Ed25519 key is %d bytes, want %d", len(k), ed25519.PublicKeySize)
	case *rsa.PublicKey:
		return fmt.Errorf("RSA-%d key not accepted, want ECDSA P-256/P-384 or Ed25519", k.N.BitLen())
	case nil:
		return errors.New("no public key")
	default:
		return fmt.Errorf("%T key not accepted, want ECDSA P-256/P-384 or Ed25519", pub)
	}
}

// randomSerial returns a positive 128-bit random serial. An unpredictable
// serial keeps a requester from knowing the exact bytes the CA will sign (the
// precondition of the 2008 rogue-CA collision attack), and 128 bits makes
// duplicate serials impossible in practice without the CA keeping state.
func randomSerial() (*big.Int, error) {
	limit := new(big.Int).Lsh(big.NewInt(1), 128)
	for {
		n, err := rand.Int(rand.Reader, limit)
		if err != nil {
			return nil, fmt.Errorf("pki: serial number: %w", err)
		}
		if n.Sign() > 0 {
			return n, nil
		}
	}
}

// CreateCSR returns a DER certificate signing request for key. It carries no
// subject or SANs: the collector decides the identity from the join
// credential, never from what the requester asks for.
func CreateCSR(key crypto.Signer) ([]byte, error) {
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		return nil, fmt.Errorf("pki: create CSR: %w", err)
	}
	return der, nil
}

// SignCSR issues a client certificate for id over the key in a DER CSR. The
// CSR's self-signature proves the requester holds the private key; anything
// else in it — subject, SANs, extensions — is ignored, because the caller has
// already decided who the requester is from its join credential. Failures
// about the CSR itself wrap ErrBadCSR.
func (ca *CA) SignCSR(csrDER []byte, id Identity, validity time.Duration) (*x509.Certificate, []byte, error) {
	if len(csrDER) > maxCSRSize {
		return nil, nil, fmt.Errorf("pki: CSR for %s is %d bytes, limit %d: %w", id, len(csrDER), maxCSRSize, ErrBadCSR)
	}
	csr, err := x509.ParseCertificateRequest(csrDER)
	if err != nil {
		return nil, nil, fmt.Errorf("pki: CSR for %s: %w: %w", id, ErrBadCSR, err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, nil, fmt.Errorf("pki: CSR for %s: %w: %w", id, ErrBadCSR, err)
	}
	if err := checkPublicKey(csr.PublicKey); err != nil {
		return nil, nil, fmt.Errorf("pki: CSR for %s: %w: %w", id, ErrBadCSR, err)
	}
	return ca.Issue(IssueRequest{
		Identity:  id,
		PublicKey: csr.PublicKey,
		Usage:     UsageClient,
		Validity:  validity,
	})
}
