// Package faults injects the failures evidence transfers meet during an
// incident — the collector killed and restarted, the agent killed and
// restarted, connections cut and stalled — into real processes, and checks
// that every transfer still completes with the stored bytes identical to
// the source, nothing stored twice, and the manifest's two hashes equal.
package faults

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/custodyhq/custody/internal/chunk"
	custodyv1 "github.com/custodyhq/custody/proto/custody/v1"
	"github.com/custodyhq/custody/scripts/e2e"
)

var (
	buildOnce sync.Once
	bin       e2e.Binaries
	buildErr  error
)

func binaries(t *testing.T) e2e.Binaries {
	t.Helper()
	if testing.Short() {
		t.Skip("fault injection with real processes in -short mode")
	}
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "custody-faults-bin")
		if err != nil {
			buildErr = err
			return
		}
		bin, buildErr = e2e.Build(context.Background(), dir)
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return bin
}

// seeds: each fault test runs with a fixed seed and two fresh ones (each
// printed), or only CUSTODY_FAULT_SEED if set.
func seeds() []uint64 {
	now := uint64(time.Now().UnixNano())
	s := []uint64{1, now, now ^ 0x9e3779b97f4a7c15}
	if v, err := strconv.ParseUint(os.Getenv("CUSTODY_FAULT_SEED"), 10, 64); err == nil {
		s = []uint64{v}
	}
	return s
}

const artifactSize = 192 << 20

type run struct {
	t       *testing.T
	c       *e2e.Cluster
	rng     *rand.Rand
	src     string
	srcSHA  string
	agentID string
	ctx     context.Context
}

func setup(t *testing.T, seed uint64) *run {
	c := e2e.NewCluster(t, binaries(t))
	src := filepath.Join(c.Dir, "evidence.img")
	sha, err := e2e.WriteFile(src, artifactSize, seed, e2e.FillRandom, e2e.FillText, e2e.FillZeros, e2e.FillRandom)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	t.Cleanup(cancel)
	return &run{t: t, c: c, rng: rand.New(rand.NewPCG(seed, 7)), src: src, srcSHA: sha, ctx: ctx}
}

func (r *run) collect() string {
	r.t.Helper()
	res := r.c.MustCtl(r.ctx, "collect", "--agent", r.agentID, "--artifacts", "file", "--path", r.src, "--case", "FAULT-1", "-o", "json")
	col, err := e2e.ParseCollection(res.Stdout)
	if err != nil {
		r.t.Fatal(err)
	}
	return col.GetCollectionId()
}

// waitBytes waits until the file artifact has at least n raw bytes committed.
func (r *run) waitBytes(id string, n int64) {
	r.t.Helper()
	if err := r.c.WaitBytesDone(r.ctx, id, n); err != nil {
		r.t.Fatalf("waiting for %d bytes of %s: %v", n, id, err)
	}
}

// check waits for the collection to complete and compares what is stored
// with an independent reading of the source.
func (r *run) check(seed uint64, id string) {
	r.t.Helper()
	var col *custodyv1.Collection
	err := e2e.Poll(r.ctx, 3*time.Minute, 100*time.Millisecond, func() (bool, error) {
		var err error
		col, err = r.c.Collection(r.ctx, id)
		return err == nil && e2e.Final(col.GetState()), nil
	})
	if err != nil {
		r.t.Fatalf("seed %d: collection %s never finished: %v\ncollector:\n%s", seed, id, err, r.c.Collector.Logs())
	}
	if col.GetState() != custodyv1.CollectionState_COLLECTION_STATE_COMPLETE {
		r.t.Fatalf("seed %d: collection %s is %s: %v\ncollector:\n%s", seed, id, col.GetState(), col, r.c.Collector.Logs())
	}
	dir := r.c.CollectionDir("FAULT-1", r.agentID, id)
	m, err := e2e.ReadManifest(dir)
	if err != nil {
		r.t.Fatalf("seed %d: %v", seed, err)
	}
	a := m.Artifacts[0]
	stored := filepath.Join(dir, "file.bin.zst")
	sha, n, err := e2e.DecodeZstd(stored, nil)
	if err != nil {
		r.t.Fatalf("seed %d: %v", seed, err)
	}
	wantChunks := (artifactSize + chunk.MaxRawSize - 1) / chunk.MaxRawSize
	switch {
	case sha != r.srcSHA || n != artifactSize:
		r.t.Fatalf("seed %d: stored object decodes to %d bytes sha256 %s; source has %d bytes sha256 %s", seed, n, sha, artifactSize, r.srcSHA)
	case a.AgentSHA256 != r.srcSHA || a.CollectorSHA256 != r.srcSHA:
		r.t.Fatalf("seed %d: manifest hashes agent %s collector %s, source %s", seed, a.AgentSHA256, a.CollectorSHA256, r.srcSHA)
	case a.RawSize != artifactSize || a.Chunks != wantChunks:
		// A byte stored twice would show as extra raw bytes or chunks.
		r.t.Fatalf("seed %d: manifest says %d raw bytes in %d chunks, want %d in %d", seed, a.RawSize, a.Chunks, artifactSize, wantChunks)
	}
	if fi, err := os.Stat(stored); err != nil || fi.Size() != a.StoredSize {
		r.t.Fatalf("seed %d: stored object size %v, manifest %d (%v)", seed, fi.Size(), a.StoredSize, err)
	}
	r.t.Logf("seed %d: complete after faults; resumes: %s", seed, a.Details["upload_resumes"])
	for _, line := range strings.Split(r.c.Collector.Logs(), "\n") {
		if strings.Contains(line, "resum") || strings.Contains(line, "starting over") || strings.Contains(line, "discarded") {
			r.t.Log(line)
		}
	}
}

