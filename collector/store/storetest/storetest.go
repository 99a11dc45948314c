// Package storetest is the acceptance suite for store.Store. Every backend
// runs it, so that ingest can rely on the contract rather than on whichever
// backend it happens to be tested against.
package storetest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/custodyhq/custody/collector/store"
)

// Run runs the acceptance suite. newStore must return an empty store for
// each call; subtests run in parallel, each with its own store.
func Run(t *testing.T, newStore func(t *testing.T) store.Store) {
	t.Helper()
	tests := []struct {
		name string
		fn   func(t *testing.T, s store.Store)
	}{
		{"RoundTrip", testRoundTrip},
		{"NothingVisibleBeforeCommit", testNothingVisibleBeforeCommit},
		{"DigestMismatch", testDigestMismatch},
		{"Abort", testAbort},
		{"AbortAfterCommit", testAbortAfterCommit},
		{"IdempotentPut", testIdempotentPut},
		{"ExistsDifferentContent", testExistsDifferentContent},
		{"BadKey", testBadKey},
		{"NotFound", testNotFound},
		{"List", testList},
		{"ConcurrentWriters", testConcurrentWriters},
		{"ConcurrentSameKey", testConcurrentSameKey},
		{"LargeStreamed", testLargeStreamed},
		{"TeeWriter", testTeeWriter},
		{"CanceledContext", testCanceledContext},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tc.fn(t, newStore(t))
		})
	}
}

// ignoreModTime lets Infos from Commit, Stat and List be compared across
// backends whose clocks or timestamp precision differ between calls.
var ignoreModTime = cmpopts.IgnoreFields(store.Info{}, "ModTime")

func digest(b []byte) []byte {
	sum := sha256.Sum256(b)
	return sum[:]
}

func randBytes(seed uint64, n int) []byte {
	b := make([]byte, n)
	var s [32]byte
	binary.LittleEndian.PutUint64(s[:], seed)
	_, _ = rand.NewChaCha8(s).Read(b)
	return b
}

func key(t *testing.T, caseID, agentID, collectionID, file string) string {
	t.Helper()
	k, err := store.Key(caseID, agentID, collectionID, file)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// put writes data in uneven pieces, so that backends which buffer or cut
// parts see writes that straddle their boundaries.
func put(ctx context.Context, s store.Store, key string, data []byte) (store.Info, error) {
	w, err := s.Create(ctx, key, store.CreateOptions{ExpectedSize: int64(len(data)), ContentType: "application/octet-stream"})
	if err != nil {
		return store.Info{}, err
	}
	defer w.Abort(ctx)
	for rest, step := data, 1; len(rest) > 0; step = step*3 + 1 {
		n := min(step, len(rest))
		if _, err := w.Write(rest[:n]); err != nil {
			return store.Info{}, err
		}
		rest = rest[n:]
	}
	return w.Commit(ctx, int64(len(data)), digest(data))
}

func mustPut(t *testing.T, s store.Store, key string, data []byte) store.Info {
	t.Helper()
	info, err := put(t.Context(), s, key, data)
	if err != nil {
		t.Fatalf("put %s: %v", key, err)
	}
	return info
}

func wantInfo(key string, data []byte) store.Info {
	return store.Info{Key: key, Size: int64(len(data)), SHA256: hex.EncodeToString(digest(data))}
}

// checkInfo compares the fields every backend must agree on; Location,
// VersionID and ETag are the backend's own but must be stable across calls.
func checkInfo(t *testing.T, op string, want, got store.Info) {
	t.Helper()
	if diff := cmp.Diff(want, got, ignoreModTime, cmpopts.IgnoreFields(store.Info{}, "Location", "VersionID", "ETag")); diff != "" {
		t.Errorf("%s: Info mismatch (-want +got):\n%s", op, diff)
	}
	if got.Location == "" {
		t.Errorf("%s: Info.Location is empty", op)
	}
	if got.ModTime.IsZero() {
		t.Errorf("%s: Info.ModTime is zero", op)
	}
}

func readAll(t *testing.T, s store.Store, key string) []byte {
	t.Helper()
	rc, err := s.Open(t.Context(), key)
	if err != nil {
		t.Fatalf("Open(%s): %v", key, err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatalf("read %s: %v", key, err)
	}
	return b
}

func checkAbsent(t *testing.T, s store.Store, key string) {
	t.Helper()
	ctx := t.Context()
	if _, err := s.Stat(ctx, key); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("Stat(%s) = %v, want ErrNotFound", key, err)
	}
	if rc, err := s.Open(ctx, key); !errors.Is(err, store.ErrNotFound) {
		if err == nil {
			rc.Close()
		}
		t.Errorf("Open(%s) = %v, want ErrNotFound", key, err)
	}
	prefix := key[:strings.LastIndexByte(key, '/')]
	infos, err := s.List(ctx, prefix)
	if err != nil {
		t.Fatalf("List(%s): %v", prefix, err)
	}
	for _, info := range infos {
		if info.Key == key {
			t.Errorf("List(%s) includes %s", prefix, key)
		}
	}
}

func testRoundTrip(t *testing.T, s store.Store) {
	for _, tc := range []struct {
		name string
		data []byte
	}{
		{"empty", nil},
		{"one-byte", []byte{0}},
		{"small", []byte("processes\n")},
		{"random-300KiB", randBytes(1, 300<<10)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			k := key(t, "case-1", "agent-1", "col-1", tc.name+".bin")
			committed := mustPut(t, s, k, tc.data)
			checkInfo(t, "Commit", wantInfo(k, tc.data), committed)

			stat, err := s.Stat(t.Context(), k)
			if err != nil {
				t.Fatalf("Stat: %v", err)
			}
			checkInfo(t, "Stat", wantInfo(k, tc.data), stat)
			if diff := cmp.Diff(committed, stat, ignoreModTime); diff != "" {
				t.Errorf("Stat differs from Commit (-commit +stat):\n%s", diff)
			}
			if got := readAll(t, s, k); !bytes.Equal(got, tc.data) {
				t.Errorf("Open returned %d bytes sha256 %x, want %d bytes sha256 %x",
					len(got), digest(got), len(tc.data), digest(tc.data))
			}
		})
	}
}

