// Package bench measures custody end to end with the real binaries as
// separate processes (the harness of scripts/e2e): `make bench`.
package bench

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	custodyv1 "github.com/custodyhq/custody/proto/custody/v1"
	"github.com/custodyhq/custody/scripts/e2e"
)

var bin e2e.Binaries

func TestMain(m *testing.M) {
	flag.Parse()
	if f := flag.Lookup("test.bench"); f == nil || f.Value.String() == "" {
		// No benchmark asked for (go test ./...): nothing to build.
		os.Exit(m.Run())
	}
	dir, err := os.MkdirTemp("", "custody-bench-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	bin, err = e2e.Build(ctx, dir)
	cancel()
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

const mib = 1 << 20

// collectFileN collects path with the file artifact b.N times through
// custodyctl, checking each collection is complete and matches sum and
// size, and returns the time spent and the stored size. Each collection is
// deleted after it is checked (outside the timing), keeping the disk bounded.
func collectFileN(b *testing.B, c *e2e.Cluster, agentID, path, caseID, timeout, sum string, size int64) (total time.Duration, stored int64) {
	b.Helper()
	ctx := b.Context()
	for i := 0; i < b.N; i++ {
		start := time.Now()
		r := c.MustCtl(ctx, "collect", "--agent", agentID, "--artifacts", "file", "--path", path,
			"--case", caseID, "--reason", "make bench", "--wait", "--timeout", timeout, "-o", "json")
		total += time.Since(start)
		b.StopTimer()
		col, err := e2e.ParseCollection(r.Stdout)
		if err != nil {
			b.Fatal(err)
		}
		if col.GetState() != custodyv1.CollectionState_COLLECTION_STATE_COMPLETE || len(col.GetArtifacts()) != 1 {
			b.Fatalf("collection is not complete: %v", col)
		}
		a := col.GetArtifacts()[0]
		if a.GetRawSha256() != sum || a.GetRawSize() != size {
			b.Fatalf("collected %d bytes sha256 %s; %s is %d bytes sha256 %s", a.GetRawSize(), a.GetRawSha256(), path, size, sum)
		}
		stored = a.GetStoredSize()
		if err := os.RemoveAll(c.CollectionDir(caseID, agentID, col.GetCollectionId())); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
	return total, stored
}

// BenchmarkFileArtifact1GiB collects one 1 GiB file (half random, half
// log-like text, so compression does realistic work) agent → collector → fs
// and compares the throughput with reading and hashing the same file, the
// floor any integrity-checked transfer pays.
func BenchmarkFileArtifact1GiB(b *testing.B) {
	const size = 1 << 30
	ctx := b.Context()
	c := e2e.NewCluster(b, bin)
	src := filepath.Join(c.Dir, "evidence.img")
	sum, err := e2e.WriteFile(src, size, 3, e2e.FillRandom, e2e.FillText)
	if err != nil {
		b.Fatal(err)
	}
	defer os.Remove(src)

	// The baseline reads the same (page-cached) file the agent will.
	start := time.Now()
	got, n, err := e2e.HashFile(src)
	hashTime := time.Since(start)
	if err != nil || got != sum || n != size {
		b.Fatalf("baseline read: %d bytes sha256 %s, err %v; want %d bytes sha256 %s", n, got, err, size, sum)
	}

	collector, agent, agentID := c.StartPair(ctx)

	b.ResetTimer()
	total, stored := collectFileN(b, c, agentID, src, "BENCH", "0", sum, size)
	b.StopTimer()

	agentPeak, err := agent.PeakRSS()
	if err != nil {
		b.Fatal(err)
	}
	collectorPeak, err := collector.PeakRSS()
	if err != nil {
		b.Fatal(err)
	}
	agent.Stop()
	collector.Stop()

	rate := float64(b.N) * size / mib / total.Seconds()
	hashRate := size / mib / hashTime.Seconds()
	b.ReportMetric(rate, "MiB/s")
	b.ReportMetric(rate/hashRate, "x_of_sha256_read")
	b.ReportMetric(float64(agentPeak)/mib, "agent_peak_MiB")
	b.ReportMetric(float64(collectorPeak)/mib, "collector_peak_MiB")
	b.Logf("1 GiB file artifact: %.0f MiB/s end to end (%.2fs per collection), %.2fx of read+sha256 (%.0f MiB/s); stored %.0f MiB (%.2f of raw); peak RSS agent %.0f MiB, collector %.0f MiB",
		rate, total.Seconds()/float64(b.N), rate/hashRate, hashRate, float64(stored)/mib, float64(stored)/size,
		float64(agentPeak)/mib, float64(collectorPeak)/mib)
}
