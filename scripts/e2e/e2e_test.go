package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	custodyv1 "github.com/custodyhq/custody/proto/custody/v1"
)

// bin is built once for the whole package by TestMain.
var bin Binaries

func TestMain(m *testing.M) {
	flag.Parse()
	if testing.Short() {
		// Every test here skips in -short mode; do not pay for a build.
		os.Exit(m.Run())
	}
	dir, err := os.MkdirTemp("", "custody-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	bin, err = Build(ctx, dir)
	cancel()
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func newCluster(t *testing.T) *Cluster {
	t.Helper()
	if testing.Short() {
		t.Skip("end-to-end test with the real binaries; skipped in -short mode")
	}
	return NewCluster(t, bin)
}

// collectWait runs `custodyctl collect ... --wait -o json` and returns the
// final collection; custodyctl's exit status is checked by the caller
// through wantCode.
func collectWait(t *testing.T, c *Cluster, wantCode int, args ...string) *custodyv1.Collection {
	t.Helper()
	args = append([]string{"collect"}, args...)
	args = append(args, "--wait", "--timeout", "2m", "-o", "json")
	r := c.Ctl(t.Context(), args...)
	if r.Code != wantCode {
		t.Fatalf("want exit %d; %s", wantCode, r)
	}
	col, err := ParseCollection(r.Stdout)
	if err != nil {
		t.Fatal(err)
	}
	return col
}

func requireComplete(t *testing.T, col *custodyv1.Collection, artifacts ...string) {
	t.Helper()
	if col.GetState() != custodyv1.CollectionState_COLLECTION_STATE_COMPLETE {
		t.Fatalf("collection %s is %s, want complete: %v", col.GetCollectionId(), col.GetState(), col)
	}
	var names []string
	for _, a := range col.GetArtifacts() {
		names = append(names, a.GetName())
		if a.GetState() != custodyv1.ArtifactState_ARTIFACT_STATE_COMPLETE {
			t.Errorf("artifact %s is %s (%s), want complete", a.GetName(), a.GetState(), a.GetError())
		}
		if len(a.GetRawSha256()) != 64 {
			t.Errorf("artifact %s: raw_sha256 %q is not a hex SHA-256", a.GetName(), a.GetRawSha256())
		}
	}
	slices.Sort(names)
	want := slices.Sorted(slices.Values(artifacts))
	if !slices.Equal(names, want) {
		t.Errorf("artifacts %v, want %v", names, want)
	}
}

func artifactStatus(col *custodyv1.Collection, name string) *custodyv1.ArtifactStatus {
	for _, a := range col.GetArtifacts() {
		if a.GetName() == name {
			return a
		}
	}
	return nil
}

// listDir returns the names in dir, hidden ones (partial uploads) included.
func listDir(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

// checkStored checks every artifact of a sealed collection directory
// against its manifest: the stored bytes against stored_sha256, and the
// decompressed stream against the agent's and the collector's raw SHA-256
// and the raw_sha256 custodyctl reported.
func checkStored(t *testing.T, dir string, m *Manifest, col *custodyv1.Collection) {
	t.Helper()
	for _, a := range m.Artifacts {
		path := filepath.Join(dir, filepath.Base(a.Key))
		stored, size, err := HashFile(path)
		if err != nil {
			t.Errorf("artifact %s: %v", a.Name, err)
			continue
		}
		if stored != a.StoredSHA256 || size != a.StoredSize {
			t.Errorf("artifact %s: stored object is %d bytes sha256 %s; manifest says %d bytes sha256 %s", a.Name, size, stored, a.StoredSize, a.StoredSHA256)
		}
		if a.Compression != "zstd" {
			t.Errorf("artifact %s: compression %q, want zstd", a.Name, a.Compression)
		}
		raw, n, err := DecodeZstd(path, nil)
		if err != nil {
			t.Errorf("artifact %s: %v", a.Name, err)
			continue
		}
		if raw != a.AgentSHA256 || raw != a.CollectorSHA256 {
			t.Errorf("artifact %s: decompressed sha256 %s; manifest agent_sha256 %s collector_sha256 %s", a.Name, raw, a.AgentSHA256, a.CollectorSHA256)
		}
		if n != a.RawSize {
			t.Errorf("artifact %s: decompressed %d bytes; manifest raw_size %d", a.Name, n, a.RawSize)
		}
		if s := artifactStatus(col, a.Name); s.GetRawSha256() != raw {
			t.Errorf("artifact %s: custodyctl reported raw_sha256 %s; stored object decompresses to %s", a.Name, s.GetRawSha256(), raw)
		}
	}
}

// tamper flips one byte of a committed (read-only) evidence file at off
// and returns a function that puts the original back.
func tamper(t *testing.T, path string, off int) (restore func()) {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	orig, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, 0o640); err != nil {
		t.Fatal(err)
	}
	bad := bytes.Clone(orig)
	bad[off] ^= 0x01
	if err := os.WriteFile(path, bad, 0o640); err != nil {
		t.Fatal(err)
	}
	return func() {
		t.Helper()
		if err := os.WriteFile(path, orig, 0o640); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(path, st.Mode().Perm()); err != nil {
			t.Fatal(err)
		}
	}
}

// TestE2ESocketsOwnedFromOpenFiles: a collection asking for sockets before
// open_files runs open_files first on the agent and gives sockets its owner
// scan. Through the collector, both complete, the manifest keeps the
// requested order, and the agent's own connection to the collector is a
// socket owned by the agent's pid.
func TestE2ESocketsOwnedFromOpenFiles(t *testing.T) {
	c := newCluster(t)
	ctx := t.Context()
	_, agent, agentID := c.StartPair(ctx)

	col := collectWait(t, c, 0, "--agent", agentID, "--artifacts", "sockets,open_files", "--case", "IR-S", "--reason", "owners")
	requireComplete(t, col, "sockets", "open_files")
	dir := c.CollectionDir("IR-S", agentID, col.GetCollectionId())
	m, err := ReadManifest(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Artifacts) != 2 || m.Artifacts[0].Name != "sockets" || m.Artifacts[1].Name != "open_files" {
		t.Fatalf("manifest artifacts %+v, want sockets then open_files", m.Artifacts)
	}
	if from := m.Artifacts[0].Details["owners_from"]; !strings.HasPrefix(from, "open_files scan started ") {
		t.Errorf("sockets details.owners_from = %q (details %v)", from, m.Artifacts[0].Details)
	}
	checkStored(t, dir, m, col)

	var out bytes.Buffer
	if _, _, err := DecodeZstd(filepath.Join(dir, "sockets.jsonl.zst"), &out); err != nil {
		t.Fatal(err)
	}
	ap, err := netip.ParseAddrPort(c.Addr)
	if err != nil {
		t.Fatal(err)
	}
	port := int(ap.Port())
	owned := false
	for line := range strings.SplitSeq(strings.TrimSpace(out.String()), "\n") {
		var r struct {
			PID        *int   `json:"pid"`
			Protocol   int    `json:"protocol"`
			RemotePort int    `json:"remote_port"`
			State      string `json:"state"`
		}
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatalf("sockets line %q: %v", line, err)
		}
		if r.Protocol == 6 && r.RemotePort == port && r.State == "ESTABLISHED" && r.PID != nil && *r.PID == agent.Pid() {
			owned = true
		}
	}
	if !owned {
		t.Errorf("no established TCP socket to the collector's port %d owned by the agent (pid %d) in:\n%s", port, agent.Pid(), out.String())
	}
}

// TestE2EDemoFlow is scripts/demo.sh, asserted.
func TestE2EDemoFlow(t *testing.T) {
	c := newCluster(t)
	ctx := t.Context()
	token := c.Token(1)
	c.StartCollector("127.0.0.1:0")
	agent := c.StartAgent("agent", token)
	agentID := c.WaitConnected(ctx, "")

	r := c.MustCtl(ctx, "collect", "--agent", agentID, "--artifacts", "host,processes", "--case", "IR-1", "--reason", "r", "--wait", "--timeout", "2m", "-o", "json")
	for _, field := range []string{`"collection_id"`, `"raw_sha256"`, `"COLLECTION_STATE_COMPLETE"`} {
		if !strings.Contains(r.Stdout, field) {
			t.Errorf("collect -o json does not use proto field names / enum names: no %s in\n%s", field, r.Stdout)
		}
	}
	col, err := ParseCollection(r.Stdout)
	if err != nil {
		t.Fatal(err)
	}
	requireComplete(t, col, "host", "processes")
	if col.GetAgentId() != agentID || col.GetCaseId() != "IR-1" {
		t.Errorf("collection agent %q case %q, want %q IR-1", col.GetAgentId(), col.GetCaseId(), agentID)
	}

	dir := c.CollectionDir("IR-1", agentID, col.GetCollectionId())
	want := []string{"host.json.zst", "manifest.json", "manifest.json.sig", "processes.jsonl.zst"}
	if got := listDir(t, dir); !slices.Equal(got, want) {
		t.Fatalf("evidence directory %s holds %v, want %v", dir, got, want)
	}
	m, err := ReadManifest(dir)
	if err != nil {
		t.Fatal(err)
	}
	if m.State != "complete" || m.CollectionID != col.GetCollectionId() || m.CaseID != "IR-1" || m.Reason != "r" ||
		m.Agent.ID != agentID || m.RequestedBy != "spiffe://custody/responder/e2e" || len(m.Artifacts) != 2 {
		t.Errorf("manifest: %+v", m)
	}
	checkStored(t, dir, m, col)

	var host bytes.Buffer
	if _, _, err := DecodeZstd(filepath.Join(dir, "host.json.zst"), &host); err != nil {
		t.Fatal(err)
	}
	var hostDoc map[string]any
	if err := json.Unmarshal(host.Bytes(), &hostDoc); err != nil {
		t.Errorf("host.json is not a JSON object: %v", err)
	}

	var procs bytes.Buffer
	if _, _, err := DecodeZstd(filepath.Join(dir, "processes.jsonl.zst"), &procs); err != nil {
		t.Fatal(err)
	}
	sawAgent, lines := false, 0
	sc := bufio.NewScanner(&procs)
	sc.Buffer(nil, 16<<20)
	for sc.Scan() {
		lines++
		var p struct {
			PID *int `json:"pid"`
		}
		if err := json.Unmarshal(sc.Bytes(), &p); err != nil || p.PID == nil {
			t.Fatalf("processes.jsonl line %d is not a JSON object with a pid (%v): %s", lines, err, sc.Bytes())
		}
		sawAgent = sawAgent || *p.PID == agent.Pid()
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if !sawAgent {
		t.Errorf("processes.jsonl (%d lines) does not list the agent itself (pid %d)", lines, agent.Pid())
	}

	id := col.GetCollectionId()
	if r := c.MustCtl(ctx, "verify", id); !strings.Contains(r.Stdout, "signature   OK") {
		t.Errorf("verify of untouched evidence: %s", r)
	}

	t.Run("tampered artifact", func(t *testing.T) {
		path := filepath.Join(dir, "processes.jsonl.zst")
		st, _ := os.Stat(path)
		restore := tamper(t, path, int(st.Size()/2))
		r := c.Ctl(ctx, "verify", id)
		restore()
		if r.Code == 0 {
			t.Fatalf("verify passed with a flipped byte in processes.jsonl.zst: %s", r)
		}
		if !hasLine(r.Stdout, "artifact", "processes", "FAIL") {
			t.Errorf("verify does not name the tampered artifact: %s", r)
		}
		if hasLine(r.Stdout, "artifact", "host", "FAIL") {
			t.Errorf("verify blames the untouched host artifact: %s", r)
		}
		if r := c.Ctl(ctx, "verify", id); r.Code != 0 {
			t.Errorf("verify after restoring the original bytes: %s", r)
		}
	})

	t.Run("tampered manifest", func(t *testing.T) {
		path := filepath.Join(dir, "manifest.json")
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		// Change the recorded reason "r" to "s": the manifest stays valid
		// JSON, so only the signature can catch it.
		i := bytes.Index(b, []byte(`"reason": "r"`))
		if i < 0 {
			t.Fatalf(`no "reason": "r" in manifest.json:\n%s`, b)
		}
		restore := tamper(t, path, i+len(`"reason": "`))
		defer restore()
		r := c.Ctl(ctx, "verify", id)
		if r.Code == 0 {
			t.Fatalf("verify passed with a changed manifest.json: %s", r)
		}
		if !hasLine(r.Stdout, "signature", "FAIL") {
			t.Errorf("verify does not report a signature failure: %s", r)
		}
	})

	t.Run("used-up token", func(t *testing.T) {
		// The one-use token enrolled the first agent; a second host with
		// the same token must be refused and the agent must say why.
		p := c.StartAgent("agent2", token)
		select {
		case <-p.Done():
		case <-time.After(Deadline):
			t.Fatalf("agent with a used-up join token still running after %s:\n%s", Deadline, p.Logs())
		}
		if p.Err() == nil {
			t.Fatalf("agent with a used-up join token exited 0:\n%s", p.Logs())
		}
		if !strings.Contains(p.Logs(), "token") {
			t.Errorf("agent's error does not mention the token:\n%s", p.Logs())
		}
		if _, err := os.Stat(filepath.Join(c.Dir, "agent2", "agent.crt")); err == nil {
			t.Errorf("refused agent has a certificate in its state directory")
		}
		agents, err := c.Agents(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(agents) != 1 {
			t.Errorf("%d agents enrolled with a one-use token: %v", len(agents), agents)
		}
	})
}

// hasLine reports whether some line of out contains all the words.
func hasLine(out string, words ...string) bool {
	for line := range strings.SplitSeq(out, "\n") {
		all := true
		for _, w := range words {
			all = all && strings.Contains(line, w)
		}
		if all {
			return true
		}
	}
	return false
}

// TestE2EFileArtifact collects a file byte for byte.
func TestE2EFileArtifact(t *testing.T) {
	c := newCluster(t)
	ctx := t.Context()
	src := filepath.Join(t.TempDir(), "evidence.img")
	const size = 64 << 20
	sum, err := WriteFile(src, size, 1, FillRandom, FillZeros)
	if err != nil {
		t.Fatal(err)
	}
	c.StartCollector("127.0.0.1:0")
	c.StartAgent("agent", c.Token(1))
	agentID := c.WaitConnected(ctx, "")

	col := collectWait(t, c, 0, "--agent", agentID, "--artifacts", "file", "--path", src, "--case", "IR-2", "--reason", "disk image")
	requireComplete(t, col, "file")
	a := artifactStatus(col, "file")
	if a.GetRawSha256() != sum || a.GetRawSize() != size {
		t.Errorf("collected %d bytes sha256 %s; source is %d bytes sha256 %s", a.GetRawSize(), a.GetRawSha256(), size, sum)
	}
	dir := c.CollectionDir("IR-2", agentID, col.GetCollectionId())
	got, n, err := DecodeZstd(filepath.Join(dir, "file.bin.zst"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if got != sum || n != size {
		t.Errorf("stored object decompresses to %d bytes sha256 %s; source is %d bytes sha256 %s", n, got, size, sum)
	}
	m, err := ReadManifest(dir)
	if err != nil {
		t.Fatal(err)
	}
	checkStored(t, dir, m, col)
	// At most 4 MiB raw per chunk, each its own zstd frame.
	if ma := m.Artifacts[0]; ma.Chunks < size/(4<<20) {
		t.Errorf("manifest records %d chunks for %d bytes; chunks are at most 4 MiB", ma.Chunks, size)
	}
	if a.GetStoredSize() >= size {
		t.Errorf("half-zero file stored as %d bytes, not compressed", a.GetStoredSize())
	}
	c.MustCtl(ctx, "verify", col.GetCollectionId())
}

// TestE2EAgentKilledMidCollection kills the agent (SIGKILL) while a large
// file is in flight. Whatever happens next, an interrupted upload is never
// visible under its final name and the collection is not complete while
// the agent is gone. Then one of two contracts must hold:
//
//   - the collector ends the collection at once, failed or partial, saying
//     the agent disconnected (the behaviour at the first commit);
//   - the collection stays running and the restarted agent resumes it
//     (DESIGN.md, "Upload, integrity and resume"): it completes with every
//     byte of the source, nothing lost and nothing duplicated.
//
// Which one applies is decided without waiting on a clock: once the agent
// list says the agent is disconnected, the collector has finished handling
// the disconnect, so a collection it failed is final by then.
func TestE2EAgentKilledMidCollection(t *testing.T) {
	c := newCluster(t)
	ctx := t.Context()
	// Random data does not compress, so the upload lasts long enough to be
	// caught in flight; 768 MiB keeps the source plus a stored copy under
	// 2 GiB of disk.
	src := filepath.Join(t.TempDir(), "big.img")
	const size = 768 << 20
	sum, err := WriteFile(src, size, 2, FillRandom)
	if err != nil {
		t.Fatal(err)
	}
	defer os.Remove(src)
	_, agent, agentID := c.StartPair(ctx)

	r := c.MustCtl(ctx, "collect", "--agent", agentID, "--artifacts", "file", "--path", src, "--case", "IR-3", "--reason", "kill test", "-o", "json")
	col, err := ParseCollection(r.Stdout)
	if err != nil {
		t.Fatal(err)
	}
	id := col.GetCollectionId()
	dir := c.CollectionDir("IR-3", agentID, id)

	err = Poll(ctx, Deadline, 50*time.Millisecond, func() (bool, error) {
		col, err := c.Collection(ctx, id)
		if err != nil {
			return false, err
		}
		if Final(col.GetState()) {
			return false, fmt.Errorf("collection finished before the agent could be killed: %v", col)
		}
		return artifactStatus(col, "file").GetBytesDone() > 0, nil
	})
	if err != nil {
		t.Fatalf("waiting for the upload to start: %v", err)
	}
	agent.Kill()

	// The agent list shows the disconnect once the collector has dealt
	// with it.
	err = Poll(ctx, Deadline, 100*time.Millisecond, func() (bool, error) {
		agents, err := c.Agents(ctx)
		if err != nil {
			return false, err
		}
		for _, a := range agents {
			if a.GetAgentId() == agentID {
				return !a.GetConnected(), nil
			}
		}
		return false, fmt.Errorf("agent %s no longer listed: %v", agentID, agents)
	})
	if err != nil {
		t.Fatalf("collector did not notice the killed agent: %v", err)
	}
	if col, err = c.Collection(ctx, id); err != nil {
		t.Fatal(err)
	}
	names := listDir(t, dir)
	if slices.Contains(names, "file.bin.zst") {
		t.Errorf("interrupted upload visible under its final name: %s holds %v", dir, names)
	}
	a := artifactStatus(col, "file")
	resumable := !Final(col.GetState())
	t.Logf("agent killed: collection %s is %s, file artifact %s %d/%d bytes %q; %s holds %v",
		id, col.GetState(), a.GetState(), a.GetBytesDone(), a.GetBytesTotal(), a.GetError(), dir, names)
	if !resumable {
		switch col.GetState() {
		case custodyv1.CollectionState_COLLECTION_STATE_FAILED, custodyv1.CollectionState_COLLECTION_STATE_PARTIAL:
		default:
			t.Fatalf("collection is %s after its agent was killed mid-upload, want failed or partial (or still running, to be resumed)", col.GetState())
		}
		if a.GetState() != custodyv1.ArtifactState_ARTIFACT_STATE_FAILED {
			t.Errorf("file artifact is %s, want failed", a.GetState())
		}
		if !strings.Contains(col.GetError()+" "+a.GetError(), "disconnect") {
			t.Errorf("collections show does not say the agent disconnected: collection error %q, file artifact error %q", col.GetError(), a.GetError())
		}
		os.Remove(src)
	}

	// Same state directory, no token: the agent reuses its certificate.
	c.StartAgent("agent", "")
	c.WaitConnected(ctx, agentID)

	if resumable {
		err = Poll(ctx, Deadline, 200*time.Millisecond, func() (bool, error) {
			col, err = c.Collection(ctx, id)
			if err != nil {
				return false, err
			}
			return Final(col.GetState()), nil
		})
		if err != nil {
			t.Fatalf("interrupted collection did not finish after the agent came back: %v (last: %v)", err, col)
		}
		requireComplete(t, col, "file")
		a := artifactStatus(col, "file")
		if a.GetRawSha256() != sum || a.GetRawSize() != size {
			t.Errorf("resumed upload: %d bytes sha256 %s; source is %d bytes sha256 %s", a.GetRawSize(), a.GetRawSha256(), size, sum)
		}
		got, n, err := DecodeZstd(filepath.Join(dir, "file.bin.zst"), nil)
		if err != nil {
			t.Fatal(err)
		}
		if got != sum || n != size {
			t.Errorf("resumed object decompresses to %d bytes sha256 %s; source is %d bytes sha256 %s", n, got, size, sum)
		}
		if names := listDir(t, dir); !slices.Equal(names, []string{"file.bin.zst", "manifest.json", "manifest.json.sig"}) {
			t.Errorf("after the resumed upload %s holds %v", dir, names)
		}
		if m, err := ReadManifest(dir); err == nil && len(m.Artifacts) == 1 {
			t.Logf("resumed: manifest details %v", m.Artifacts[0].Details)
		}
		c.MustCtl(ctx, "verify", id)
		os.Remove(src)
	}

	col = collectWait(t, c, 0, "--agent", agentID, "--artifacts", "host", "--case", "IR-3", "--reason", "after restart")
	requireComplete(t, col, "host")
}

// TestE2ECollectorRestart kills the collector under a connected agent and
// brings it back on the same address and data directory.
func TestE2ECollectorRestart(t *testing.T) {
	c := newCluster(t)
	ctx := t.Context()
	first := c.StartCollector("127.0.0.1:0")
	c.StartAgent("agent", c.Token(1))
	agentID := c.WaitConnected(ctx, "")
	col := collectWait(t, c, 0, "--agent", agentID, "--artifacts", "host", "--case", "IR-4", "--reason", "before restart")
	requireComplete(t, col, "host")

	addr := c.Addr
	first.Kill()
	c.StartCollector(addr)
	if c.Addr != addr {
		t.Fatalf("collector came back on %s, want %s", c.Addr, addr)
	}
	// The agent reconnects by itself (backoff capped at 2s).
	c.WaitConnected(ctx, agentID)
	agents, err := c.Agents(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(agents) != 1 || agents[0].GetAgentId() != agentID {
		t.Errorf("agents after restart: %v, want only %s", agents, agentID)
	}
	col = collectWait(t, c, 0, "--agent", agentID, "--artifacts", "host,processes", "--case", "IR-4", "--reason", "after restart")
	requireComplete(t, col, "host", "processes")
	c.MustCtl(ctx, "verify", col.GetCollectionId())
}

// custodyctl agents revoke cuts a running agent off: the real agent's
// session ends with the reason, its reconnects are refused, and the
// listing says revoked.
func TestE2ERevokeAgent(t *testing.T) {
	c := newCluster(t)
	ctx := t.Context()
	_, agent, agentID := c.StartPair(ctx)

	if r := c.Ctl(ctx, "agents", "revoke", agentID); r.Code == 0 {
		t.Fatalf("revoke without --reason succeeded:\n%s", r)
	}
	r := c.MustCtl(ctx, "agents", "revoke", agentID, "--reason", "instance terminated after IR-9")
	if !strings.Contains(r.Stdout, "revoked") || !strings.Contains(r.Stdout, "instance terminated after IR-9") {
		t.Fatalf("revoke said:\n%s", r)
	}
	err := Poll(ctx, Deadline, 100*time.Millisecond, func() (bool, error) {
		return strings.Count(agent.Logs(), "was revoked") >= 2, nil // the session it had, and a reconnect
	})
	if err != nil {
		t.Fatalf("the agent's log never showed the revocation twice: %v\n%s", err, agent.Logs())
	}
	agents, err := c.Agents(ctx)
	if err != nil || len(agents) != 1 || agents[0].GetConnected() || agents[0].GetRevokedAt() == nil {
		t.Fatalf("agents after revocation: %v, %v", agents, err)
	}
	if r := c.MustCtl(ctx, "agents"); !strings.Contains(r.Stdout, "revoked") {
		t.Fatalf("custodyctl agents does not show the revocation:\n%s", r)
	}
}