func testNothingVisibleBeforeCommit(t *testing.T, s store.Store) {
	ctx := t.Context()
	k := key(t, "case-1", "agent-1", "col-1", "memory.lime")
	data := randBytes(2, 64<<10)
	w, err := s.Create(ctx, k, store.CreateOptions{ExpectedSize: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Abort(ctx)
	checkAbsent(t, s, k)
	if _, err := w.Write(data[:len(data)/2]); err != nil {
		t.Fatal(err)
	}
	checkAbsent(t, s, k)
	if _, err := w.Write(data[len(data)/2:]); err != nil {
		t.Fatal(err)
	}
	checkAbsent(t, s, k)
	if _, err := w.Commit(ctx, int64(len(data)), digest(data)); err != nil {
		t.Fatalf("Commit: %v", err)
	}
	if _, err := s.Stat(ctx, k); err != nil {
		t.Errorf("Stat after Commit: %v", err)
	}
}

func testDigestMismatch(t *testing.T, s store.Store) {
	data := randBytes(3, 10<<10)
	flipped := digest(data)
	flipped[0] ^= 1
	for _, tc := range []struct {
		name   string
		size   int64
		sha256 []byte
	}{
		{"size-short", int64(len(data)) - 1, digest(data)},
		{"size-long", int64(len(data)) + 1, digest(data)},
		{"hash-flipped", int64(len(data)), flipped},
		{"hash-of-other-data", int64(len(data)), digest(randBytes(4, len(data)))},
		{"hash-truncated", int64(len(data)), digest(data)[:31]},
		{"hash-missing", int64(len(data)), nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := t.Context()
			k := key(t, "case-1", "agent-1", "col-1", tc.name)
			w, err := s.Create(ctx, k, store.CreateOptions{ExpectedSize: int64(len(data))})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := w.Write(data); err != nil {
				t.Fatal(err)
			}
			if _, err := w.Commit(ctx, tc.size, tc.sha256); !errors.Is(err, store.ErrDigestMismatch) {
				t.Fatalf("Commit = %v, want ErrDigestMismatch", err)
			}
			if err := w.Abort(ctx); err != nil {
				t.Errorf("Abort after failed Commit: %v", err)
			}
			checkAbsent(t, s, k)
			// A failed upload must not block its retry.
			mustPut(t, s, k, data)
		})
	}
}

func testAbort(t *testing.T, s store.Store) {
	ctx := t.Context()
	k := key(t, "case-1", "agent-1", "col-1", "aborted")
	data := randBytes(5, 100<<10)
	w, err := s.Create(ctx, k, store.CreateOptions{ExpectedSize: int64(len(data))})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := w.Abort(ctx); err != nil {
		t.Fatalf("Abort: %v", err)
	}
	if err := w.Abort(ctx); err != nil {
		t.Errorf("second Abort: %v", err)
	}
	if _, err := w.Write([]byte("x")); err == nil {
		t.Error("Write after Abort succeeded")
	}
	if _, err := w.Commit(ctx, int64(len(data)), digest(data)); err == nil {
		t.Error("Commit after Abort succeeded")
	}
	checkAbsent(t, s, k)
	mustPut(t, s, k, data)
}

func testAbortAfterCommit(t *testing.T, s store.Store) {
	ctx := t.Context()
	k := key(t, "case-1", "agent-1", "col-1", "kept")
	data := []byte("evidence")
	w, err := s.Create(ctx, k, store.CreateOptions{ExpectedSize: int64(len(data))})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(data); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Commit(ctx, int64(len(data)), digest(data)); err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		if err := w.Abort(ctx); err != nil {
			t.Errorf("Abort #%d after Commit: %v", i+1, err)
		}
	}
	if _, err := w.Write([]byte("x")); err == nil {
		t.Error("Write after Commit succeeded")
	}
	if got := readAll(t, s, k); !bytes.Equal(got, data) {
		t.Errorf("after Abort, object = %q, want %q", got, data)
	}
}

