package storetest

import (
	"bytes"
	"errors"
	"slices"
	"testing"

	"github.com/custodyhq/custody/collector/store"
)

// ResumableFactory returns an empty resumable store, and a function that
// opens a new instance over the same backing storage: what the collector
// gets after it restarted.
type ResumableFactory func(t *testing.T) (s store.Resumable, reopen func(t *testing.T) store.Resumable)

// ResumeOptions sizes the resume cases for a backend.
type ResumeOptions struct {
	// Size is how many bytes each case writes. It must be large enough for
	// the backend to make a part of it durable before Commit (an S3 store
	// only checkpoints whole parts).
	Size int
	// Write is the size of each Write call; checkpoints fall on multiples
	// of it.
	Write int
}

// RunResumable runs the resume cases: a write is checkpointed, the writer
// is dropped without Commit or Abort (as a crash would drop it), and a new
// store instance resumes it from the state, continues and commits.
func RunResumable(t *testing.T, opts ResumeOptions, newStore ResumableFactory) {
	t.Helper()
	tests := []struct {
		name string
		fn   func(t *testing.T, opts ResumeOptions, s store.Resumable, reopen func(t *testing.T) store.Resumable)
	}{
		{"CheckpointResumeCommit", testResumeCommit},
		{"CheckpointAtStart", testResumeAtStart},
		{"ResumeTwice", testResumeTwice},
		{"ResumeAborted", testResumeAborted},
		{"ResumeCommitted", testResumeCommitted},
		{"ResumeWrongKey", testResumeWrongKey},
		{"ResumeDigestMismatch", testResumeDigestMismatch},
		{"CheckpointFinished", testCheckpointFinished},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s, reopen := newStore(t)
			tc.fn(t, opts, s, reopen)
		})
	}
}

// resumeWrites cuts data into the Write calls of a resumable upload, each
// stamped with its index so that no two are equal.
func resumeWrites(seed uint64, opts ResumeOptions) (data []byte, writes [][]byte) {
	data = randBytes(seed, opts.Size)
	for rest := data; len(rest) > 0; {
		n := min(opts.Write, len(rest))
		writes = append(writes, rest[:n])
		rest = rest[n:]
	}
	return data, writes
}

// boundaries are the sizes a checkpoint may report: 0 and the end of every
// Write call.
func boundaries(writes [][]byte) []int64 {
	b := []int64{0}
	var n int64
	for _, w := range writes {
		n += int64(len(w))
		b = append(b, n)
	}
	return b
}

func createResumable(t *testing.T, s store.Resumable, key string, size int) store.ResumableWriter {
	t.Helper()
	w, err := s.Create(t.Context(), key, store.CreateOptions{ExpectedSize: int64(size), ContentType: "application/octet-stream"})
	if err != nil {
		t.Fatal(err)
	}
	rw, ok := w.(store.ResumableWriter)
	if !ok {
		w.Abort(t.Context())
		t.Fatalf("%T.Create returned %T, which is not a store.ResumableWriter", s, w)
	}
	return rw
}

func writeAll(t *testing.T, w store.Writer, writes [][]byte) {
	t.Helper()
	for i, p := range writes {
		if n, err := w.Write(p); err != nil || n != len(p) {
			t.Fatalf("write %d: %d, %v", i, n, err)
		}
	}
}

func checkpoint(t *testing.T, w store.ResumableWriter, writes [][]byte, upTo int) ([]byte, int64) {
	t.Helper()
	state, durable, err := w.Checkpoint(t.Context())
	if err != nil {
		t.Fatalf("Checkpoint: %v", err)
	}
	b := boundaries(writes[:upTo])
	if !slices.Contains(b, durable) {
		t.Fatalf("Checkpoint durable = %d after %d writes: not a Write boundary (%v)", durable, upTo, b)
	}
	return state, durable
}

// writesFrom returns the Write calls that follow the durable size.
func writesFrom(t *testing.T, writes [][]byte, durable int64) [][]byte {
	t.Helper()
	i := slices.Index(boundaries(writes), durable)
	if i < 0 {
		t.Fatalf("durable size %d is not a Write boundary", durable)
	}
	return writes[i:]
}

func resume(t *testing.T, s store.Resumable, key string, state []byte, writes [][]byte) (store.ResumableWriter, int64) {
	t.Helper()
	w, durable, err := s.Resume(t.Context(), key, state)
	if err != nil {
		t.Fatalf("Resume: %v", err)
	}
	if !slices.Contains(boundaries(writes), durable) {
		w.Abort(t.Context())
		t.Fatalf("Resume durable = %d: not a Write boundary", durable)
	}
	return w, durable
}

