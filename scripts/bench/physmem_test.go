package bench

import (
	"cmp"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/custodyhq/custody/internal/chunk"
	"github.com/custodyhq/custody/internal/testenv"
	"github.com/custodyhq/custody/scripts/e2e"
)

// BenchmarkMemoryImage2GiB acquires a 2 GiB memory-like image (page by
// page: 60% zero pages, 25% text-like, 15% random, from a fixed seed)
// through the agent → collector pipeline (mTLS, zstd per chunk, both sides
// hashing, fs store) and, in the same run on the same page-cached file:
//
//   - the AWS forensic orchestrator's pipeline,
//     cat img | tee >(sha256sum > h) | gzip | cat > out
//   - the local ceiling, zstd -1 < img | sha256sum
//
// The targets are at least 5x the first and 0.7x the second; they are
// reported as x_of_orchestrator and x_of_zstd_ceiling (the lower median
// of ceilingPairs pairs, each side first in turn; the extremes as
// x_of_zstd_ceiling_min and _max), not asserted.
//
// Also reported: the work the protocol mandates, measured alone on one
// goroutine over the same image (mandatedWork), and the ratio to the
// ceiling that work would allow if it filled both CPUs perfectly with
// nothing else at all to do (x_of_zstd_ceiling_bound): what is left between
// the measured ratio and that bound is TLS, gRPC, copies, system calls and
// scheduling.
func BenchmarkMemoryImage2GiB(b *testing.B) {
	for _, tool := range []string{"bash", "gzip", "zstd", "sha256sum", "tee"} {
		testenv.NeedTool(b, tool)
	}
	const size = memoryImageSize
	ctx := b.Context()
	c, img, sum := memoryImageCluster(b)
	// Every contender reads the image from the page cache.
	if got, _, err := e2e.HashFile(img); err != nil || got != sum {
		b.Fatalf("warming the page cache: %v (sha256 %s, want %s)", err, got, sum)
	}

	// The orchestrator's pipeline runs before and after custody and its
	// faster run counts: a pipeline slowed by something else on the machine
	// would flatter custody's ratio.
	//
	// The ceiling and custody run in turns, ceilingPairs times, and the
	// median pair by ratio counts (of the two middle ones, the lower), with
	// its rates and CPU.
	// This machine's speed drifts by 10% or more over tens of seconds (the
	// same collection has cost 6.7 and 8.1 CPU-s minutes apart), which
	// moved the ratio of single runs from 0.61 to 0.76 on one code; a pair
	// run back to back sees the same machine.
	//
	// Which of the two runs first alternates from pair to pair, and there
	// is an even number of pairs: a run right after zstd is slower. Custody
	// collected the image at 497-578 MiB/s right after zstd -1 over it
	// (alone or as the ceiling), against 564-599 after its own collection
	// and 560-602 after 2.6 s of sleep, of a busy loop on both CPUs or of
	// cat over the image, all on one pair of processes in rotation (4
	// rounds each, twice); the ceiling right after custody was not slower
	// than right after itself. With the ceiling always first, every custody
	// run paid that and the ceiling never did.
	outDir := b.TempDir()
	ceilingCmd := `zstd -1 -q -c < "$1" | sha256sum > /dev/null`
	orchestratorCmd := `cat "$1" | tee >(sha256sum > "$2/h") | gzip | cat > "$2/out"`
	orchestrator, _ := timeShell(b, ctx, orchestratorCmd, img, outDir)

	agentWork, collectorWork, err := mandatedWork(img)
	if err != nil {
		b.Fatal(err)
	}

	type pair struct {
		custody, ceiling       time.Duration // per collection, per pipeline run
		agentCPU, collectorCPU float64       // per collection
		ceilingCPU             time.Duration
		stored                 int64
	}
	ratio := func(p pair) float64 { return p.ceiling.Seconds() / p.custody.Seconds() }
	collector, agent, agentID := c.StartPair(ctx)
	var pairs []pair
	for i := range ceilingPairs {
		var p pair
		ceilingFirst := i%2 == 0
		if ceilingFirst {
			p.ceiling, p.ceilingCPU = timeShell(b, ctx, ceilingCmd, img)
		}
		a0, c0 := cpuSeconds(agent.Pid()), cpuSeconds(collector.Pid())
		b.ResetTimer()
		total, stored := collectFileN(b, c, agentID, img, "BENCH-MEM", "20m", sum, size)
		b.StopTimer()
		p.custody, p.stored = total/time.Duration(b.N), stored
		p.agentCPU = (cpuSeconds(agent.Pid()) - a0) / float64(b.N)
		p.collectorCPU = (cpuSeconds(collector.Pid()) - c0) / float64(b.N)
		if !ceilingFirst {
			p.ceiling, p.ceilingCPU = timeShell(b, ctx, ceilingCmd, img)
		}
		pairs = append(pairs, p)
	}
	agentPeak, _ := agent.PeakRSS()
	collectorPeak, _ := collector.PeakRSS()
	agent.Stop()
	collector.Stop()
	if t, _ := timeShell(b, ctx, orchestratorCmd, img, outDir); t < orchestrator {
		orchestrator = t
	}
	ratios := make([]float64, len(pairs))
	for i, p := range pairs {
		ratios[i] = ratio(p)
	}
	slices.SortFunc(pairs, func(x, y pair) int { return cmp.Compare(ratio(x), ratio(y)) })
	med := pairs[(len(pairs)-1)/2]

	rate := size / mib / med.custody.Seconds()
	orchRate := size / mib / orchestrator.Seconds()
	ceilRate := size / mib / med.ceiling.Seconds()
	b.ReportMetric(rate, "MiB/s")
	b.ReportMetric(orchRate, "orchestrator_MiB/s")
	b.ReportMetric(ceilRate, "zstd_ceiling_MiB/s")
	b.ReportMetric(rate/orchRate, "x_of_orchestrator")
	b.ReportMetric(ratio(med), "x_of_zstd_ceiling")
	b.ReportMetric(ratio(pairs[0]), "x_of_zstd_ceiling_min")
	b.ReportMetric(ratio(pairs[len(pairs)-1]), "x_of_zstd_ceiling_max")
	b.ReportMetric(med.agentCPU, "agent_cpu_s")
	b.ReportMetric(med.collectorCPU, "collector_cpu_s")
	floor := (agentWork + collectorWork) / 2
	b.ReportMetric(agentWork.Seconds(), "mandated_agent_s")
	b.ReportMetric(collectorWork.Seconds(), "mandated_collector_s")
	b.ReportMetric(med.ceiling.Seconds()/floor.Seconds(), "x_of_zstd_ceiling_bound")
	b.ReportMetric(med.ceiling.Seconds()/agentWork.Seconds(), "x_of_zstd_ceiling_serial_bound")
	b.ReportMetric(med.ceilingCPU.Seconds(), "zstd_ceiling_cpu_s")
	b.Logf("2 GiB memory-like image: custody %.0f MiB/s (%.1fs, stored %.0f MiB, peak RSS agent %.0f MiB, collector %.0f MiB, CPU agent %.1fs, collector %.1fs); "+
		"orchestrator cat|tee sha256sum|gzip %.0f MiB/s (%.1fs, faster of 2) -> %.1fx (target >= 5x); zstd -1|sha256sum %.0f MiB/s (%.1fs) -> %.2fx (target >= 0.7x), the lower median of %d pairs, ceiling and custody first in turn: %s",
		rate, med.custody.Seconds(), float64(med.stored)/mib, float64(agentPeak)/mib, float64(collectorPeak)/mib, med.agentCPU, med.collectorCPU,
		orchRate, orchestrator.Seconds(), rate/orchRate, ceilRate, med.ceiling.Seconds(), ratio(med), len(pairs), join(ratios, "%.2f"))
	b.Logf("mandated work alone on one CPU: agent %.2fs (stream SHA-256, zstd), collector %.2fs (zstd decode, stream SHA-256, stored SHA-256) = %.2f CPU-s. "+
		"Bounds on the ratio: the agent's share on its one capture goroutine -> %.2fx; both CPUs filled with no other cost (2 GiB in %.2fs) -> %.2fx. "+
		"Measured: custody %.2f CPU-s in %.2fs; the zstd ceiling %.2f CPU-s in %.2fs",
		agentWork.Seconds(), collectorWork.Seconds(), (agentWork + collectorWork).Seconds(),
		med.ceiling.Seconds()/agentWork.Seconds(), floor.Seconds(), med.ceiling.Seconds()/floor.Seconds(),
		med.agentCPU+med.collectorCPU, med.custody.Seconds(), med.ceilingCPU.Seconds(), med.ceiling.Seconds())
}

