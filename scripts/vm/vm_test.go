package vm

import (
	"archive/zip"
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	_ "embed"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/custodyhq/custody/agent/preflight"
	"github.com/custodyhq/custody/internal/lime"
	"github.com/custodyhq/custody/internal/manifest"
	"github.com/custodyhq/custody/internal/testenv"
	custodyv1 "github.com/custodyhq/custody/proto/custody/v1"
	e2e "github.com/custodyhq/custody/scripts/e2e"
)

//go:embed init.sh
var initScript []byte

// guestMiB is the guest's RAM: capture time grows with it, and at 160 MiB
// the kernel, the initramfs and the agent no longer fit (the OOM killer
// took the agent mid-capture).
const guestMiB = 256

// guestCPUs: qemu emulates each vCPU on its own host thread, so a second
// one lets the agent compress and hash while it sends.
const guestCPUs = 2

// TestVM boots Debian's kernel twice with the real agent inside. First
// boot: physical memory from /proc/kcore, then through LiME, each checked
// against the guest's own /proc/iomem, banner and a marker it wrote, and
// the in-guest throughput measured. Second boot, with
// module.sig_enforce=1: LiME is refused with a reason that says why, and
// auto still captures from kcore.
func TestVM(t *testing.T) {
	qemu := testenv.NeedTool(t, "qemu-system-x86_64")
	cache := DefaultCache()
	if missing := cache.Missing(); len(missing) > 0 {
		testenv.Skip(t, "guest kernel pieces missing (%s): run scripts/vm/ci-deps.sh as root", strings.Join(missing, ", "))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	started := time.Now()

	binDir := t.TempDir()
	bin, err := e2e.Build(ctx, binDir)
	if err != nil {
		t.Fatal(err)
	}
	// The guest's own copies are stripped: a smaller initramfs boots
	// faster under emulation.
	guestDir := t.TempDir()
	agent, bench := filepath.Join(guestDir, "custody-agent"), filepath.Join(guestDir, "guestbench")
	if err := goBuild(ctx, guestDir, "./agent/cmd/custody-agent", "./scripts/vm/guestbench"); err != nil {
		t.Fatal(err)
	}
	c := e2e.NewCluster(t, bin)
	c.StartCollector("127.0.0.1:0")
	_, port, err := net.SplitHostPort(c.Addr)
	if err != nil {
		t.Fatal(err)
	}
	h := &harness{t: t, c: c, cache: cache, qemu: qemu, agent: agent, bench: bench, port: port, seen: map[string]bool{}}
	t.Logf("binaries built, collector on %s after %s", c.Addr, time.Since(started).Round(time.Millisecond))

	t.Run("kcore and LiME", func(t *testing.T) {
		g := h.boot(ctx, t, "", true)
		defer g.Stop()
		banner := h.banner(ctx, t, g)
		h.snapshotsBPF(ctx, t, g)
		kcore := h.capture(ctx, t, g, "VM-KCORE", "kcore")
		h.checkImage(t, g, kcore, "kcore", banner)
		limeArt := h.capture(ctx, t, g, "VM-LIME", "lime")
		h.checkImage(t, g, limeArt, "lime", banner)
		if limeArt.Details["module_unload"] != "ok" {
			t.Errorf("LiME module not unloaded: %v", limeArt.Details)
		}
		// LiME writes to a FIFO only the agent can open, never to a
		// loopback port any local process could connect to first.
		if p := limeArt.Details["module_params"]; !regexp.MustCompile(`^path=/\S+/custody-lime-\d+/lime\.fifo format=lime `).MatchString(p) {
			t.Errorf("LiME module parameters %q: want its output on the agent's FIFO", p)
		}
		h.report(t, g, kcore, limeArt)
	})

	t.Run("signature enforcement", func(t *testing.T) {
		g := h.boot(ctx, t, "module.sig_enforce=1", false)
		defer g.Stop()
		checks := map[string]preflight.Check{}
		for _, c := range g.preflight {
			checks[c.Name] = c
		}
		if c := checks["module_sig_enforce"]; c.OK || !strings.Contains(c.Detail, "enforced") {
			t.Errorf("preflight module_sig_enforce = %+v, want a refusal", c)
		}
		if c := checks["lime_module"]; c.OK || !strings.Contains(c.Detail, "unsigned") {
			t.Errorf("preflight lime_module = %+v, want a refusal naming the unsigned module", c)
		}
		if c := checks["kcore"]; !c.OK {
			t.Errorf("preflight kcore = %+v, want readable", c)
		}

		col := h.collect(ctx, t, g, "VM-SIG", "lime")
		if col.GetState() == custodyv1.CollectionState_COLLECTION_STATE_COMPLETE {
			t.Fatal("LiME capture succeeded with module.sig_enforce=1")
		}
		var msg string
		for _, a := range col.GetArtifacts() {
			msg += a.GetError()
		}
		if !strings.Contains(msg, "module signature enforcement") {
			t.Errorf("LiME refusal %q does not name signature enforcement", msg)
		}
		t.Logf("LiME refused as it should be: %s", msg)

		auto := h.capture(ctx, t, g, "VM-AUTO", "auto")
		if auto.Details["source"] != "kcore" {
			t.Errorf("auto used %q, want kcore", auto.Details["source"])
		}
		h.checkImage(t, g, auto, "kcore", "")
	})
	t.Logf("VM test took %s", time.Since(started).Round(time.Second))
}

type harness struct {
	t                  *testing.T
	c                  *e2e.Cluster
	cache              Cache
	qemu, agent, bench string
	port               string
	seen               map[string]bool // agents of earlier boots
}

// guest is one booted VM and what its console told.
type guest struct {
	*Guest
	agentID   string
	marker    string
	ram       []lime.Range // System RAM of the guest's /proc/iomem
	preflight []preflight.Check
	booted    time.Duration
}

var (
	markerLine = regexp.MustCompile(`CUSTODY-MARKER (custody-marker-[0-9a-f]+-[0-9a-f-]+)`)
	agentStart = regexp.MustCompile(`CUSTODY-AGENT-START`)
	guestDied  = regexp.MustCompile(`CUSTODY-AGENT-EXIT|Out of memory|Kernel panic`)
	benchLine  = regexp.MustCompile(`CUSTODY-BENCH round=(\d+) name=(\S+) (?:bytes=(\d+) seconds=([0-9.]+)|error=(".*"))`)
)

func (h *harness) boot(ctx context.Context, t *testing.T, cmdline string, bench bool) *guest {
	t.Helper()
	dir := t.TempDir()
	nonce := make([]byte, 8)
	rand.Read(nonce)
	token, err := os.ReadFile(h.c.Token(1))
	if err != nil {
		t.Fatal(err)
	}
	benchFlag := "0"
	fsys := Initramfs{
		"/init":                   {Mode: 0o755, Data: initScript},
		"/bin/busybox":            {Mode: 0o755, Source: h.cache.Busybox()},
		"/bin/custody-agent":      {Mode: 0o755, Source: h.agent},
		"/lib/custody/e1000.ko":   {Mode: 0o644, Source: h.cache.NIC()},
		"/etc/custody/ca.crt":     {Mode: 0o644, Source: h.c.CA},
		"/etc/custody/join-token": {Mode: 0o600, Data: token},
		"/etc/os-release":         {Mode: 0o644, Data: []byte("PRETTY_NAME=\"custody VM test guest\"\nID=custody-vm\n")},
		"/usr/lib/custody/lime/" + KernelABI() + "/lime.ko": {Mode: 0o644, Source: h.cache.Lime()},
	}
	if bench {
		fsys["/bin/guestbench"] = File{Mode: 0o755, Source: h.bench}
		benchFlag = "1"
	}
	fsys["/etc/custody/env"] = File{Mode: 0o644, Data: []byte(fmt.Sprintf(
		"COLLECTOR=10.0.2.2:%s\nNONCE=%s\nBENCH=%s\nCPUS=%d\n", h.port, hex.EncodeToString(nonce), benchFlag, guestCPUs))}
	initrd := filepath.Join(dir, "initrd.gz")
	f, err := os.Create(initrd)
	if err != nil {
		t.Fatal(err)
	}
	if err := fsys.Write(f); err != nil {
		t.Fatal(err)
	}
	f.Close()

	start := time.Now()
	g, err := Boot(Config{Qemu: h.qemu, Kernel: h.cache.Kernel(), Initrd: initrd, Cmdline: cmdline,
		MemoryMiB: guestMiB, CPUs: guestCPUs, Console: filepath.Join(dir, "console.log")})
	if err != nil {
		t.Fatal(err)
	}
	gg := &guest{Guest: g}
	t.Cleanup(func() {
		g.Stop()
		if t.Failed() {
			t.Logf("---- guest console ----\n%s", tailBytes(g.Console(), 32<<10))
		}
	})
	bctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	m, err := g.WaitFor(bctx, markerLine)
	if err != nil {
		t.Fatal(err)
	}
	gg.marker = string(m[1])
	if _, err := g.WaitFor(bctx, agentStart); err != nil {
		t.Fatal(err)
	}
	gg.booted = time.Since(start)
	iomem, err := Between(g.Console(), "CUSTODY-IOMEM-BEGIN", "CUSTODY-IOMEM-END")
	if err != nil {
		t.Fatal(err)
	}
	if gg.ram, err = systemRAM(iomem); err != nil {
		t.Fatalf("guest /proc/iomem: %v\n%s", err, iomem)
	}
	pf, err := Between(g.Console(), "CUSTODY-PREFLIGHT-BEGIN", "CUSTODY-PREFLIGHT-END")
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(pf, &gg.preflight); err != nil {
		t.Fatalf("preflight -o json: %v\n%s", err, pf)
	}
	gg.agentID = h.waitAgent(ctx, t)
	t.Logf("guest up in %s (agent %s, %d System RAM ranges, marker %s)", gg.booted.Round(time.Millisecond), gg.agentID, len(gg.ram), gg.marker)
	return gg
}

// waitAgent waits for a connected agent that no earlier boot had.
func (h *harness) waitAgent(ctx context.Context, t *testing.T) string {
	t.Helper()
	var id string
	err := e2e.Poll(ctx, 2*time.Minute, 200*time.Millisecond, func() (bool, error) {
		agents, err := h.c.Agents(ctx)
		if err != nil {
			return false, nil
		}
		for _, a := range agents {
			if a.GetConnected() && !h.seen[a.GetAgentId()] {
				id = a.GetAgentId()
				return true, nil
			}
		}
		return false, nil
	})
	if err != nil {
		t.Fatalf("the guest's agent never connected: %v", err)
	}
	h.seen[id] = true
	return id
}

func (h *harness) collect(ctx context.Context, t *testing.T, g *guest, caseID, source string, extra ...string) *custodyv1.Collection {
	t.Helper()
	arts := "physical_memory"
	if len(extra) > 0 {
		arts = strings.Join(append(extra, arts), ",")
	}
	// A guest whose agent died would leave custodyctl waiting for a
	// reconnect that never comes.
	ctx, cancel := context.WithCancel(ctx)
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		if _, err := g.WaitFor(ctx, guestDied); err == nil {
			// The cause first: the whole console follows at cleanup, but
			// CI logs keep only so much of a failure.
			t.Errorf("guest failed during the %s capture:\n%s", source, aroundDeath(g.Console()))
			cancel()
		}
	}()
	defer func() {
		cancel()
		<-watched
	}()
	r := h.c.Ctl(ctx, "collect", "--agent", g.agentID, "--artifacts", arts, "--param", "physical_memory.source="+source,
		"--case", caseID, "--reason", "scripts/vm real-kernel test", "--wait", "--timeout", "4m", "-o", "json")
	col, err := e2e.ParseCollection(r.Stdout)
	if err != nil {
		t.Fatalf("%v\n%s", err, r)
	}
	return col
}