func TestCollectorKilledAndRestarted(t *testing.T) {
	for _, seed := range seeds() {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			r := setup(t, seed)
			r.c.StartCollector("127.0.0.1:0")
			addr := r.c.Addr
			r.c.StartAgent("agent", r.c.Token(1))
			r.agentID = r.c.WaitConnected(r.ctx, "")
			id := r.collect()
			for kill := 0; kill < 3; kill++ {
				at := int64(float64(artifactSize) * (0.1 + 0.8*r.rng.Float64()) * float64(kill+1) / 3)
				r.waitBytes(id, at)
				t.Logf("seed %d: kill -9 collector at ~%d MiB", seed, at>>20)
				r.c.Collector.Kill()
				time.Sleep(time.Duration(r.rng.IntN(500)) * time.Millisecond)
				r.c.StartCollector(addr)
			}
			r.check(seed, id)
		})
	}
}

func TestAgentKilledAndRestarted(t *testing.T) {
	for _, seed := range seeds() {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			r := setup(t, seed)
			r.c.StartCollector("127.0.0.1:0")
			agent := r.c.StartAgent("agent", r.c.Token(1))
			r.agentID = r.c.WaitConnected(r.ctx, "")
			id := r.collect()
			for kill := 0; kill < 2; kill++ {
				at := int64(float64(artifactSize) * (0.1 + 0.8*r.rng.Float64()) * float64(kill+1) / 2)
				r.waitBytes(id, at)
				t.Logf("seed %d: kill -9 agent at ~%d MiB", seed, at>>20)
				agent.Kill()
				agent = r.c.StartAgent("agent", "") // same state dir: same identity
			}
			r.check(seed, id)
		})
	}
}

func TestNetworkCutsAndStalls(t *testing.T) {
	for _, seed := range seeds() {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			r := setup(t, seed)
			r.c.StartCollector("127.0.0.1:0")
			p := e2e.NewProxy(t, r.c.Addr)
			direct := r.c.Addr
			r.c.Addr = p.Addr // the agent dials the proxy
			r.c.StartAgent("agent", r.c.Token(1))
			r.c.Addr = direct
			r.agentID = r.c.WaitConnected(r.ctx, "")
			id := r.collect()
			for cut := 0; cut < 5; cut++ {
				at := int64(float64(artifactSize) * (float64(cut) + 0.2 + 0.6*r.rng.Float64()) / 5)
				if cut > 0 {
					if err := r.c.WaitUploadingThrough(r.ctx, p, id); err != nil {
						t.Fatalf("waiting for the agent to upload again through the proxy: %v", err)
					}
				}
				r.waitBytes(id, at)
				if r.rng.IntN(2) == 0 {
					d := time.Duration(200+r.rng.IntN(800)) * time.Millisecond
					t.Logf("seed %d: stall %s at ~%d MiB", seed, d, at>>20)
					p.Stall(d)
				}
				t.Logf("seed %d: cut at ~%d MiB", seed, at>>20)
				p.Cut()
			}
			r.check(seed, id)
			if p.Cuts() < 5 {
				t.Fatalf("seed %d: only %d connections were cut", seed, p.Cuts())
			}
		})
	}
}