// mandatedWork times, on one goroutine, what the protocol requires of each
// side for the file at path, and nothing else: no reading, TLS, gRPC,
// copies or scheduling. The agent's share encodes 4 MiB chunks as a bulk
// upload to this collector does (the stream SHA-256, zstd); the collector's
// checks each frame (decode, stream SHA-256) and hashes the frames as
// stored.
func mandatedWork(path string) (agent, collector time.Duration, err error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, 0, err
	}
	defer f.Close()
	enc, err := chunk.NewEncoderCodec(chunk.CodecZstdBulk, chunk.Position{}, 1)
	if err != nil {
		return 0, 0, err
	}
	enc.SetDigest(chunk.DigestStream)
	v, err := chunk.NewVerifier(true)
	if err != nil {
		return 0, 0, err
	}
	defer v.Close()
	stored := sha256.New()
	raw := make([]byte, chunk.MaxRawSize)
	var frame []byte
	for {
		n, rerr := io.ReadFull(f, raw)
		if n > 0 {
			start := time.Now()
			c, err := enc.Encode(raw[:n], frame)
			if err != nil {
				return 0, 0, err
			}
			frame = c.Data
			mid := time.Now()
			if err := v.Check(c); err != nil {
				return 0, 0, err
			}
			stored.Write(c.Data)
			agent += mid.Sub(start)
			collector += time.Since(mid)
		}
		if rerr == io.EOF || rerr == io.ErrUnexpectedEOF {
			break
		}
		if rerr != nil {
			return 0, 0, rerr
		}
	}
	if err := v.Finish(enc.Trailer()); err != nil {
		return 0, 0, err
	}
	return agent, collector, nil
}