// capture collects physical memory from source and returns its manifest
// entry after checking that the collection is complete and verifies.
func (h *harness) capture(ctx context.Context, t *testing.T, g *guest, caseID, source string) manifest.Artifact {
	t.Helper()
	col := h.collect(ctx, t, g, caseID, source)
	if col.GetState() != custodyv1.CollectionState_COLLECTION_STATE_COMPLETE {
		t.Fatalf("collection from %s: %v", source, col)
	}
	// Signature and every stored byte, as a responder would check them.
	if r := h.c.Ctl(ctx, "verify", col.GetCollectionId()); r.Code != 0 {
		t.Errorf("%s", r)
	}
	a := h.artifact(t, g, caseID, col.GetCollectionId(), "physical_memory")
	a.Key = filepath.Join(h.c.CollectionDir(caseID, g.agentID, col.GetCollectionId()), filepath.Base(a.Key))
	return a
}

func (h *harness) artifact(t *testing.T, g *guest, caseID, colID, name string) manifest.Artifact {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(h.c.CollectionDir(caseID, g.agentID, colID), "manifest.json"))
	if err != nil {
		t.Fatal(err)
	}
	var m manifest.Manifest
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	for _, a := range m.Artifacts {
		if a.Name == name {
			return a
		}
	}
	t.Fatalf("manifest of %s has no %s", colID, name)
	return manifest.Artifact{}
}