func testIdempotentPut(t *testing.T, s store.Store) {
	k := key(t, "case-1", "agent-1", "col-1", "processes.jsonl.zst")
	data := randBytes(6, 50<<10)
	first := mustPut(t, s, k, data)
	second := mustPut(t, s, k, data)
	if diff := cmp.Diff(first, second, ignoreModTime); diff != "" {
		t.Errorf("second put of identical content (-first +second):\n%s", diff)
	}
	if got := readAll(t, s, k); !bytes.Equal(got, data) {
		t.Error("content changed by idempotent put")
	}
}

func testExistsDifferentContent(t *testing.T, s store.Store) {
	data := randBytes(7, 20<<10)
	for _, tc := range []struct {
		name  string
		other []byte
	}{
		{"same-size", randBytes(8, len(data))},
		{"shorter", data[:len(data)-1]},
		{"longer", append(append([]byte{}, data...), 0)},
		{"empty", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			k := key(t, "case-1", "agent-1", "col-1", tc.name)
			first := mustPut(t, s, k, data)
			if _, err := put(t.Context(), s, k, tc.other); !errors.Is(err, store.ErrExists) {
				t.Fatalf("put of different content = %v, want ErrExists", err)
			}
			stat, err := s.Stat(t.Context(), k)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(first, stat, ignoreModTime); diff != "" {
				t.Errorf("object changed by refused put (-want +got):\n%s", diff)
			}
			if got := readAll(t, s, k); !bytes.Equal(got, data) {
				t.Error("content changed by refused put")
			}
		})
	}
}

// badKeys are outside the layout: traversal, too few or too many segments,
// absolute paths, hidden names and bytes that mean something to a shell or
// a filesystem.
var badKeys = []string{
	"",
	"../x/y/z",
	"a/b/c",
	"a/b/c/d/e",
	"/a/b/c/d",
	"a/b/c/..",
	"a/b/c/.",
	"a/b/c/",
	"a//c/d",
	"a/b/c/d/",
	"a/b/../d",
	"a/b/c/.hidden",
	"a/b/c/-rf",
	"a/b/c/x..y",
	"a/b/c/d e",
	"a/b/c/d\x00",
	"a/b/c/d\n",
	`a\b/c/d/e`,
	"a/b/c/" + strings.Repeat("f", 129),
	"a/b/c/ümlaut",
}

var badPrefixes = []string{"/", "/a", "a/", "a//b", "../x", "a/b/c/d", "a/b/c/d/e", "a/..", "a/b/.c"}

