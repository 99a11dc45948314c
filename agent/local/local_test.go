package local

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/custodyhq/custody/internal/manifest"
)

// TestCollectConcurrentStage: the light artifacts of a collection run at
// the same time (artifact.Stages); each still lands in its own file,
// whole, with the hashes its manifest entry states, in request order.
func TestCollectConcurrentStage(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "out")
	names := []string{"host", "processes", "sockets", "open_files", "memory_maps"}
	var reqs []Request
	for _, n := range names {
		reqs = append(reqs, Request{Name: n})
	}
	m, err := Collect(context.Background(), Options{Dir: dir, CaseID: "t", Version: "test"}, reqs)
	if err != nil {
		t.Fatal(err)
	}
	if m.State != "complete" || len(m.Artifacts) != len(names) {
		t.Fatalf("manifest state %s with %d artifacts", m.State, len(m.Artifacts))
	}
	for i, a := range m.Artifacts {
		if a.Name != names[i] {
			t.Errorf("artifact %d is %s, want %s (request order)", i, a.Name, names[i])
		}
		f, err := os.Open(a.Location)
		if err != nil {
			t.Fatal(err)
		}
		if err := manifest.VerifyArtifact(context.Background(), a, f); err != nil {
			t.Errorf("%s: %v", a.Name, err)
		}
		f.Close()
		if a.RawSize == 0 {
			t.Errorf("%s: empty", a.Name)
		}
	}
	if got := m.Artifacts[2].Details["owners_from"]; got == "" {
		t.Errorf("sockets did not take its owners from open_files' scan: %v", m.Artifacts[2].Details)
	}
}