// snapshotsBPF collects processes and open_files with their BPF
// iterators required (method=bpf fails rather than falls back), on the
// guest's kernel, which is Debian's and not the host's: the one committed
// BPF object must load, relocated, on both.
func (h *harness) snapshotsBPF(ctx context.Context, t *testing.T, g *guest) {
	t.Helper()
	r := h.c.Ctl(ctx, "collect", "--agent", g.agentID, "--artifacts", "processes,open_files,sockets",
		"--param", "processes.method=bpf", "--param", "open_files.method=bpf", "--case", "VM-SNAP",
		"--reason", "scripts/vm real-kernel test", "--wait", "--timeout", "2m", "-o", "json")
	col, err := e2e.ParseCollection(r.Stdout)
	if err != nil {
		t.Fatalf("%v\n%s", err, r)
	}
	if col.GetState() != custodyv1.CollectionState_COLLECTION_STATE_COMPLETE {
		t.Fatalf("snapshots with BPF iterators in the guest: %v", col)
	}
	for _, name := range []string{"processes", "open_files", "sockets"} {
		a := h.artifact(t, g, "VM-SNAP", col.GetCollectionId(), name)
		if name != "sockets" && a.Details["method"] != "bpf_iter" {
			t.Errorf("%s in the guest ran as %q: %v", name, a.Details["method"], a.Details)
		}
		t.Logf("guest %s: method %s, %s processes, %d bytes", name, a.Details["method"], a.Details["processes_scanned"], a.RawSize)
	}
}