func testBadKey(t *testing.T, s store.Store) {
	ctx := t.Context()
	for _, k := range badKeys {
		if w, err := s.Create(ctx, k, store.CreateOptions{ExpectedSize: -1}); !errors.Is(err, store.ErrBadKey) {
			if err == nil {
				w.Abort(ctx)
			}
			t.Errorf("Create(%q) = %v, want ErrBadKey", k, err)
		}
		if _, err := s.Stat(ctx, k); !errors.Is(err, store.ErrBadKey) {
			t.Errorf("Stat(%q) = %v, want ErrBadKey", k, err)
		}
		if rc, err := s.Open(ctx, k); !errors.Is(err, store.ErrBadKey) {
			if err == nil {
				rc.Close()
			}
			t.Errorf("Open(%q) = %v, want ErrBadKey", k, err)
		}
	}
	for _, p := range badPrefixes {
		if _, err := s.List(ctx, p); !errors.Is(err, store.ErrBadKey) {
			t.Errorf("List(%q) = %v, want ErrBadKey", p, err)
		}
	}
}

func testNotFound(t *testing.T, s store.Store) {
	mustPut(t, s, key(t, "case-1", "agent-1", "col-1", "present"), []byte("x"))
	for _, k := range []string{
		"case-1/agent-1/col-1/absent",
		"case-1/agent-1/col-2/absent",
		"case-2/agent-1/col-1/present",
	} {
		checkAbsent(t, s, k)
	}
	for _, p := range []string{"case-2", "case-1/agent-2", "case-1/agent-1/col-2"} {
		infos, err := s.List(t.Context(), p)
		if err != nil {
			t.Errorf("List(%q) of nothing: %v", p, err)
		}
		if len(infos) != 0 {
			t.Errorf("List(%q) = %v, want nothing", p, infos)
		}
	}
}