func commitAndCheck(t *testing.T, s store.Store, w store.Writer, key string, data []byte) {
	t.Helper()
	info, err := w.Commit(t.Context(), int64(len(data)), digest(data))
	if err != nil {
		t.Fatalf("Commit after Resume: %v", err)
	}
	checkInfo(t, "Commit", wantInfo(key, data), info)
	stat, err := s.Stat(t.Context(), key)
	if err != nil {
		t.Fatalf("Stat: %v", err)
	}
	checkInfo(t, "Stat", wantInfo(key, data), stat)
	if got := readAll(t, s, key); !bytes.Equal(got, data) {
		t.Errorf("resumed object: %d bytes sha256 %x, want %d bytes sha256 %x", len(got), digest(got), len(data), digest(data))
	}
}

func testResumeCommit(t *testing.T, opts ResumeOptions, s store.Resumable, reopen func(t *testing.T) store.Resumable) {
	k := key(t, "case-1", "agent-1", "col-1", "memory.lime")
	data, writes := resumeWrites(600, opts)
	w := createResumable(t, s, k, len(data))
	first := len(writes) / 3
	writeAll(t, w, writes[:first])
	_, d1 := checkpoint(t, w, writes, first)
	second := 2 * len(writes) / 3
	writeAll(t, w, writes[first:second])
	state, d2 := checkpoint(t, w, writes, second)
	if d2 < d1 {
		t.Errorf("durable size went back from %d to %d", d1, d2)
	}
	if d2 == 0 {
		t.Errorf("nothing durable after %d of %d bytes: ResumeOptions.Size too small for this backend?", boundaries(writes)[second], len(data))
	}
	// Written after the checkpoint, then lost with the writer.
	writeAll(t, w, writes[second:second+1])
	checkAbsent(t, s, k)

	s2 := reopen(t)
	rw, durable := resume(t, s2, k, state, writes)
	defer rw.Abort(t.Context())
	if durable != d2 {
		t.Errorf("Resume durable = %d, checkpoint said %d", durable, d2)
	}
	checkAbsent(t, s2, k)
	writeAll(t, rw, writesFrom(t, writes, durable))
	commitAndCheck(t, s2, rw, k, data)
}

func testResumeAtStart(t *testing.T, opts ResumeOptions, s store.Resumable, reopen func(t *testing.T) store.Resumable) {
	k := key(t, "case-1", "agent-1", "col-1", "at-start")
	data, writes := resumeWrites(601, opts)
	w := createResumable(t, s, k, len(data))
	state, durable := checkpoint(t, w, writes, 0)
	if durable != 0 {
		t.Fatalf("Checkpoint before any write: durable = %d", durable)
	}
	s2 := reopen(t)
	rw, durable := resume(t, s2, k, state, writes)
	defer rw.Abort(t.Context())
	if durable != 0 {
		t.Errorf("Resume durable = %d, want 0", durable)
	}
	writeAll(t, rw, writes)
	// A checkpointed, resumed write of a small object commits as well.
	commitAndCheck(t, s2, rw, k, data)
}

// testResumeTwice is a collector that crashes again after resuming: the
// same state resumes again, and what the first resume wrote is dropped.
func testResumeTwice(t *testing.T, opts ResumeOptions, s store.Resumable, reopen func(t *testing.T) store.Resumable) {
	k := key(t, "case-1", "agent-1", "col-1", "twice")
	data, writes := resumeWrites(602, opts)
	w := createResumable(t, s, k, len(data))
	half := len(writes) / 2
	writeAll(t, w, writes[:half])
	state, d := checkpoint(t, w, writes, half)

	s2 := reopen(t)
	rw, durable := resume(t, s2, k, state, writes)
	if durable != d {
		t.Errorf("first Resume durable = %d, want %d", durable, d)
	}
	// Different bytes than the object's: they must not survive.
	rest := writesFrom(t, writes, durable)
	for i := range rest {
		junk := bytes.Repeat([]byte{0xee}, len(rest[i]))
		if _, err := rw.Write(junk); err != nil {
			t.Fatal(err)
		}
	}
	_ = rw // dropped: a second crash

	s3 := reopen(t)
	rw2, durable2 := resume(t, s3, k, state, writes)
	defer rw2.Abort(t.Context())
	if durable2 != d {
		t.Errorf("second Resume durable = %d, want %d", durable2, d)
	}
	writeAll(t, rw2, writesFrom(t, writes, durable2))
	commitAndCheck(t, s3, rw2, k, data)
}

func testResumeAborted(t *testing.T, opts ResumeOptions, s store.Resumable, reopen func(t *testing.T) store.Resumable) {
	k := key(t, "case-1", "agent-1", "col-1", "aborted")
	_, writes := resumeWrites(603, opts)
	w := createResumable(t, s, k, opts.Size)
	half := len(writes) / 2
	writeAll(t, w, writes[:half])
	state, _ := checkpoint(t, w, writes, half)
	if err := w.Abort(t.Context()); err != nil {
		t.Fatalf("Abort: %v", err)
	}
	s2 := reopen(t)
	if rw, _, err := s2.Resume(t.Context(), k, state); !errors.Is(err, store.ErrNotFound) {
		if err == nil {
			rw.Abort(t.Context())
		}
		t.Fatalf("Resume of an aborted write = %v, want ErrNotFound", err)
	}
	checkAbsent(t, s2, k)
}

