package service

import (
	"context"
	"errors"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/custodyhq/custody/collector/state"
	"github.com/custodyhq/custody/collector/store"
	"github.com/custodyhq/custody/internal/chunk"
	"github.com/custodyhq/custody/internal/pki"
)

var (
	// ErrForbidden: the caller is authenticated but this is not theirs.
	ErrForbidden = errors.New("forbidden")
	// ErrInvalid: the request itself is wrong.
	ErrInvalid = errors.New("invalid request")
	// ErrConflict: the request is valid but the target is in the wrong state.
	ErrConflict = errors.New("conflict")
	// ErrAlreadyDone: what is asked for has already happened (an artifact
	// re-sent after a reconnect that the collector had already stored).
	ErrAlreadyDone = errors.New("already done")
)

// toStatus is the one place domain errors become gRPC status codes.
func toStatus(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	code := codes.Internal
	switch {
	case errors.Is(err, context.Canceled):
		code = codes.Canceled
	case errors.Is(err, context.DeadlineExceeded):
		code = codes.DeadlineExceeded
	case errors.Is(err, ErrForbidden), errors.Is(err, state.ErrToken):
		code = codes.PermissionDenied
	case errors.Is(err, state.ErrNotFound), errors.Is(err, store.ErrNotFound):
		code = codes.NotFound
	case errors.Is(err, ErrAlreadyDone):
		code = codes.AlreadyExists
	case errors.Is(err, ErrConflict), errors.Is(err, store.ErrExists):
		code = codes.FailedPrecondition
	case errors.Is(err, chunk.ErrTooLarge):
		code = codes.ResourceExhausted
	case errors.Is(err, chunk.ErrSequence), errors.Is(err, chunk.ErrOffset), errors.Is(err, chunk.ErrLength),
		errors.Is(err, chunk.ErrHash), errors.Is(err, chunk.ErrCorrupt), errors.Is(err, chunk.ErrTrailer),
		errors.Is(err, store.ErrDigestMismatch):
		code = codes.DataLoss
	case errors.Is(err, ErrInvalid), errors.Is(err, store.ErrBadKey), errors.Is(err, pki.ErrBadCSR),
		errors.Is(err, pki.ErrBadIdentity):
		code = codes.InvalidArgument
	}
	return status.Error(code, err.Error())
}
