// Package e2e drives custody's real binaries as separate processes, the way
// scripts/demo.sh does: a throwaway PKI and data directory, a collector on
// loopback, agents that enrol with a join token, and custodyctl with its
// connection settings in the environment. The end-to-end tests live beside
// this file; the benchmarks in scripts/bench reuse the same harness.
package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
	"google.golang.org/protobuf/encoding/protojson"

	custodyv1 "github.com/custodyhq/custody/proto/custody/v1"
)

// Deadline bounds every wait in the harness: long enough for a loaded
// 2-core CI machine, short enough that a hang fails instead of stalling.
const Deadline = 60 * time.Second

// Binaries are the paths of the three custody executables.
type Binaries struct {
	Agent, Collector, Ctl string
}

// Build compiles the three binaries, static (CGO_ENABLED=0), into dir. It
// finds the module root through `go env GOMOD`, so it works from any package
// directory of the module.
func Build(ctx context.Context, dir string) (Binaries, error) {
	goTool := os.Getenv("GO")
	if goTool == "" {
		goTool = "go"
	}
	out, err := exec.CommandContext(ctx, goTool, "env", "GOMOD").Output()
	if err != nil {
		return Binaries{}, fmt.Errorf("go env GOMOD: %w", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return Binaries{}, errors.New("not inside the custody module")
	}
	cmd := exec.CommandContext(ctx, goTool, "build", "-trimpath", "-ldflags", "-X main.version=e2e", "-o", dir+string(filepath.Separator),
		"./agent/cmd/custody-agent", "./collector/cmd/custody-collector", "./collector/cmd/custodyctl")
	cmd.Dir = filepath.Dir(gomod)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return Binaries{}, fmt.Errorf("go build: %w\n%s", err, b)
	}
	return Binaries{
		Agent:     filepath.Join(dir, "custody-agent"),
		Collector: filepath.Join(dir, "custody-collector"),
		Ctl:       filepath.Join(dir, "custodyctl"),
	}, nil
}

// Cluster is one throwaway deployment: a PKI, a collector data directory
// and a responder certificate, all under a test's temporary directory.
type Cluster struct {
	TB  testing.TB
	Bin Binaries
	// Dir holds everything; DataDir is the collector's --data-dir.
	Dir, DataDir string
	// CA, Cert and Key are what custodyctl and the agents trust and present.
	CA, Cert, Key string
	// Addr is where the collector last became ready.
	Addr string
	// Collector is the running collector, if any.
	Collector *Proc

	readies int
	starts  map[string]int
}

// NewCluster creates the PKI (pki init) and a responder certificate
// (pki issue responder e2e).
func NewCluster(tb testing.TB, bin Binaries) *Cluster {
	tb.Helper()
	dir := tb.TempDir()
	c := &Cluster{TB: tb, Bin: bin, Dir: dir, DataDir: filepath.Join(dir, "collector")}
	c.MustRun(bin.Collector, "pki", "init", "--data-dir", c.DataDir)
	c.MustRun(bin.Collector, "pki", "issue", "responder", "e2e", "--data-dir", c.DataDir)
	pkiDir := filepath.Join(c.DataDir, "pki")
	c.CA = filepath.Join(pkiDir, "ca.crt")
	c.Cert = filepath.Join(pkiDir, "responder-e2e.crt")
	c.Key = filepath.Join(pkiDir, "responder-e2e.key")
	for _, f := range []string{c.CA, c.Cert, c.Key} {
		if _, err := os.Stat(f); err != nil {
			tb.Fatalf("PKI: %v", err)
		}
	}
	return c
}

// MustRun runs a short command to completion and fails the test if it exits
// non-zero.
func (c *Cluster) MustRun(name string, args ...string) string {
	c.TB.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), Deadline)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = baseEnv()
	out, err := cmd.CombinedOutput()
	if err != nil {
		c.TB.Fatalf("%s %s: %v\n%s", filepath.Base(name), strings.Join(args, " "), err, out)
	}
	return string(out)
}