// banner collects kernel_symbols and returns the kernel banner in it.
func (h *harness) banner(ctx context.Context, t *testing.T, g *guest) string {
	t.Helper()
	r := h.c.Ctl(ctx, "collect", "--agent", g.agentID, "--artifacts", "kernel_symbols", "--case", "VM-SYMBOLS",
		"--reason", "scripts/vm real-kernel test", "--wait", "--timeout", "2m", "-o", "json")
	if r.Code != 0 {
		t.Fatal(r)
	}
	col, err := e2e.ParseCollection(r.Stdout)
	if err != nil {
		t.Fatal(err)
	}
	a := h.artifact(t, g, "VM-SYMBOLS", col.GetCollectionId(), "kernel_symbols")
	var raw bytes.Buffer
	if _, _, err := e2e.DecodeZstd(filepath.Join(h.c.CollectionDir("VM-SYMBOLS", g.agentID, col.GetCollectionId()), filepath.Base(a.Key)), &raw); err != nil {
		t.Fatal(err)
	}
	zr, err := zip.NewReader(bytes.NewReader(raw.Bytes()), int64(raw.Len()))
	if err != nil {
		t.Fatalf("kernel_symbols is not a ZIP archive: %v", err)
	}
	entries := map[string][]byte{}
	for _, f := range zr.File {
		rc, err := f.Open()
		if err != nil {
			t.Fatal(err)
		}
		entries[f.Name], err = io.ReadAll(rc)
		rc.Close()
		if err != nil {
			t.Fatalf("%s: %v", f.Name, err)
		}
	}
	banner := strings.TrimSpace(string(entries["banner"]))
	if !strings.HasPrefix(banner, "Linux version "+KernelABI()+" ") {
		t.Fatalf("banner %q is not the pinned kernel's", banner)
	}
	if len(entries["btf/vmlinux"]) < 1<<20 || !bytes.HasPrefix(entries["btf/vmlinux"], []byte{0x9f, 0xeb}) {
		t.Errorf("btf/vmlinux: %d bytes, want the kernel's BTF", len(entries["btf/vmlinux"]))
	}
	if !bytes.Contains(entries["kallsyms"], []byte(" T startup_64\n")) || a.Details["kallsyms_addresses"] != "visible" {
		t.Errorf("kallsyms: %d bytes, addresses %s", len(entries["kallsyms"]), a.Details["kallsyms_addresses"])
	}
	t.Logf("kernel_symbols: %v", a.Details["entries"])
	return banner
}

