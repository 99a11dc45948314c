package pki

import (
	"crypto/tls"
	"crypto/x509"
	"io"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

// handshake runs one real TLS connection over loopback TCP and reports what
// each side saw. The server writes a byte after its handshake and the client
// reads it, because in TLS 1.3 the client's handshake completes before the
// server has judged the client certificate: a rejection reaches the client
// only as an alert on its first read.
func handshake(t *testing.T, server, client *tls.Config) (serverState tls.ConnectionState, serverErr, clientErr error) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()

	type result struct {
		state tls.ConnectionState
		err   error
	}
	done := make(chan result, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			done <- result{err: err}
			return
		}
		conn := tls.Server(c, server)
		defer conn.Close()
		err = conn.HandshakeContext(t.Context())
		if err == nil {
			_, err = conn.Write([]byte{1})
		}
		done <- result{state: conn.ConnectionState(), err: err}
	}()

	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	conn := tls.Client(c, client)
	clientErr = conn.HandshakeContext(t.Context())
	if clientErr == nil {
		_, clientErr = io.ReadFull(conn, make([]byte, 1))
	}
	conn.Close()
	r := <-done
	return r.state, r.err, clientErr
}

// tlsFixture is a collector PKI directory made by Init, loaded the way the
// binaries load it.
type tlsFixture struct {
	dir    string
	ca     *CA
	roots  *x509.CertPool
	server tls.Certificate
}

