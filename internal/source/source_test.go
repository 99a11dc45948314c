package source

import (
	"bytes"
	"context"
	"errors"
	"io"
	"testing"
	"testing/iotest"
)

func TestReader(t *testing.T) {
	// Read to the end: no error remembered.
	r := NewReader(context.Background(), bytes.NewReader([]byte("evidence")))
	if b, err := io.ReadAll(r); err != nil || string(b) != "evidence" || r.Err() != nil {
		t.Fatalf("ReadAll = %q, %v; Err %v", b, err, r.Err())
	}

	// The source fails: its error, remembered, and every later read too.
	boom := errors.New("bad sector")
	r = NewReader(context.Background(), io.MultiReader(bytes.NewReader([]byte("ab")), iotest.ErrReader(boom)))
	if _, err := io.ReadAll(r); !errors.Is(err, boom) || !errors.Is(r.Err(), boom) {
		t.Fatalf("failing source: %v, Err %v", err, r.Err())
	}
	if n, err := r.Read(make([]byte, 4)); n != 0 || !errors.Is(err, boom) {
		t.Fatalf("read after the failure: %d, %v", n, err)
	}

	// The context ends: the next read stops with its error.
	ctx, cancel := context.WithCancel(context.Background())
	r = NewReader(ctx, bytes.NewReader(make([]byte, 10)))
	if _, err := r.Read(make([]byte, 4)); err != nil {
		t.Fatal(err)
	}
	cancel()
	if _, err := r.Read(make([]byte, 4)); !errors.Is(err, context.Canceled) || !errors.Is(r.Err(), context.Canceled) {
		t.Fatalf("after cancel: %v, Err %v", err, r.Err())
	}
}
