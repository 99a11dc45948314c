package service_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/custodyhq/custody/collector/service"
	"github.com/custodyhq/custody/collector/state"
	"github.com/custodyhq/custody/collector/store"
	"github.com/custodyhq/custody/internal/pki"
	custodyv1 "github.com/custodyhq/custody/proto/custody/v1"
)

// env is a collector served over real TLS on loopback, with its PKI.
type env struct {
	t      *testing.T
	dir    string
	addr   string
	ca     *pki.CA
	roots  *x509.CertPool
	db     *state.DB
	store  *store.FS
	stop   func()
	server *grpc.Server
}

func newEnv(t *testing.T) *env {
	t.Helper()
	dir := t.TempDir()
	pkiDir := filepath.Join(dir, "pki")
	if err := pki.Init(pki.InitOptions{Dir: pkiDir}); err != nil {
		t.Fatal(err)
	}
	ca, err := pki.LoadCA(pkiDir)
	if err != nil {
		t.Fatal(err)
	}
	serverCert, err := tls.LoadX509KeyPair(filepath.Join(pkiDir, pki.ServerCertFile), filepath.Join(pkiDir, pki.ServerKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	signer, err := pki.ReadKey(filepath.Join(pkiDir, pki.SigningKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	signCert, err := os.ReadFile(filepath.Join(pkiDir, pki.SigningCertFile))
	if err != nil {
		t.Fatal(err)
	}
	roots, err := pki.ReadCertPool(filepath.Join(pkiDir, pki.CACertFile))
	if err != nil {
		t.Fatal(err)
	}
	db, err := state.Open(context.Background(), filepath.Join(dir, "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	st, err := store.NewFS(filepath.Join(dir, "evidence"))
	if err != nil {
		t.Fatal(err)
	}
	id, _ := pki.IdentityFromCert(serverCert.Leaf)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if testing.Verbose() {
		log = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	srv := service.New(service.Config{Identity: id, CA: ca, SigningKey: signer.(ed25519.PrivateKey), SigningCertPEM: signCert}, db, st, log)
	g := grpc.NewServer(append(service.ServerOptions(service.StreamWindow(st)), grpc.Creds(credentials.NewTLS(pki.ServerTLSConfig(serverCert, roots))))...)
	srv.Register(g)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go g.Serve(lis)
	e := &env{t: t, dir: dir, addr: lis.Addr().String(), ca: ca, roots: roots, db: db, store: st, server: g}
	e.stop = func() { g.Stop(); db.Close() }
	t.Cleanup(e.stop)
	return e
}

// dial connects with the given client certificate (nil: none).
func (e *env) dial(cert *tls.Certificate) *grpc.ClientConn {
	e.t.Helper()
	var keys *pki.Keypair
	if cert != nil {
		keys = pki.NewKeypair(*cert)
	}
	cc, err := grpc.NewClient(e.addr, grpc.WithTransportCredentials(credentials.NewTLS(pki.ClientTLSConfig(e.roots, "127.0.0.1", keys))))
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { cc.Close() })
	return cc
}

func (e *env) responder(name string) custodyv1.ResponderServiceClient {
	e.t.Helper()
	certPath, keyPath, err := pki.IssueResponder(filepath.Join(e.dir, "pki"), name, time.Hour)
	if err != nil {
		e.t.Fatal(err)
	}
	cert, err := tls.LoadX509KeyPair(certPath, keyPath)
	if err != nil {
		e.t.Fatal(err)
	}
	return custodyv1.NewResponderServiceClient(e.dial(&cert))
}

// enrolledAgent enrols a new agent with a fresh join token and returns its
// certificate and a client that presents it.
func (e *env) enrolledAgent() (string, tls.Certificate, custodyv1.AgentServiceClient) {
	e.t.Helper()
	tok, _, err := e.db.CreateToken(context.Background(), 1, time.Hour)
	if err != nil {
		e.t.Fatal(err)
	}
	key, _ := pki.GenerateKey()
	csr, _ := pki.CreateCSR(key)
	anon := custodyv1.NewAgentServiceClient(e.dial(nil))
	resp, err := anon.Enroll(context.Background(), &custodyv1.EnrollRequest{JoinToken: tok, Csr: csr, Host: &custodyv1.HostFacts{Hostname: "test-host"}})
	if err != nil {
		e.t.Fatal(err)
	}
	cert := tlsCert(e.t, resp.GetCertificate(), key)
	return resp.GetAgentId(), cert, custodyv1.NewAgentServiceClient(e.dial(&cert))
}

func tlsCert(t *testing.T, certPEM []byte, key *ecdsa.PrivateKey) tls.Certificate {
	t.Helper()
	der, _ := x509.MarshalPKCS8PrivateKey(key)
	c, err := tls.X509KeyPair(certPEM, pemBlock("PRIVATE KEY", der))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// rawCert signs a certificate for identity uri with any CA key, with any
// validity window: for certificates pki refuses to make (expired ones).
func rawCert(t *testing.T, caCert *x509.Certificate, caKey any, uri string, notBefore, notAfter time.Time) tls.Certificate {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	id, err := pki.ParseIdentity(uri)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: id.Name},
		NotBefore: notBefore, NotAfter: notAfter, URIs: []*url.URL{id.URI()},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	return tlsCert(t, pemBlock("CERTIFICATE", der), key)
}

func pemBlock(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}