// Token mints a join token with the given number of uses and returns the
// file it was written to.
func (c *Cluster) Token(uses int) string {
	c.TB.Helper()
	f := filepath.Join(c.Dir, fmt.Sprintf("join-token-%d", time.Now().UnixNano()))
	c.MustRun(c.Bin.Collector, "token", "create", "--uses", strconv.Itoa(uses), "--ttl", "10m", "--data-dir", c.DataDir, "--out", f)
	return f
}

// StartCollector starts `custody-collector serve` on listen (127.0.0.1:0
// for a free port) and waits for its ready file. Binding an address a
// killed collector just held can briefly fail; that is retried.
func (c *Cluster) StartCollector(listen string) *Proc {
	c.TB.Helper()
	var lastErr error
	for attempt := 0; attempt < 10; attempt++ {
		c.readies++
		ready := filepath.Join(c.Dir, fmt.Sprintf("collector-%d.addr", c.readies))
		p := c.Start(fmt.Sprintf("collector-%d", c.readies), c.Bin.Collector,
			"serve", "--data-dir", c.DataDir, "--listen", listen, "--ready-file", ready)
		addr, err := waitReady(p, ready)
		if err == nil {
			c.Addr, c.Collector = addr, p
			return p
		}
		lastErr = err
		p.Kill()
		if !strings.Contains(p.Logs(), "address already in use") {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	c.TB.Fatalf("collector did not start on %s: %v", listen, lastErr)
	return nil
}

func waitReady(p *Proc, ready string) (string, error) {
	deadline := time.Now().Add(Deadline)
	for time.Now().Before(deadline) {
		// WriteFile is not atomic: wait for the whole line.
		if b, err := os.ReadFile(ready); err == nil && bytes.HasSuffix(b, []byte("\n")) {
			return strings.TrimSpace(string(b)), nil
		}
		select {
		case <-p.Done():
			return "", fmt.Errorf("exited before it was ready: %v\n%s", p.Err(), p.Logs())
		case <-time.After(20 * time.Millisecond):
		}
	}
	return "", fmt.Errorf("no ready file %s after %s", ready, Deadline)
}

// StartPair starts the collector on a free loopback port and one agent,
// named "agent", enrolled with a fresh token, and returns them once the
// agent is connected: the setup most tests and benchmarks begin with.
func (c *Cluster) StartPair(ctx context.Context) (collector, agent *Proc, agentID string) {
	c.TB.Helper()
	collector = c.StartCollector("127.0.0.1:0")
	agent = c.StartAgent("agent", c.Token(1))
	return collector, agent, c.WaitConnected(ctx, "")
}

// StartAgent starts `custody-agent run` against the current collector with
// its state in Dir/name. tokenFile may be empty for an agent that is
// already enrolled.
func (c *Cluster) StartAgent(name, tokenFile string) *Proc {
	c.TB.Helper()
	args := []string{"run", "--collector", c.Addr, "--ca", c.CA, "--state-dir", filepath.Join(c.Dir, name), "--max-backoff", "2s"}
	if tokenFile != "" {
		args = append(args, "--join-token-file", tokenFile)
	}
	return c.Start(name, c.Bin.Agent, args...)
}

// CtlResult is the outcome of one custodyctl invocation.
type CtlResult struct {
	Args           []string
	Stdout, Stderr string
	// Code is the exit status, -1 if the process did not exit normally.
	Code int
}

func (r CtlResult) String() string {
	return fmt.Sprintf("custodyctl %s: exit %d\nstdout:\n%s\nstderr:\n%s", strings.Join(r.Args, " "), r.Code, r.Stdout, r.Stderr)
}

// Ctl runs custodyctl with its connection in the environment, as a
// responder's shell would have it, and no config file.
func (c *Cluster) Ctl(ctx context.Context, args ...string) CtlResult {
	c.TB.Helper()
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, c.Bin.Ctl, args...)
	cmd.Env = append(baseEnv(),
		"CUSTODY_COLLECTOR="+c.Addr, "CUSTODY_CA="+c.CA, "CUSTODY_CERT="+c.Cert, "CUSTODY_KEY="+c.Key,
		"CUSTODY_CONFIG="+os.DevNull)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	r := CtlResult{Args: args, Stdout: stdout.String(), Stderr: stderr.String()}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		r.Code = ee.ExitCode()
	default:
		c.TB.Fatalf("custodyctl %s: %v", strings.Join(args, " "), err)
	}
	return r
}