func testResumeCommitted(t *testing.T, opts ResumeOptions, s store.Resumable, reopen func(t *testing.T) store.Resumable) {
	k := key(t, "case-1", "agent-1", "col-1", "committed")
	data, writes := resumeWrites(604, opts)
	w := createResumable(t, s, k, len(data))
	half := len(writes) / 2
	writeAll(t, w, writes[:half])
	state, _ := checkpoint(t, w, writes, half)
	writeAll(t, w, writes[half:])
	if _, err := w.Commit(t.Context(), int64(len(data)), digest(data)); err != nil {
		t.Fatal(err)
	}
	s2 := reopen(t)
	if rw, _, err := s2.Resume(t.Context(), k, state); !errors.Is(err, store.ErrNotFound) {
		if err == nil {
			rw.Abort(t.Context())
		}
		t.Fatalf("Resume of a committed write = %v, want ErrNotFound", err)
	}
	if got := readAll(t, s2, k); !bytes.Equal(got, data) {
		t.Error("committed object changed by a refused Resume")
	}
}

func testResumeWrongKey(t *testing.T, opts ResumeOptions, s store.Resumable, reopen func(t *testing.T) store.Resumable) {
	ctx := t.Context()
	k := key(t, "case-1", "agent-1", "col-1", "right")
	_, writes := resumeWrites(605, opts)
	w := createResumable(t, s, k, opts.Size)
	defer w.Abort(ctx)
	writeAll(t, w, writes[:1])
	state, _ := checkpoint(t, w, writes, 1)
	s2 := reopen(t)
	for _, tc := range []struct {
		name  string
		key   string
		state []byte
	}{
		{"other-key", "case-1/agent-1/col-1/wrong", state},
		{"bad-key", "case-1/agent-1/../right", state},
		{"garbage-state", k, []byte("not a checkpoint")},
		{"empty-state", k, nil},
		{"truncated-state", k, state[:len(state)/2]},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rw, _, err := s2.Resume(ctx, tc.key, tc.state)
			if err == nil {
				rw.Abort(ctx)
				t.Fatalf("Resume(%q) with %s succeeded", tc.key, tc.name)
			}
		})
	}
	// The refused resumes did not disturb the write.
	rw, durable := resume(t, s2, k, state, writes)
	defer rw.Abort(ctx)
	if durable > int64(len(writes[0])) {
		t.Errorf("durable = %d after one write of %d", durable, len(writes[0]))
	}
}

func testResumeDigestMismatch(t *testing.T, opts ResumeOptions, s store.Resumable, reopen func(t *testing.T) store.Resumable) {
	ctx := t.Context()
	k := key(t, "case-1", "agent-1", "col-1", "mismatch")
	data, writes := resumeWrites(606, opts)
	w := createResumable(t, s, k, len(data))
	half := len(writes) / 2
	writeAll(t, w, writes[:half])
	state, _ := checkpoint(t, w, writes, half)
	s2 := reopen(t)
	rw, durable := resume(t, s2, k, state, writes)
	rest := writesFrom(t, writes, durable)
	// One flipped byte after the resume point.
	writeAll(t, rw, rest[:len(rest)-1])
	last := bytes.Clone(rest[len(rest)-1])
	last[0] ^= 1
	writeAll(t, rw, [][]byte{last})
	if _, err := rw.Commit(ctx, int64(len(data)), digest(data)); !errors.Is(err, store.ErrDigestMismatch) {
		t.Fatalf("Commit of altered bytes after Resume = %v, want ErrDigestMismatch", err)
	}
	rw.Abort(ctx)
	checkAbsent(t, s2, k)
}

func testCheckpointFinished(t *testing.T, opts ResumeOptions, s store.Resumable, _ func(t *testing.T) store.Resumable) {
	ctx := t.Context()
	for _, tc := range []struct {
		name   string
		finish func(w store.ResumableWriter, data []byte) error
	}{
		{"committed", func(w store.ResumableWriter, data []byte) error {
			_, err := w.Commit(ctx, int64(len(data)), digest(data))
			return err
		}},
		{"aborted", func(w store.ResumableWriter, _ []byte) error { return w.Abort(ctx) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			k := key(t, "case-1", "agent-1", "col-1", "finished-"+tc.name)
			data := []byte("small evidence")
			w := createResumable(t, s, k, len(data))
			writeAll(t, w, [][]byte{data})
			if err := tc.finish(w, data); err != nil {
				t.Fatal(err)
			}
			if _, _, err := w.Checkpoint(ctx); err == nil {
				t.Error("Checkpoint of a finished write succeeded")
			}
		})
	}
}
