package pki

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"sync/atomic"
)

// ServerTLSConfig returns the collector's TLS configuration. A client
// certificate is verified against clientCAs when presented but not required,
// because an enrolling agent has none yet; every RPC other than enrolment
// must therefore authorize from PeerIdentity, which fails without one.
func ServerTLSConfig(cert tls.Certificate, clientCAs *x509.CertPool) *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
		ClientCAs:    clientCAs,
		ClientAuth:   tls.VerifyClientCertIfGiven,
		NextProtos:   []string{"h2"},
	}
}

// ClientTLSConfig returns the TLS configuration agents and responders use to
// reach the collector. With keys nil no client certificate is sent (agent
// enrolment). Otherwise the certificate is fetched from keys at every
// handshake, so a renewed certificate is used from the next connection on.
//
// Beyond chain and host name verification, the server must carry a
// collector identity: any other certificate the CA issued (an agent's, a
// responder's) is refused as a server even if its names happened to match.
func ClientTLSConfig(roots *x509.CertPool, serverName string, keys *Keypair) *tls.Config {
	cfg := &tls.Config{
		MinVersion:       tls.VersionTLS13,
		RootCAs:          roots,
		ServerName:       serverName,
		NextProtos:       []string{"h2"},
		VerifyConnection: verifyCollector,
	}
	if keys != nil {
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			if c := keys.Current(); c != nil {
				return c, nil
			}
			// An empty certificate means "send none"; the server decides.
			return &tls.Certificate{}, nil
		}
	}
	return cfg
}

func verifyCollector(cs tls.ConnectionState) error {
	id, err := PeerIdentity(cs)
	if err != nil {
		return fmt.Errorf("pki: server: %w", err)
	}
	if id.Role != RoleCollector {
		return fmt.Errorf("pki: server identity %s is not a collector: %w", id, ErrBadIdentity)
	}
	return nil
}

// PeerIdentity returns the identity of the peer's certificate on a completed
// handshake. It reads only the verified chain, so an unverified certificate
// (one a server configured without verification would accept) never yields
// an identity. With no verified client certificate — an enrolling agent — it
// returns ErrNoIdentity.
func PeerIdentity(cs tls.ConnectionState) (Identity, error) {
	if len(cs.VerifiedChains) == 0 || len(cs.VerifiedChains[0]) == 0 {
		return Identity{}, fmt.Errorf("pki: peer presented no verified certificate: %w", ErrNoIdentity)
	}
	return IdentityFromCert(cs.VerifiedChains[0][0])
}

// Keypair holds a client certificate that can be replaced while connections
// using it are being made: renewal stores the new certificate and the next
// handshake picks it up, with no lock on the handshake path.
type Keypair struct {
	cur atomic.Pointer[tls.Certificate]
}

// NewKeypair returns a Keypair holding cert.
func NewKeypair(cert tls.Certificate) *Keypair {
	k := &Keypair{}
	k.Store(cert)
	return k
}

// LoadKeypair reads a PEM certificate (chain) and its PKCS#8 key. A missing
// file yields an error wrapping ErrNotFound and naming the path.
func LoadKeypair(certPath, keyPath string) (*Keypair, error) {
	certPEM, err := readFile(certPath)
	if err != nil {
		return nil, err
	}
	keyPEM, err := readFile(keyPath)
	if err != nil {
		return nil, err
	}
	defer clear(keyPEM)
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("pki: load %s and %s: %w", certPath, keyPath, err)
	}
	if err := setLeaf(&cert); err != nil {
		return nil, fmt.Errorf("pki: load %s: %w", certPath, err)
	}
	return NewKeypair(cert), nil
}

// Current returns the certificate in use, with Leaf populated. Callers must
// not modify it: it is shared with concurrent handshakes.
func (k *Keypair) Current() *tls.Certificate {
	return k.cur.Load()
}

// Store makes cert the certificate for subsequent handshakes. Handshakes
// already under way keep the certificate they started with.
func (k *Keypair) Store(cert tls.Certificate) {
	// Leaf is filled here, once, so that readers of Current (renewal timers
	// checking NotAfter, logs naming the identity) never parse DER. A
	// certificate that does not parse is stored as given; the handshake
	// will report it.
	_ = setLeaf(&cert)
	k.cur.Store(&cert)
}

func setLeaf(cert *tls.Certificate) error {
	if cert.Leaf != nil {
		return nil
	}
	if len(cert.Certificate) == 0 {
		return errors.New("no certificate")
	}
	leaf, err := x509.ParseCertificate(cert.Certificate[0])
	if err != nil {
		return err
	}
	cert.Leaf = leaf
	return nil
}