// checkImage holds a stored image to what the issue asks: it decompresses
// to the bytes both sides hashed, passes the Volatility-3 rules, has
// exactly the guest's System RAM ranges, holds the banner and the marker,
// and is zero wherever the manifest says memory could not be read.
func (h *harness) checkImage(t *testing.T, g *guest, a manifest.Artifact, source, banner string) {
	t.Helper()
	if a.Details["source"] != source {
		t.Errorf("source %q, want %q", a.Details["source"], source)
	}
	if a.AgentSHA256 == "" || a.AgentSHA256 != a.CollectorSHA256 {
		t.Errorf("agent SHA-256 %q, collector SHA-256 %q", a.AgentSHA256, a.CollectorSHA256)
	}
	path := filepath.Join(t.TempDir(), "image.lime")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sum, n, err := e2e.DecodeZstd(a.Key, f)
	if err != nil {
		t.Fatal(err)
	}
	if sum != a.AgentSHA256 || n != a.RawSize {
		t.Errorf("stored object decompresses to %d bytes with SHA-256 %s; manifest says %d, %s", n, sum, a.RawSize, a.AgentSHA256)
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		t.Fatal(err)
	}
	ranges, err := lime.Validate(bufio.NewReaderSize(f, 1<<20))
	if err != nil {
		t.Fatalf("image breaks the LiME rules Volatility 3 applies: %v", err)
	}
	if diff := cmp.Diff(g.ram, ranges); diff != "" {
		t.Errorf("image ranges differ from the guest's /proc/iomem System RAM (-iomem +image):\n%s", diff)
	}
	needles := []string{g.marker}
	if banner != "" {
		needles = append(needles, banner)
	}
	found, err := findAll(path, needles)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range needles {
		if !found[s] {
			t.Errorf("image does not contain %q", s)
		}
	}
	for _, s := range a.SkippedRanges {
		off, ok := fileOffset(ranges, s.Start, s.End)
		if !ok {
			t.Errorf("skipped range %#x-%#x (%s) is not inside a System RAM range", s.Start, s.End, s.Reason)
			continue
		}
		b := make([]byte, s.End-s.Start)
		if _, err := f.ReadAt(b, off); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(b, make([]byte, len(b))) {
			t.Errorf("skipped range %#x-%#x is not zero-filled", s.Start, s.End)
		}
		t.Logf("%s: skipped %#x-%#x: %s", source, s.Start, s.End, s.Reason)
	}
}