// MustCtl is Ctl that fails the test unless custodyctl exits 0.
func (c *Cluster) MustCtl(ctx context.Context, args ...string) CtlResult {
	c.TB.Helper()
	r := c.Ctl(ctx, args...)
	if r.Code != 0 {
		c.TB.Fatal(r)
	}
	return r
}

// Agents lists the enrolled agents (custodyctl agents -o json).
func (c *Cluster) Agents(ctx context.Context) ([]*custodyv1.Agent, error) {
	r := c.Ctl(ctx, "agents", "-o", "json")
	if r.Code != 0 {
		return nil, errors.New(r.String())
	}
	var resp custodyv1.ListAgentsResponse
	if err := protojson.Unmarshal([]byte(r.Stdout), &resp); err != nil {
		return nil, fmt.Errorf("agents -o json: %w\n%s", err, r.Stdout)
	}
	return resp.GetAgents(), nil
}

// WaitConnected polls the agent list until an agent is connected and
// returns its id. With id set, it waits for that agent.
func (c *Cluster) WaitConnected(ctx context.Context, id string) string {
	c.TB.Helper()
	var got string
	var last string
	err := Poll(ctx, Deadline, 100*time.Millisecond, func() (bool, error) {
		agents, err := c.Agents(ctx)
		if err != nil {
			last = err.Error()
			return false, nil
		}
		last = fmt.Sprint(agents)
		for _, a := range agents {
			if a.GetConnected() && (id == "" || a.GetAgentId() == id) {
				got = a.GetAgentId()
				return true, nil
			}
		}
		return false, nil
	})
	if err != nil {
		c.TB.Fatalf("waiting for agent %q to connect: %v (last listing: %s)", id, err, last)
	}
	return got
}

// Collection reads one collection (custodyctl collections show ID -o json).
func (c *Cluster) Collection(ctx context.Context, id string) (*custodyv1.Collection, error) {
	r := c.Ctl(ctx, "collections", "show", id, "-o", "json")
	if r.Code != 0 {
		return nil, errors.New(r.String())
	}
	return ParseCollection(r.Stdout)
}

// ParseCollection decodes custodyctl's -o json form of a collection.
func ParseCollection(s string) (*custodyv1.Collection, error) {
	var col custodyv1.Collection
	if err := protojson.Unmarshal([]byte(s), &col); err != nil {
		return nil, fmt.Errorf("collection JSON: %w\n%s", err, s)
	}
	return &col, nil
}

// Final reports whether a collection state is terminal.
func Final(s custodyv1.CollectionState) bool {
	switch s {
	case custodyv1.CollectionState_COLLECTION_STATE_COMPLETE, custodyv1.CollectionState_COLLECTION_STATE_PARTIAL,
		custodyv1.CollectionState_COLLECTION_STATE_FAILED, custodyv1.CollectionState_COLLECTION_STATE_CANCELLED:
		return true
	}
	return false
}

// CollectionDir is where the fs store keeps a collection's objects.
func (c *Cluster) CollectionDir(caseID, agentID, collectionID string) string {
	return filepath.Join(c.DataDir, "evidence", caseID, agentID, collectionID)
}

// Poll calls fn every interval until it reports done, returns an error, or
// timeout passes.
func Poll(ctx context.Context, timeout, interval time.Duration, fn func() (bool, error)) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		done, err := fn()
		if err != nil || done {
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("gave up after %s: %w", timeout, ctx.Err())
		case <-time.After(interval):
		}
	}
}

// baseEnv is the test's environment without any CUSTODY_ setting, so that
// a developer's own configuration cannot leak into a run.
func baseEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "CUSTODY_") {
			env = append(env, kv)
		}
	}
	return env
}