// ceilingPairs is how many times BenchmarkMemoryImage2GiB runs the
// ceiling and custody in turns; even, so each runs first as often.
const ceilingPairs = 6

// memoryImageSize is the size of the memory-like image the physical memory
// benchmarks capture.
const memoryImageSize = 2 << 30

// memoryImageCluster starts a cluster and writes the 2 GiB memory-like
// image (writeMemoryImage, seed 6) into its directory, removed when b
// ends; it returns the image's path and SHA-256.
func memoryImageCluster(b *testing.B) (c *e2e.Cluster, img, sum string) {
	b.Helper()
	c = e2e.NewCluster(b, bin)
	img = filepath.Join(c.Dir, "memory.img")
	b.Cleanup(func() { os.Remove(img) })
	sum, err := writeMemoryImage(img, memoryImageSize, 6)
	if err != nil {
		b.Fatal(err)
	}
	return c, img, sum
}

// timeShell runs a bash pipeline with args as $1, $2, … and returns its
// wall-clock time and the CPU time of all its processes.
func timeShell(b *testing.B, ctx context.Context, script string, args ...string) (took, cpu time.Duration) {
	b.Helper()
	cmd := exec.CommandContext(ctx, "bash", append([]string{"-o", "pipefail", "-c", script, "bench"}, args...)...)
	start := time.Now()
	out, err := cmd.CombinedOutput()
	took = time.Since(start)
	if err != nil {
		b.Fatalf("%s: %v\n%s", script, err, out)
	}
	// bash waits for every process of the pipeline, so its usage covers them.
	return took, cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
}

// writeMemoryImage writes size bytes of 4 KiB pages, each zero (60%),
// text-like (25%: log lines, paths, environment strings) or random (15%:
// keys, compressed or encrypted data), chosen and filled from seed, and
// returns the SHA-256 (hex).
func writeMemoryImage(path string, size int64, seed uint64) (string, error) {
	var text []byte
	return e2e.WriteGenerated(path, size, seed, 7, 4096, func(_ int, page []byte, rng *rand.ChaCha8, pick *rand.Rand) {
		switch p := pick.IntN(100); {
		case p < 60:
			clear(page)
		case p < 85:
			text = text[:0]
			for len(text) < len(page) {
				switch pick.IntN(3) {
				case 0:
					text = fmt.Appendf(text, "2026-11-22T07:%02d:%02d.%06dZ ip-10-0-%d-%d sshd[%d]: Accepted publickey for ec2-user from 10.0.%d.%d port %d ssh2\n",
						pick.IntN(60), pick.IntN(60), pick.IntN(1e6), pick.IntN(4), pick.IntN(256), 1000+pick.IntN(60000), pick.IntN(256), pick.IntN(256), 1024+pick.IntN(64000))
				case 1:
					text = fmt.Appendf(text, "/usr/lib/x86_64-linux-gnu/lib%s.so.%d\x00", strings.Repeat("z", 1+pick.IntN(8)), pick.IntN(9))
				default:
					text = fmt.Appendf(text, "AWS_SESSION_TOKEN=%x\x00PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin\x00", pick.Uint64())
				}
			}
			copy(page, text)
		default:
			rng.Read(page)
		}
	})
}

// cpuSeconds is the user+system CPU time a process has used so far, from
// /proc/PID/stat (fields 14 and 15, in clock ticks of 1/100 s on Linux).
func cpuSeconds(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// The command name, field 2, may hold spaces; fields count from after it.
	_, rest, ok := strings.Cut(string(b), ") ")
	if !ok {
		return 0
	}
	f := strings.Fields(rest)
	if len(f) < 13 {
		return 0
	}
	utime, _ := strconv.ParseFloat(f[11], 64)
	stime, _ := strconv.ParseFloat(f[12], 64)
	return (utime + stime) / 100
}
