package state

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func open(t *testing.T, path string) *DB {
	t.Helper()
	d, err := Open(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

func TestTokenUsesAndTTL(t *testing.T) {
	ctx := context.Background()
	d := open(t, filepath.Join(t.TempDir(), "state.db"))
	now := time.Date(2026, 11, 22, 8, 0, 0, 0, time.UTC)
	d.now = func() time.Time { return now }

	tok, _, err := d.CreateToken(ctx, 2, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 2; i++ {
		if err := d.RedeemToken(ctx, tok); err != nil {
			t.Fatalf("use %d: %v", i+1, err)
		}
	}
	if err := d.RedeemToken(ctx, tok); !errors.Is(err, ErrToken) || !strings.Contains(err.Error(), "no uses left") {
		t.Fatalf("third use: got %v, want no uses left", err)
	}

	tok2, _, _ := d.CreateToken(ctx, 5, time.Minute)
	now = now.Add(2 * time.Minute)
	if err := d.RedeemToken(ctx, tok2); !errors.Is(err, ErrToken) || !strings.Contains(err.Error(), "expired") {
		t.Fatalf("expired token: got %v", err)
	}
	if err := d.RedeemToken(ctx, "cjt_nonsense"); !errors.Is(err, ErrToken) {
		t.Fatalf("unknown token: got %v", err)
	}
	if _, _, err := d.CreateToken(ctx, 0, time.Hour); err == nil {
		t.Fatal("zero-use token created")
	}
}

func TestTokenConcurrentRedeemNeverOverspends(t *testing.T) {
	ctx := context.Background()
	d := open(t, filepath.Join(t.TempDir(), "state.db"))
	tok, _, _ := d.CreateToken(ctx, 3, time.Hour)
	var wg sync.WaitGroup
	var mu sync.Mutex
	ok := 0
	for i := 0; i < 12; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if d.RedeemToken(ctx, tok) == nil {
				mu.Lock()
				ok++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if ok != 3 {
		t.Fatalf("%d redemptions succeeded, want 3", ok)
	}
}

func TestCollectionsSurviveReopen(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "state.db")
	d := open(t, path)
	at := time.Date(2026, 11, 22, 8, 0, 0, 0, time.UTC)
	c := Collection{ID: "c1", AgentID: "a1", CaseID: "IR-1", State: Pending, RequestedAt: at,
		Artifacts: []Artifact{{Name: "host", State: Pending}, {Name: "file", Params: map[string]string{"path": "/x"}, State: Pending}}}
	if err := d.CreateCollection(ctx, c); err != nil {
		t.Fatal(err)
	}
	if err := d.CreateAgent(ctx, Agent{ID: "a1", EnrolledAt: at, Host: HostFacts{Hostname: "h"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := d.UpdateCollection(ctx, "c1", func(c *Collection) error {
		c.State = Running
		c.Artifact("host").State = Complete
		c.Artifact("host").RawSize = 42
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	// A failing mutation must leave the record as it was.
	boom := errors.New("boom")
	if _, err := d.UpdateCollection(ctx, "c1", func(c *Collection) error { c.State = Failed; return boom }); !errors.Is(err, boom) {
		t.Fatalf("got %v, want boom", err)
	}
	d.Close()

	d2 := open(t, path)
	got, err := d2.GetCollection(ctx, "c1")
	if err != nil {
		t.Fatal(err)
	}
	want := c
	want.State = Running
	want.Artifacts = []Artifact{{Name: "host", State: Complete, RawSize: 42}, c.Artifacts[1]}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("collection after reopen (-want +got):\n%s", diff)
	}
	unfinished, err := d2.UnfinishedCollections(ctx, "a1")
	if err != nil || len(unfinished) != 1 {
		t.Fatalf("unfinished = %v, %v", unfinished, err)
	}
	agents, err := d2.ListAgents(ctx)
	if err != nil || len(agents) != 1 || agents[0].Host.Hostname != "h" {
		t.Fatalf("agents = %+v, %v", agents, err)
	}
	if _, err := d2.GetCollection(ctx, "nope"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("missing collection: %v", err)
	}
}
