package bench

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/custodyhq/custody/scripts/e2e"
)

// BenchmarkAB compares builds of custody side by side on the 2 GiB memory
// image of BenchmarkMemoryImage2GiB: on a shared machine whose speed drifts
// by 10% or more over minutes, only builds run alternately, several times,
// can be told apart by a few percent. It runs only when asked:
//
//	CUSTODY_AB='old=/tmp/old-bin new=' CUSTODY_AB_ROUNDS=3 \
//	  go test -run '^$' -bench BenchmarkAB -benchtime 1x ./scripts/bench/
//
// Each word of CUSTODY_AB is name=dir, dir holding custody-agent,
// custody-collector and custodyctl (empty: the binaries built from this
// tree). Each round starts a fresh collector and agent of every build in
// turn and collects the image CUSTODY_AB_PER times (default 3), the first
// a warm-up (each time b.N collections); the log gives each build's rates
// and CPU per collection (agent + collector) and the median rate.
func BenchmarkAB(b *testing.B) {
	spec := os.Getenv("CUSTODY_AB")
	if spec == "" {
		b.Skip("CUSTODY_AB names no builds to compare")
	}
	type build struct {
		name  string
		bin   e2e.Binaries
		rates []float64
		cpu   []float64
	}
	var builds []*build
	for _, word := range strings.Fields(spec) {
		name, dir, ok := strings.Cut(word, "=")
		if !ok || name == "" {
			b.Fatalf("CUSTODY_AB: %q is not name=dir", word)
		}
		bb := bin
		if dir != "" {
			bb = e2e.Binaries{Agent: filepath.Join(dir, "custody-agent"), Collector: filepath.Join(dir, "custody-collector"), Ctl: filepath.Join(dir, "custodyctl")}
		}
		builds = append(builds, &build{name: name, bin: bb})
	}
	rounds := envInt(b, "CUSTODY_AB_ROUNDS", 3)
	per := envInt(b, "CUSTODY_AB_PER", 3)
	if per < 2 {
		b.Fatalf("CUSTODY_AB_PER=%d: want at least 2 (the first is a warm-up)", per)
	}

	const size = memoryImageSize
	ctx := b.Context()
	c, img, sum := memoryImageCluster(b)
	for range rounds {
		for _, bd := range builds {
			c.Bin = bd.bin
			collector, agent, agentID := c.StartPair(ctx)
			for i := range per {
				cpu0 := cpuSeconds(agent.Pid()) + cpuSeconds(collector.Pid())
				total, _ := collectFileN(b, c, agentID, img, "BENCH-AB", "20m", sum, size)
				if i == 0 {
					continue
				}
				bd.rates = append(bd.rates, float64(b.N)*size/mib/total.Seconds())
				bd.cpu = append(bd.cpu, (cpuSeconds(agent.Pid())+cpuSeconds(collector.Pid())-cpu0)/float64(b.N))
			}
			agent.Stop()
			collector.Stop()
		}
	}
	c.Bin = bin
	for _, bd := range builds {
		sorted := slices.Sorted(slices.Values(bd.rates))
		b.Logf("%-10s median %.0f MiB/s; rates %s MiB/s; CPU %s s", bd.name, sorted[len(sorted)/2], join(bd.rates, "%.0f"), join(bd.cpu, "%.1f"))
	}
}

func envInt(b *testing.B, name string, def int) int {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		b.Fatalf("%s=%q: want a positive number", name, v)
	}
	return n
}

func join(vs []float64, format string) string {
	s := make([]string, len(vs))
	for i, v := range vs {
		s[i] = fmt.Sprintf(format, v)
	}
	return strings.Join(s, " ")
}