func newTLSFixture(t *testing.T) tlsFixture {
	t.Helper()
	dir := initDir(t, InitOptions{})
	ca, err := LoadCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	roots, err := ReadCertPool(filepath.Join(dir, CACertFile))
	if err != nil {
		t.Fatal(err)
	}
	server, err := LoadKeypair(filepath.Join(dir, ServerCertFile), filepath.Join(dir, ServerKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	return tlsFixture{dir: dir, ca: ca, roots: roots, server: *server.Current()}
}

func TestHandshake(t *testing.T) {
	fx := newTLSFixture(t)
	other := newTestCA(t)
	agent := mustIdentity(t, RoleAgent, "i-0abc")

	expired := func() tls.Certificate {
		key := mustKey(t)
		now := time.Now()
		cert, _, err := fx.ca.issue(IssueRequest{Identity: agent, PublicKey: key.Public(), Usage: UsageClient},
			now.Add(-2*time.Hour), now.Add(-time.Hour))
		if err != nil {
			t.Fatal(err)
		}
		return tlsCert(cert, key)
	}()
	responder := func() tls.Certificate {
		certPath, keyPath, err := IssueResponder(fx.dir, "alice", time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		kp, err := LoadKeypair(certPath, keyPath)
		if err != nil {
			t.Fatal(err)
		}
		return *kp.Current()
	}()
	// A certificate from the right CA, valid for the right name and for
	// serving, but not a collector's.
	impostor := func() tls.Certificate {
		key := mustKey(t)
		cert, _, err := fx.ca.Issue(IssueRequest{Identity: agent, PublicKey: key.Public(), Usage: UsageServer,
			Validity: time.Hour, DNSNames: []string{"localhost"}})
		if err != nil {
			t.Fatal(err)
		}
		return tlsCert(cert, key)
	}()
	foreignServer := func() tls.Certificate {
		key := mustKey(t)
		cert, _, err := other.Issue(IssueRequest{Identity: mustIdentity(t, RoleCollector, "collector"),
			PublicKey: key.Public(), Usage: UsageServer, Validity: time.Hour, DNSNames: []string{"localhost"}})
		if err != nil {
			t.Fatal(err)
		}
		return tlsCert(cert, key)
	}()

	ptr := func(c tls.Certificate) *tls.Certificate { return &c }
	tests := []struct {
		desc       string
		clientCert *tls.Certificate // nil: no client certificate, as when enrolling
		serverCert *tls.Certificate // nil: the collector's own
		tls12Only  bool             // a client that offers nothing newer, to test the server's refusal
		wantFail   bool
		wantID     Identity
		wantIDErr  error
	}{
		{desc: "agent certificate from the CA", clientCert: ptr(enrol(t, fx.ca, agent)), wantID: agent},
		{desc: "responder certificate", clientCert: &responder, wantID: Identity{Role: RoleResponder, Name: "alice"}},
		{desc: "no client certificate", wantIDErr: ErrNoIdentity},
		{desc: "client certificate from another CA", clientCert: ptr(enrol(t, other, agent)), wantFail: true},
		{desc: "expired client certificate", clientCert: &expired, wantFail: true},
		{desc: "TLS 1.2-only client", clientCert: ptr(enrol(t, fx.ca, agent)), tls12Only: true, wantFail: true},
		{desc: "server without collector identity", serverCert: &impostor, wantFail: true},
		{desc: "server from another CA", serverCert: &foreignServer, wantFail: true},
	}
	for _, tc := range tests {
		t.Run(tc.desc, func(t *testing.T) {
			serverCert := fx.server
			if tc.serverCert != nil {
				serverCert = *tc.serverCert
			}
			var keys *Keypair
			if tc.clientCert != nil {
				keys = NewKeypair(*tc.clientCert)
			}
			client := ClientTLSConfig(fx.roots, "localhost", keys)
			if tc.tls12Only {
				client.MinVersion, client.MaxVersion = tls.VersionTLS12, tls.VersionTLS12
			}

			state, serverErr, clientErr := handshake(t, ServerTLSConfig(serverCert, fx.roots), client)
			if tc.wantFail {
				if serverErr == nil || clientErr == nil {
					t.Fatalf("connection succeeded: server error %v, client error %v", serverErr, clientErr)
				}
				return
			}
			if serverErr != nil || clientErr != nil {
				t.Fatalf("connection failed: server error %v, client error %v", serverErr, clientErr)
			}
			type negotiated struct {
				Version  uint16
				Protocol string
			}
			if diff := cmp.Diff(negotiated{tls.VersionTLS13, "h2"}, negotiated{state.Version, state.NegotiatedProtocol}); diff != "" {
				t.Errorf("negotiated (-want +got):\n%s", diff)
			}
			id, err := PeerIdentity(state)
			if diff := cmp.Diff(tc.wantIDErr, err, cmpopts.EquateErrors()); diff != "" {
				t.Fatalf("PeerIdentity error (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tc.wantID, id); diff != "" {
				t.Errorf("PeerIdentity (-want +got):\n%s", diff)
			}
			if tc.wantIDErr == nil {
				fromCert, err := IdentityFromCert(state.PeerCertificates[0])
				if err != nil {
					t.Fatal(err)
				}
				if diff := cmp.Diff(tc.wantID, fromCert); diff != "" {
					t.Errorf("IdentityFromCert on the peer certificate (-want +got):\n%s", diff)
				}
			}
		})
	}
}

func TestKeypairStoreSwapsCertificate(t *testing.T) {
	fx := newTLSFixture(t)
	first := mustIdentity(t, RoleAgent, "before-renewal")
	second := mustIdentity(t, RoleAgent, "after-renewal")
	keys := NewKeypair(enrol(t, fx.ca, first))
	// One config for both connections: renewal must not require rebuilding
	// it (gRPC holds on to the config it was given).
	client := ClientTLSConfig(fx.roots, "localhost", keys)
	server := ServerTLSConfig(fx.server, fx.roots)

	var got []Identity
	for i, next := range []*Identity{&second, nil} {
		state, serverErr, clientErr := handshake(t, server, client)
		if serverErr != nil || clientErr != nil {
			t.Fatalf("connection %d: server error %v, client error %v", i+1, serverErr, clientErr)
		}
		id, err := PeerIdentity(state)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, id)
		if next != nil {
			keys.Store(enrol(t, fx.ca, *next))
		}
	}
	if diff := cmp.Diff([]Identity{first, second}, got); diff != "" {
		t.Errorf("identities seen by the server (-want +got):\n%s", diff)
	}
}

func TestKeypairPopulatesLeaf(t *testing.T) {
	ca := newTestCA(t)
	cert := enrol(t, ca, mustIdentity(t, RoleAgent, "a"))
	want := cert.Leaf
	cert.Leaf = nil
	keys := NewKeypair(cert)
	if keys.Current().Leaf == nil {
		t.Fatal("NewKeypair left Leaf nil")
	}
	if diff := cmp.Diff(Fingerprint(want), Fingerprint(keys.Current().Leaf)); diff != "" {
		t.Errorf("Leaf (-want +got):\n%s", diff)
	}
}

func TestLoadKeypairMissing(t *testing.T) {
	dir := t.TempDir()
	_, err := LoadKeypair(filepath.Join(dir, "a.crt"), filepath.Join(dir, "a.key"))
	if diff := cmp.Diff(ErrNotFound, err, cmpopts.EquateErrors()); diff != "" {
		t.Errorf("LoadKeypair error (-want +got):\n%s", diff)
	}
}

func TestServerTLSConfig(t *testing.T) {
	cfg := ServerTLSConfig(tls.Certificate{}, x509.NewCertPool())
	type policy struct {
		MinVersion uint16
		ClientAuth tls.ClientAuthType
		NextProtos []string
	}
	want := policy{tls.VersionTLS13, tls.VerifyClientCertIfGiven, []string{"h2"}}
	if diff := cmp.Diff(want, policy{cfg.MinVersion, cfg.ClientAuth, cfg.NextProtos}); diff != "" {
		t.Errorf("server policy (-want +got):\n%s", diff)
	}
}
