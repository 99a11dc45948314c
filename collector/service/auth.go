package service

import (
	"context"
	"crypto/x509"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/custodyhq/custody/internal/pki"
	custodyv1 "github.com/custodyhq/custody/proto/custody/v1"
)

// caller is who is on the other end, as proven by a verified certificate.
type caller struct {
	id   pki.Identity
	cert *x509.Certificate
}

type callerKey struct{}

func callerFrom(ctx context.Context) (caller, bool) {
	c, ok := ctx.Value(callerKey{}).(caller)
	return c, ok
}

// requiredRole says which role may call a method. Enroll is the one call an
// agent makes before it has a certificate; anything not listed is refused.
func requiredRole(method string) (role pki.Role, anonymous bool, ok bool) {
	switch {
	case method == custodyv1.AgentService_Enroll_FullMethodName:
		return "", true, true
	case strings.HasPrefix(method, "/"+custodyv1.AgentService_ServiceDesc.ServiceName+"/"):
		return pki.RoleAgent, false, true
	case strings.HasPrefix(method, "/"+custodyv1.ResponderService_ServiceDesc.ServiceName+"/"):
		return pki.RoleResponder, false, true
	}
	return "", false, false
}

// authorize admits a call only if the peer's verified certificate carries
// the identity role the method requires. Identities come from
// VerifiedChains, never from anything the client sends.
func authorize(ctx context.Context, method string) (context.Context, error) {
	role, anonymous, ok := requiredRole(method)
	if !ok {
		return nil, status.Errorf(codes.PermissionDenied, "method %s is not served", method)
	}
	if anonymous {
		return ctx, nil
	}
	p, ok := peer.FromContext(ctx)
	if !ok {
		return nil, status.Error(codes.Unauthenticated, "no peer")
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(info.State.VerifiedChains) == 0 || len(info.State.VerifiedChains[0]) == 0 {
		return nil, status.Errorf(codes.Unauthenticated, "%s requires a client certificate issued by the custody CA", method)
	}
	leaf := info.State.VerifiedChains[0][0]
	id, err := pki.IdentityFromCert(leaf)
	if err != nil {
		return nil, status.Errorf(codes.Unauthenticated, "client certificate: %v", err)
	}
	if id.Role != role {
		return nil, status.Errorf(codes.PermissionDenied, "%s is a %s identity; %s requires a %s certificate", id, id.Role, method, role)
	}
	return context.WithValue(ctx, callerKey{}, caller{id: id, cert: leaf}), nil
}

func unaryAuth(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	ctx, err := authorize(ctx, info.FullMethod)
	if err != nil {
		return nil, err
	}
	return handler(ctx, req)
}

type authedStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s authedStream) Context() context.Context { return s.ctx }

func streamAuth(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	ctx, err := authorize(ss.Context(), info.FullMethod)
	if err != nil {
		return err
	}
	return handler(srv, authedStream{ServerStream: ss, ctx: ctx})
}