// Proc is a long-running child process with its stderr in a log file.
type Proc struct {
	Name string
	Cmd  *exec.Cmd
	Log  string
	done chan struct{}
	err  error
}

// Start starts a long-running process whose stderr (and stdout) goes to
// Dir/name.log. It is killed when the test ends, and its log is dumped
// into the test's output if the test failed.
func (c *Cluster) Start(name, bin string, args ...string) *Proc {
	c.TB.Helper()
	// A restarted process gets a log of its own: agent.log, agent-2.log.
	if c.starts == nil {
		c.starts = map[string]int{}
	}
	c.starts[name]++
	logPath := filepath.Join(c.Dir, name+".log")
	if n := c.starts[name]; n > 1 {
		logPath = filepath.Join(c.Dir, fmt.Sprintf("%s-%d.log", name, n))
	}
	lf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		c.TB.Fatal(err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Env = baseEnv()
	cmd.Stdout, cmd.Stderr = lf, lf
	if err := cmd.Start(); err != nil {
		lf.Close()
		c.TB.Fatalf("start %s: %v", name, err)
	}
	p := &Proc{Name: name, Cmd: cmd, Log: logPath, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		lf.Close()
		close(p.done)
	}()
	c.TB.Cleanup(func() {
		p.Kill()
		if c.TB.Failed() {
			c.TB.Logf("---- %s (%s) ----\n%s", filepath.Base(logPath), strings.Join(append([]string{filepath.Base(bin)}, args...), " "), tail(p.Logs(), 64<<10))
		}
	})
	return p
}

// Pid is the process id.
func (p *Proc) Pid() int { return p.Cmd.Process.Pid }

// Done is closed when the process has exited.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Err is the process's exit error; valid once Done is closed.
func (p *Proc) Err() error {
	<-p.done
	return p.err
}

// Kill sends SIGKILL and waits for the process to be gone.
func (p *Proc) Kill() {
	select {
	case <-p.done:
		return
	default:
	}
	p.Cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
}

// Stop asks the process to shut down (SIGTERM) and kills it if it has not
// within the deadline.
func (p *Proc) Stop() {
	select {
	case <-p.done:
		return
	default:
	}
	p.Cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(Deadline):
		p.Kill()
	}
}

// Logs returns what the process wrote so far.
func (p *Proc) Logs() string {
	b, _ := os.ReadFile(p.Log)
	return string(b)
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "…" + s[len(s)-n:]
}

// PeakRSS reads the process's peak resident set size (VmHWM) in bytes.
func (p *Proc) PeakRSS() (int64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", p.Pid()))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		rest, ok := strings.CutPrefix(sc.Text(), "VmHWM:")
		if !ok {
			continue
		}
		kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
		if err != nil {
			return 0, fmt.Errorf("VmHWM %q: %w", rest, err)
		}
		return kb << 10, nil
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	return 0, errors.New("no VmHWM in /proc/PID/status")
}

// Fill is the content of one block of a generated evidence file.
type Fill int

const (
	// FillRandom does not compress.
	FillRandom Fill = iota
	// FillZeros compresses to almost nothing.
	FillZeros
	// FillText is log-like lines with varying fields: compresses the way
	// real text does, several times but not a hundred.
	FillText
)

// WriteFile writes size bytes to path in 1 MiB blocks whose content cycles
// through fills, never holding more than one block in memory, and returns
// the SHA-256 (hex) of what it wrote. The same seed gives the same file.
func WriteFile(path string, size int64, seed uint64, fills ...Fill) (string, error) {
	if len(fills) == 0 {
		fills = []Fill{FillRandom}
	}
	var text []byte
	return WriteGenerated(path, size, seed, 42, 1<<20, func(i int, b []byte, rng *rand.ChaCha8, pick *rand.Rand) {
		switch fills[i%len(fills)] {
		case FillRandom:
			rng.Read(b)
		case FillZeros:
			clear(b)
		case FillText:
			text = text[:0]
			for len(text) < len(b) {
				text = fmt.Appendf(text, "2026-11-22T07:%02d:%02d.%06dZ ip-10-0-%d-%d sshd[%d]: Accepted publickey for ec2-user from 10.0.%d.%d port %d ssh2: ED25519 SHA256:%x\n",
					pick.IntN(60), pick.IntN(60), pick.IntN(1e6), pick.IntN(4), pick.IntN(256), 1000+pick.IntN(60000),
					pick.IntN(256), pick.IntN(256), 1024+pick.IntN(64000), pick.Uint32())
			}
			copy(b, text)
		}
	})
}

