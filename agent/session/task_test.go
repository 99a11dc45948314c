package session

import (
	"context"
	"errors"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// A cut connection fails the upload stream an instant before the session
// stream: the artifact is interrupted, not failed.
func TestConnectionLostWaitsForTheSession(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(20*time.Millisecond, cancel)
	if !connectionLost(ctx, status.Error(codes.Unavailable, "error reading from server: EOF")) {
		t.Error("Unavailable followed by the session ending: want interrupted")
	}
}

func TestConnectionLostOnlyForTransportErrors(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	for _, err := range []error{
		status.Error(codes.DataLoss, "chunk 3: sha256 mismatch"),
		status.Error(codes.InvalidArgument, "bad offset"),
		errors.New("open /nope: no such file or directory"),
	} {
		if connectionLost(ctx, err) {
			t.Errorf("connectionLost(%v) = true; a refusal is the artifact's failure", err)
		}
	}
}