func testList(t *testing.T, s store.Store) {
	ctx := t.Context()
	objects := map[string][]byte{}
	// Inserted out of order, and with neighbours whose names share a
	// string prefix with the listed collection ("col-1" vs "col-10",
	// "col-1.old"), which a prefix match on raw strings would include.
	for i, k := range []string{
		"case-1/agent-1/col-1/sockets.jsonl",
		"case-1/agent-1/col-1/manifest.json",
		"case-1/agent-1/col-1/Z-upper",
		"case-1/agent-1/col-1/processes.jsonl.zst",
		"case-1/agent-1/col-1/manifest.json.sig",
		"case-1/agent-1/col-10/processes.jsonl.zst",
		"case-1/agent-1/col-1.old/processes.jsonl.zst",
		"case-1/agent-1-1/col-1/processes.jsonl.zst",
		"case-1/agent-2/col-1/processes.jsonl.zst",
		"case-10/agent-1/col-1/processes.jsonl.zst",
	} {
		data := randBytes(uint64(100+i), 100*i)
		objects[k] = data
		mustPut(t, s, k, data)
	}
	// An upload in progress in the listed collection must not show.
	w, err := s.Create(ctx, "case-1/agent-1/col-1/memory.lime", store.CreateOptions{ExpectedSize: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Abort(ctx)
	if _, err := w.Write(randBytes(9, 1000)); err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		prefix string
		want   []string
	}{
		{"case-1/agent-1/col-1", []string{
			"case-1/agent-1/col-1/Z-upper",
			"case-1/agent-1/col-1/manifest.json",
			"case-1/agent-1/col-1/manifest.json.sig",
			"case-1/agent-1/col-1/processes.jsonl.zst",
			"case-1/agent-1/col-1/sockets.jsonl",
		}},
		{"case-1/agent-1/col-10", []string{"case-1/agent-1/col-10/processes.jsonl.zst"}},
		{"case-1/agent-2", []string{"case-1/agent-2/col-1/processes.jsonl.zst"}},
		{"case-1/agent-1", []string{
			"case-1/agent-1/col-1.old/processes.jsonl.zst",
			"case-1/agent-1/col-1/Z-upper",
			"case-1/agent-1/col-1/manifest.json",
			"case-1/agent-1/col-1/manifest.json.sig",
			"case-1/agent-1/col-1/processes.jsonl.zst",
			"case-1/agent-1/col-1/sockets.jsonl",
			"case-1/agent-1/col-10/processes.jsonl.zst",
		}},
		{"case-10", []string{"case-10/agent-1/col-1/processes.jsonl.zst"}},
		{"", []string{
			"case-1/agent-1-1/col-1/processes.jsonl.zst",
			"case-1/agent-1/col-1.old/processes.jsonl.zst",
			"case-1/agent-1/col-1/Z-upper",
			"case-1/agent-1/col-1/manifest.json",
			"case-1/agent-1/col-1/manifest.json.sig",
			"case-1/agent-1/col-1/processes.jsonl.zst",
			"case-1/agent-1/col-1/sockets.jsonl",
			"case-1/agent-1/col-10/processes.jsonl.zst",
			"case-1/agent-2/col-1/processes.jsonl.zst",
			"case-10/agent-1/col-1/processes.jsonl.zst",
		}},
	} {
		t.Run(fmt.Sprintf("prefix=%q", tc.prefix), func(t *testing.T) {
			infos, err := s.List(ctx, tc.prefix)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, info := range infos {
				got = append(got, info.Key)
				want := wantInfo(info.Key, objects[info.Key])
				if info.SHA256 == "" {
					want.SHA256 = "" // List may leave it to Stat
				}
				checkInfo(t, "List", want, info)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("List(%q) keys (-want +got):\n%s", tc.prefix, diff)
			}
		})
	}
}

func testConcurrentWriters(t *testing.T, s store.Store) {
	const writers = 8
	objects := make([][]byte, writers)
	for i := range objects {
		objects[i] = randBytes(uint64(200+i), 1<<20+rand.N(2<<20))
	}
	var wg sync.WaitGroup
	for i, data := range objects {
		wg.Go(func() {
			k := fmt.Sprintf("case-1/agent-%d/col-1/memory.lime", i)
			if _, err := put(t.Context(), s, k, data); err != nil {
				t.Errorf("put %s: %v", k, err)
			}
		})
	}
	wg.Wait()
	for i, data := range objects {
		k := fmt.Sprintf("case-1/agent-%d/col-1/memory.lime", i)
		stat, err := s.Stat(t.Context(), k)
		if err != nil {
			t.Fatalf("Stat(%s): %v", k, err)
		}
		checkInfo(t, "Stat", wantInfo(k, data), stat)
		if got := readAll(t, s, k); !bytes.Equal(got, data) {
			t.Errorf("%s: content differs from what was written", k)
		}
	}
}

func testConcurrentSameKey(t *testing.T, s store.Store) {
	const writers = 8
	t.Run("identical", func(t *testing.T) {
		k := key(t, "case-1", "agent-1", "col-1", "identical")
		data := randBytes(300, 256<<10)
		var wg sync.WaitGroup
		for range writers {
			wg.Go(func() {
				info, err := put(t.Context(), s, k, data)
				if err != nil {
					t.Errorf("put: %v", err)
					return
				}
				checkInfo(t, "Commit", wantInfo(k, data), info)
			})
		}
		wg.Wait()
		if got := readAll(t, s, k); !bytes.Equal(got, data) {
			t.Error("content differs from what was written")
		}
	})
	t.Run("different", func(t *testing.T) {
		k := key(t, "case-1", "agent-1", "col-1", "different")
		var (
			wg      sync.WaitGroup
			mu      sync.Mutex
			winners [][]byte
		)
		for i := range writers {
			data := randBytes(uint64(400+i), 256<<10)
			wg.Go(func() {
				_, err := put(t.Context(), s, k, data)
				switch {
				case err == nil:
					mu.Lock()
					winners = append(winners, data)
					mu.Unlock()
				case !errors.Is(err, store.ErrExists):
					t.Errorf("losing put = %v, want ErrExists", err)
				}
			})
		}
		wg.Wait()
		if len(winners) != 1 {
			t.Fatalf("%d writers of different content succeeded, want exactly 1", len(winners))
		}
		if got := readAll(t, s, k); !bytes.Equal(got, winners[0]) {
			t.Error("stored content is not the winner's")
		}
	})
}

// testLargeStreamed writes an object far larger than any single buffer a
// backend might keep, in the agent's write size, without holding it in
// memory on the test side either.
func testLargeStreamed(t *testing.T, s store.Store) {
	const (
		size  = 64 << 20
		write = 32 << 10
	)
	ctx := t.Context()
	k := key(t, "case-1", "agent-1", "col-1", "memory.lime")
	// Chunks are cut from one random block and stamped with their index, so
	// the stream is cheap to produce yet no two chunks are equal.
	block := randBytes(500, 1<<20)
	chunk := func(i int) []byte {
		c := bytes.Clone(block[i*write%len(block):][:write])
		binary.LittleEndian.PutUint64(c, uint64(i))
		return c
	}
	w, err := s.Create(ctx, k, store.CreateOptions{ExpectedSize: size})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Abort(ctx)
	h := sha256.New()
	for i := range size / write {
		c := chunk(i)
		h.Write(c)
		if _, err := w.Write(c); err != nil {
			t.Fatalf("write %d: %v", i, err)
		}
	}
	sum := h.Sum(nil)
	committed, err := w.Commit(ctx, size, sum)
	if err != nil {
		t.Fatalf("Commit: %v", err)
	}
	want := store.Info{Key: k, Size: size, SHA256: hex.EncodeToString(sum)}
	checkInfo(t, "Commit", want, committed)
	stat, err := s.Stat(ctx, k)
	if err != nil {
		t.Fatal(err)
	}
	checkInfo(t, "Stat", want, stat)

	rc, err := s.Open(ctx, k)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	h.Reset()
	n, err := io.Copy(h, rc)
	if err != nil {
		t.Fatal(err)
	}
	if n != size || !bytes.Equal(h.Sum(nil), sum) {
		t.Errorf("Open returned %d bytes sha256 %x, want %d bytes sha256 %x", n, h.Sum(nil), size, sum)
	}
}

// testTeeWriter: a store writer that is a store.TeeWriter feeds the
// caller's digest exactly the bytes written, whatever the write sizes, and
// the object commits under that digest.
func testTeeWriter(t *testing.T, s store.Store) {
	ctx := t.Context()
	k := key(t, "case-1", "agent-1", "col-1", "tee.bin")
	data := randBytes(600, 9<<20+13)
	w, err := s.Create(ctx, k, store.CreateOptions{ExpectedSize: int64(len(data))})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Abort(ctx)
	tw, ok := w.(store.TeeWriter)
	if !ok {
		return // nothing to check: the caller hashes on its own
	}
	h := sha256.New()
	for off, n := 0, 1; off < len(data); off, n = off+n, n*5+3 {
		n = min(n, len(data)-off, 1<<20+7)
		if _, err := tw.WriteTee(data[off:off+n], h); err != nil {
			t.Fatalf("WriteTee at %d: %v", off, err)
		}
	}
	sum := h.Sum(nil)
	if !bytes.Equal(sum, digest(data)) {
		t.Fatalf("caller's digest %x, want %x", sum, digest(data))
	}
	committed, err := w.Commit(ctx, int64(len(data)), sum)
	if err != nil {
		t.Fatalf("Commit: %v", err)
	}
	checkInfo(t, "Commit", wantInfo(k, data), committed)
	if got := readAll(t, s, k); !bytes.Equal(got, data) {
		t.Errorf("read back %d bytes, want the %d written", len(got), len(data))
	}
}

func testCanceledContext(t *testing.T, s store.Store) {
	k := key(t, "case-1", "agent-1", "col-1", "canceled")
	mustPut(t, s, key(t, "case-1", "agent-1", "col-1", "present"), []byte("x"))
	ctx, cancel := context.WithCancel(t.Context())
	cancel()

	if _, err := s.Create(ctx, k, store.CreateOptions{ExpectedSize: -1}); !errors.Is(err, context.Canceled) {
		t.Errorf("Create = %v, want context.Canceled", err)
	}
	if _, err := s.Stat(ctx, "case-1/agent-1/col-1/present"); !errors.Is(err, context.Canceled) {
		t.Errorf("Stat = %v, want context.Canceled", err)
	}
	if rc, err := s.Open(ctx, "case-1/agent-1/col-1/present"); !errors.Is(err, context.Canceled) {
		if err == nil {
			rc.Close()
		}
		t.Errorf("Open = %v, want context.Canceled", err)
	}
	if _, err := s.List(ctx, "case-1/agent-1/col-1"); !errors.Is(err, context.Canceled) {
		t.Errorf("List = %v, want context.Canceled", err)
	}

	// A Commit whose context has ended must not publish the object.
	data := []byte("late")
	w, err := s.Create(t.Context(), k, store.CreateOptions{ExpectedSize: int64(len(data))})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(data); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Commit(ctx, int64(len(data)), digest(data)); err == nil {
		t.Error("Commit with a canceled context succeeded")
	}
	if err := w.Abort(t.Context()); err != nil {
		t.Errorf("Abort: %v", err)
	}
	checkAbsent(t, s, k)
}