// report logs throughput: the in-guest measurements of this boot and the
// captures that went all the way to the collector.
func (h *harness) report(t *testing.T, g *guest, arts ...manifest.Artifact) {
	mibs := func(bytes int64, secs float64) string {
		return fmt.Sprintf("%7.1f MiB/s  (%d MiB in %.2f s)", float64(bytes)/(1<<20)/secs, bytes>>20, secs)
	}
	var lines []string
	for _, m := range benchLine.FindAllSubmatch(g.Console(), -1) {
		name := fmt.Sprintf("%s (round %s)", m[2], m[1])
		if m[5] != nil {
			lines = append(lines, fmt.Sprintf("  %-36s error %s", name, m[5]))
			continue
		}
		n, _ := strconv.ParseInt(string(m[3]), 10, 64)
		secs, _ := strconv.ParseFloat(string(m[4]), 64)
		lines = append(lines, fmt.Sprintf("  %-36s %s", name, mibs(n, secs)))
	}
	for _, a := range arts {
		n, _ := strconv.ParseInt(a.Details["image_bytes"], 10, 64)
		secs, _ := strconv.ParseFloat(a.Details["seconds"], 64)
		lines = append(lines, fmt.Sprintf("  %-36s %s", "upload-"+a.Details["source"]+" (zstd+mTLS)", mibs(n, secs)))
	}
	t.Logf("in-guest throughput, %d MiB guest, %d vCPUs, TCG emulation, same boot (lime-to-devnull copies nothing: /dev/null "+
		"drops LiME's writes in the kernel; lime-tcp-to-discard is LiME's stream read and dropped; agent-*-discard is the "+
		"agent's source into a discarding writer; upload-* is the whole capture, to the collector):\n%s", guestMiB, guestCPUs, strings.Join(lines, "\n"))
}

// systemRAM reads the System RAM ranges of an iomem listing, at any depth.
func systemRAM(iomem []byte) ([]lime.Range, error) {
	var out []lime.Range
	for _, line := range strings.Split(string(iomem), "\n") {
		span, name, ok := strings.Cut(strings.TrimSpace(line), " : ")
		if !ok || name != "System RAM" {
			continue
		}
		lo, hi, _ := strings.Cut(span, "-")
		a, err1 := strconv.ParseUint(lo, 16, 64)
		b, err2 := strconv.ParseUint(hi, 16, 64)
		if err1 != nil || err2 != nil {
			return nil, fmt.Errorf("bad line %q", line)
		}
		out = append(out, lime.Range{First: a, Last: b})
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no System RAM")
	}
	return out, nil
}

// fileOffset is where physical [start, end) sits in an image of ranges.
func fileOffset(ranges []lime.Range, start, end uint64) (int64, bool) {
	var off int64
	for _, r := range ranges {
		off += lime.HeaderSize
		if start >= r.First && end <= r.Last+1 && start < end {
			return off + int64(start-r.First), true
		}
		off += int64(r.Len())
	}
	return 0, false
}

// findAll reports which needles occur in the file.
func findAll(path string, needles []string) (map[string]bool, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	longest := 0
	for _, n := range needles {
		longest = max(longest, len(n))
	}
	found := map[string]bool{}
	buf := make([]byte, 4<<20)
	keep := 0
	for {
		n, err := f.Read(buf[keep:])
		window := buf[:keep+n]
		for _, s := range needles {
			if bytes.Contains(window, []byte(s)) {
				found[s] = true
			}
		}
		if err == io.EOF {
			return found, nil
		}
		if err != nil {
			return nil, err
		}
		keep = min(longest, len(window))
		copy(buf, window[len(window)-keep:])
	}
}

// goBuild builds static, stripped binaries of pkgs into dir.
func goBuild(ctx context.Context, dir string, pkgs ...string) error {
	gomod, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output()
	if err != nil {
		return err
	}
	args := append([]string{"build", "-trimpath", "-ldflags", "-s -w -X main.version=vm", "-o", dir + string(filepath.Separator)}, pkgs...)
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = filepath.Dir(strings.TrimSpace(string(gomod)))
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build %s: %w\n%s", strings.Join(pkgs, " "), err, b)
	}
	return nil
}

// aroundDeath is the console from a little before guestDied's first match
// to its end, at most 60 lines.
func aroundDeath(console []byte) []byte {
	loc := guestDied.FindIndex(console)
	if loc == nil {
		return tailBytes(console, 4<<10)
	}
	start := loc[0]
	for n := 0; n < 20 && start > 0; n++ {
		start = bytes.LastIndexByte(console[:start-1], '\n') + 1
	}
	lines := bytes.SplitAfter(console[start:], []byte("\n"))
	return bytes.Join(lines[:min(len(lines), 60)], nil)
}

func tailBytes(b []byte, n int) []byte {
	if len(b) <= n {
		return b
	}
	return b[len(b)-n:]
}
