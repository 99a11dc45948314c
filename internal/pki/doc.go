// Package pki creates and loads custody's certificate authority and issues
// the certificates that carry identities.
//
// Every party in custody — agent, responder, collector — is known only by the
// certificate it presents over mutual TLS. A certificate carries exactly one
// URI SAN of the form spiffe://custody/<role>/<name>; authorization code
// elsewhere reads that identity from the verified peer certificate
// (PeerIdentity, IdentityFromCert) and never from a message field.
//
// The package also fixes the TLS policy both sides use: TLS 1.3 only, no
// plaintext mode, and client certificates that can be renewed without
// rebuilding a connection's configuration (Keypair).
package pki

import "errors"

// Sentinel errors. Functions wrap them with %w and add the input that failed;
// callers test with errors.Is.
var (
	// ErrNoIdentity: a certificate or connection carries no custody identity.
	ErrNoIdentity = errors.New("no custody identity")
	// ErrBadIdentity: an identity is malformed, has an unknown role or a
	// foreign trust domain, or a certificate carries more than one URI SAN.
	ErrBadIdentity = errors.New("bad custody identity")
	// ErrBadCSR: a certificate signing request is malformed, its
	// self-signature does not verify, or its key type is not accepted.
	ErrBadCSR = errors.New("bad certificate signing request")
	// ErrExists: refusing to overwrite existing key material.
	ErrExists = errors.New("already exists")
	// ErrNotFound: key or certificate material is missing.
	ErrNotFound = errors.New("not found")
)