// WriteGenerated writes size bytes to path, block bytes at a time (the
// last block may be shorter), each filled by fill — i is the block's index
// — from two generators seeded with seed: rng for random bytes, and pick,
// on stream pickStream, for choices. It returns the SHA-256 (hex) of what
// it wrote; the same arguments give the same file.
func WriteGenerated(path string, size int64, seed, pickStream uint64, block int,
	fill func(i int, b []byte, rng *rand.ChaCha8, pick *rand.Rand)) (string, error) {
	f, err := os.Create(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	var s [32]byte
	binary.LittleEndian.PutUint64(s[:], seed)
	rng := rand.NewChaCha8(s)
	pick := rand.New(rand.NewPCG(seed, pickStream))
	h := sha256.New()
	w := bufio.NewWriterSize(io.MultiWriter(f, h), 1<<20)
	buf := make([]byte, block)
	for i, done := 0, int64(0); done < size; i++ {
		b := buf[:min(int64(block), size-done)]
		fill(i, b, rng, pick)
		if _, err := w.Write(b); err != nil {
			return "", err
		}
		done += int64(len(b))
	}
	if err := w.Flush(); err != nil {
		return "", err
	}
	if err := f.Close(); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// DecodeZstd decompresses a stored object (a sequence of zstd frames) and
// returns the SHA-256 (hex) and length of the raw stream. If raw is not
// nil, the raw bytes are also written to it.
func DecodeZstd(path string, raw io.Writer) (string, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	d, err := zstd.NewReader(bufio.NewReaderSize(f, 1<<20), zstd.WithDecoderConcurrency(1))
	if err != nil {
		return "", 0, err
	}
	defer d.Close()
	h := sha256.New()
	var w io.Writer = h
	if raw != nil {
		w = io.MultiWriter(h, raw)
	}
	n, err := io.Copy(w, d)
	if err != nil {
		return "", n, fmt.Errorf("decompress %s: %w", path, err)
	}
	return hex.EncodeToString(h.Sum(nil)), n, nil
}

// HashFile returns the SHA-256 (hex) and size of a file: the read-and-hash
// floor any integrity-checked transfer of it pays.
func HashFile(path string) (string, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.CopyBuffer(h, f, make([]byte, 1<<20))
	if err != nil {
		return "", n, err
	}
	return hex.EncodeToString(h.Sum(nil)), n, nil
}

// Manifest is the part of manifest.json the tests check, read the way jq
// users read it: plain JSON, not through custody's own parser.
type Manifest struct {
	CollectionID string `json:"collection_id"`
	CaseID       string `json:"case_id"`
	Reason       string `json:"reason"`
	RequestedBy  string `json:"requested_by"`
	State        string `json:"state"`
	Agent        struct {
		ID string `json:"id"`
	} `json:"agent"`
	Artifacts []ManifestArtifact `json:"artifacts"`
}

// ManifestArtifact is one artifact of a Manifest.
type ManifestArtifact struct {
	Name            string            `json:"name"`
	State           string            `json:"state"`
	RawSize         int64             `json:"raw_size"`
	AgentSHA256     string            `json:"agent_sha256"`
	CollectorSHA256 string            `json:"collector_sha256"`
	Key             string            `json:"key"`
	StoredSize      int64             `json:"stored_size"`
	StoredSHA256    string            `json:"stored_sha256"`
	Compression     string            `json:"compression"`
	Chunks          int               `json:"chunks"`
	Errors          []string          `json:"errors"`
	Details         map[string]string `json:"details"`
}

// ReadManifest reads dir/manifest.json.
func ReadManifest(dir string) (*Manifest, error) {
	b, err := os.ReadFile(filepath.Join(dir, "manifest.json"))
	if err != nil {
		return nil, err
	}
	var m Manifest
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("manifest.json: %w", err)
	}
	return &m, nil
}

// WaitBytesDone waits until collection id's first artifact has n raw bytes
// committed, or the collection is final. A failed read is retried: the
// collector may be restarting.
func (c *Cluster) WaitBytesDone(ctx context.Context, id string, n int64) error {
	return Poll(ctx, Deadline, 20*time.Millisecond, func() (bool, error) {
		col, err := c.Collection(ctx, id)
		if err != nil {
			return false, nil
		}
		return Final(col.GetState()) || col.GetArtifacts()[0].GetBytesDone() >= n, nil
	})
}

// WaitUploadingThrough waits until the agent has sent another MiB through
// p, or collection id is final. After a cut that is the agent back and
// uploading, which the collector's progress cannot tell: it is reported
// every 250 ms and outlives the cut, so the next cut could otherwise come
// before the agent is back and hit no connection at all.
func (c *Cluster) WaitUploadingThrough(ctx context.Context, p *Proxy, id string) error {
	want := p.Upstream() + 1<<20
	return Poll(ctx, Deadline, 10*time.Millisecond, func() (bool, error) {
		if p.Upstream() >= want {
			return true, nil
		}
		col, err := c.Collection(ctx, id)
		return err == nil && Final(col.GetState()), nil
	})
}

// Proxy forwards TCP connections to a target and can cut them all, or
// stall them, on demand: a network that a responder is cutting.
type Proxy struct {
	// Addr is where clients connect instead of the target.
	Addr    string
	target  string
	mu      sync.Mutex
	conns   []net.Conn
	stalled chan struct{}
	cuts    atomic.Int32
	up      atomic.Int64 // bytes forwarded client → target
}

// NewProxy starts a proxy to target, closed when the test ends.
func NewProxy(t testing.TB, target string) *Proxy {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &Proxy{Addr: l.Addr().String(), target: target}
	t.Cleanup(func() { l.Close(); p.Cut() })
	go func() {
		for {
			in, err := l.Accept()
			if err != nil {
				return
			}
			out, err := net.Dial("tcp", target)
			if err != nil {
				in.Close()
				continue
			}
			p.mu.Lock()
			p.conns = append(p.conns, in, out)
			p.mu.Unlock()
			go p.pipe(in, out, nil)
			go p.pipe(out, in, &p.up)
		}
	}()
	return p
}

func (p *Proxy) pipe(dst, src net.Conn, count *atomic.Int64) {
	buf := make([]byte, 64<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			p.mu.Lock()
			st := p.stalled
			p.mu.Unlock()
			if st != nil {
				<-st
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				break
			}
			if count != nil {
				count.Add(int64(n))
			}
		}
		if err != nil {
			break
		}
	}
	dst.Close()
	src.Close()
}

// Cut closes every connection, both sides, at once.
func (p *Proxy) Cut() {
	p.mu.Lock()
	conns := p.conns
	p.conns = nil
	p.mu.Unlock()
	if len(conns) > 0 {
		p.cuts.Add(1)
	}
	for _, c := range conns {
		c.Close()
	}
}

// Stall holds all forwarding for d.
func (p *Proxy) Stall(d time.Duration) {
	ch := make(chan struct{})
	p.mu.Lock()
	p.stalled = ch
	p.mu.Unlock()
	time.Sleep(d)
	p.mu.Lock()
	p.stalled = nil
	p.mu.Unlock()
	close(ch)
}

// Upstream is how many bytes the proxy has forwarded from clients to the
// target, over all connections.
func (p *Proxy) Upstream() int64 { return p.up.Load() }

// Cuts is how many times Cut closed live connections.
func (p *Proxy) Cuts() int { return int(p.cuts.Load()) }
