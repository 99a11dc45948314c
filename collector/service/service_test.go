package service_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/custodyhq/custody/agent/upload"
	"github.com/custodyhq/custody/collector/service"
	"github.com/custodyhq/custody/collector/state"
	"github.com/custodyhq/custody/collector/store"
	"github.com/custodyhq/custody/internal/chunk"
	"github.com/custodyhq/custody/internal/manifest"
	"github.com/custodyhq/custody/internal/pki"
	custodyv1 "github.com/custodyhq/custody/proto/custody/v1"
)

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return c
}

// session opens an agent session with a hello and returns it after the welcome.
func session(t *testing.T, c custodyv1.AgentServiceClient, sctx context.Context) custodyv1.AgentService_SessionClient {
	t.Helper()
	s, err := c.Session(sctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Send(&custodyv1.SessionRequest{Msg: &custodyv1.SessionRequest_Hello{Hello: &custodyv1.Hello{
		Host: &custodyv1.HostFacts{Hostname: "test-host"}, Artifacts: []string{"host", "processes", "file"},
	}}}); err != nil {
		t.Fatal(err)
	}
	m, err := s.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if m.GetWelcome() == nil {
		t.Fatalf("got %v, want welcome", m)
	}
	return s
}

func nextTask(t *testing.T, s custodyv1.AgentService_SessionClient) *custodyv1.Task {
	t.Helper()
	m, err := s.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if m.GetTask() == nil {
		t.Fatalf("got %v, want a task", m)
	}
	return m.GetTask()
}

func collect(t *testing.T, r custodyv1.ResponderServiceClient, agentID string, arts ...string) *custodyv1.Collection {
	t.Helper()
	req := &custodyv1.CreateCollectionRequest{AgentId: agentID, CaseId: "IR-1", Reason: "test"}
	for _, a := range arts {
		req.Artifacts = append(req.Artifacts, &custodyv1.ArtifactSpec{Name: a})
	}
	resp, err := r.CreateCollection(ctx(t), req)
	if err != nil {
		t.Fatal(err)
	}
	return resp.GetCollection()
}

// waitFinal watches a collection until it is final.
func waitFinal(t *testing.T, r custodyv1.ResponderServiceClient, id string) *custodyv1.Collection {
	t.Helper()
	return waitFinalCtx(t, ctx(t), r, id)
}

func waitFinalCtx(t *testing.T, c context.Context, r custodyv1.ResponderServiceClient, id string) *custodyv1.Collection {
	t.Helper()
	w, err := r.WatchCollection(c, &custodyv1.WatchCollectionRequest{CollectionId: id})
	if err != nil {
		t.Fatal(err)
	}
	var last *custodyv1.Collection
	for {
		m, err := w.Recv()
		if err == io.EOF {
			return last
		}
		if err != nil {
			t.Fatal(err)
		}
		last = m.GetCollection()
	}
}

func wantCode(t *testing.T, err error, code codes.Code, contains string) {
	t.Helper()
	if err == nil {
		t.Fatalf("call succeeded, want %s", code)
	}
	if got := status.Code(err); got != code {
		t.Fatalf("got %s (%v), want %s", got, err, code)
	}
	if contains != "" && !strings.Contains(err.Error(), contains) {
		t.Fatalf("error %q does not mention %q", err, contains)
	}
}

func TestIdentityAndRoles(t *testing.T) {
	e := newEnv(t)
	agentID, agentCert, agent := e.enrolledAgent()
	responder := e.responder("alice")

	otherCA, err := pki.NewCA("other CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	foreign := rawCert(t, otherCA.Cert, otherCA.Key, "spiffe://custody/agent/"+agentID, now.Add(-time.Hour), now.Add(time.Hour))
	expired := rawCert(t, e.ca.Cert, e.ca.Key, "spiffe://custody/agent/"+agentID, now.Add(-48*time.Hour), now.Add(-time.Hour))
	responderCertPath, responderKeyPath := pki.ResponderFiles(filepath.Join(e.dir, "pki"), "alice")
	responderCert := loadPair(t, responderCertPath, responderKeyPath)

	t.Run("certificate from another CA is refused", func(t *testing.T) {
		_, err := custodyv1.NewAgentServiceClient(e.dial(&foreign)).Renew(ctx(t), &custodyv1.RenewRequest{})
		wantCode(t, err, codes.Unavailable, "")
	})
	t.Run("expired certificate is refused", func(t *testing.T) {
		_, err := custodyv1.NewAgentServiceClient(e.dial(&expired)).Renew(ctx(t), &custodyv1.RenewRequest{})
		wantCode(t, err, codes.Unavailable, "")
	})
	t.Run("no certificate cannot call the responder API", func(t *testing.T) {
		_, err := custodyv1.NewResponderServiceClient(e.dial(nil)).ListAgents(ctx(t), &custodyv1.ListAgentsRequest{})
		wantCode(t, err, codes.Unauthenticated, "client certificate")
	})
	t.Run("responder cannot open an agent session", func(t *testing.T) {
		s, err := custodyv1.NewAgentServiceClient(e.dial(&responderCert)).Session(ctx(t))
		if err == nil {
			_, err = s.Recv()
		}
		wantCode(t, err, codes.PermissionDenied, "responder")
	})
	t.Run("agent cannot call the responder API", func(t *testing.T) {
		_, err := custodyv1.NewResponderServiceClient(e.dial(&agentCert)).ListAgents(ctx(t), &custodyv1.ListAgentsRequest{})
		wantCode(t, err, codes.PermissionDenied, "agent")
	})
	t.Run("responder sees the agent", func(t *testing.T) {
		resp, err := responder.ListAgents(ctx(t), &custodyv1.ListAgentsRequest{})
		if err != nil {
			t.Fatal(err)
		}
		if len(resp.GetAgents()) != 1 || resp.GetAgents()[0].GetAgentId() != agentID {
			t.Fatalf("agents = %v", resp.GetAgents())
		}
	})
	t.Run("agent renews its own identity only", func(t *testing.T) {
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		csr, _ := pki.CreateCSR(key)
		resp, err := agent.Renew(ctx(t), &custodyv1.RenewRequest{Csr: csr})
		if err != nil {
			t.Fatal(err)
		}
		c := tlsCert(t, resp.GetCertificate(), key)
		id, err := pki.IdentityFromCert(c.Leaf)
		if err != nil || id.Name != agentID || id.Role != pki.RoleAgent {
			t.Fatalf("renewed identity %v, %v; want agent %s", id, err, agentID)
		}
	})
}

func loadPair(t *testing.T, certPath, keyPath string) tls.Certificate {
	t.Helper()
	kp, err := pki.LoadKeypair(certPath, keyPath)
	if err != nil {
		t.Fatal(err)
	}
	return *kp.Current()
}

func TestJoinTokens(t *testing.T) {
	e := newEnv(t)
	anon := custodyv1.NewAgentServiceClient(e.dial(nil))
	enrol := func(tok string) error {
		key, _ := pki.GenerateKey()
		csr, _ := pki.CreateCSR(key)
		_, err := anon.Enroll(ctx(t), &custodyv1.EnrollRequest{JoinToken: tok, Csr: csr})
		return err
	}
	tok, _, _ := e.db.CreateToken(context.Background(), 2, time.Hour)
	for i := 0; i < 2; i++ {
		if err := enrol(tok); err != nil {
			t.Fatalf("use %d: %v", i+1, err)
		}
	}
	wantCode(t, enrol(tok), codes.PermissionDenied, "no uses left")

	short, _, _ := e.db.CreateToken(context.Background(), 5, time.Nanosecond)
	wantCode(t, enrol(short), codes.PermissionDenied, "expired")
	wantCode(t, enrol("cjt_forged"), codes.PermissionDenied, "unknown token")

	// A broken CSR is refused before the token is spent.
	good, _, _ := e.db.CreateToken(context.Background(), 1, time.Hour)
	_, err := anon.Enroll(ctx(t), &custodyv1.EnrollRequest{JoinToken: good, Csr: []byte("not a csr")})
	wantCode(t, err, codes.InvalidArgument, "")
	if err := enrol(good); err != nil {
		t.Fatalf("token was spent on a bad CSR: %v", err)
	}
}

// openUpload opens a raw upload for one artifact of task and returns the stream after acceptance.
func openUpload(t *testing.T, c custodyv1.AgentServiceClient, taskID, art string) custodyv1.AgentService_UploadClient {
	t.Helper()
	up, _ := openUploadAccepted(t, c, taskID, art)
	return up
}

// openUploadAccepted is openUpload that also returns the acceptance.
func openUploadAccepted(t *testing.T, c custodyv1.AgentServiceClient, taskID, art string) (custodyv1.AgentService_UploadClient, *custodyv1.UploadAccepted) {
	t.Helper()
	up, err := c.Upload(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := up.Send(&custodyv1.UploadRequest{Msg: &custodyv1.UploadRequest_Open{Open: &custodyv1.UploadOpen{
		TaskId: taskID, Artifact: art, Extension: "json", ExpectedSize: -1, Compression: custodyv1.Compression_COMPRESSION_ZSTD,
	}}}); err != nil {
		t.Fatal(err)
	}
	m, err := up.Recv()
	if err != nil {
		t.Fatalf("open refused: %v", err)
	}
	if m.GetAccepted() == nil {
		t.Fatalf("got %v, want accepted", m)
	}
	return up, m.GetAccepted()
}

// Uploads accepted while many are running are told to send smaller
// chunks, so that the collector's memory for chunks in flight stays about
// chunkMemory however many agents upload at once.
func TestUploadChunkSizeShrinksWithLoad(t *testing.T) {
	e := newEnv(t)
	agentID, _, agent := e.enrolledAgent()
	r := e.responder("alice")
	sctx, cancel := context.WithCancel(ctx(t))
	defer cancel()
	s := session(t, agent, sctx)
	var got []int64
	for range 10 {
		col := collect(t, r, agentID, "host")
		nextTask(t, s)
		up, acc := openUploadAccepted(t, agent, col.GetCollectionId(), "host")
		got = append(got, acc.GetMaxChunkSize())
		defer up.CloseSend() // held open: each counts as running
	}
	want := []int64{4 << 20, 4 << 20, 4 << 20, 4 << 20, 2 << 20, 2 << 20, 2 << 20, 2 << 20, 1 << 20, 1 << 20}
	if !slices.Equal(got, want) {
		t.Errorf("max chunk sizes of 10 concurrent uploads = %v, want %v", got, want)
	}
}

func TestAgentCannotUploadForAnotherAgentsTask(t *testing.T) {
	e := newEnv(t)
	victimID, _, victim := e.enrolledAgent()
	_, _, thief := e.enrolledAgent()
	r := e.responder("alice")
	sctx, cancel := context.WithCancel(ctx(t))
	defer cancel()
	s := session(t, victim, sctx)
	col := collect(t, r, victimID, "host")
	nextTask(t, s)

	up, err := thief.Upload(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	up.Send(&custodyv1.UploadRequest{Msg: &custodyv1.UploadRequest_Open{Open: &custodyv1.UploadOpen{
		TaskId: col.GetCollectionId(), Artifact: "host", Extension: "json", Compression: custodyv1.Compression_COMPRESSION_ZSTD,
	}}})
	_, err = up.Recv()
	wantCode(t, err, codes.PermissionDenied, "not addressed to agent")

	got, _ := r.GetCollection(ctx(t), &custodyv1.GetCollectionRequest{CollectionId: col.GetCollectionId()})
	if st := got.GetCollection().GetArtifacts()[0].GetState(); st != custodyv1.ArtifactState_ARTIFACT_STATE_PENDING {
		t.Fatalf("victim's artifact is %s after a refused foreign upload, want pending", st)
	}
}

// uploadFile has a new agent of e collect the file artifact, data, as an
// agent does (a bulk upload) for alice, and waits for the collection to be
// complete. It returns the agent's ID, the collection and the upload's
// result.
func uploadFile(t *testing.T, e *env, data []byte) (string, *custodyv1.Collection, upload.Result) {
	t.Helper()
	return uploadFileVia(t, e, data, nil)
}

// uploadFileVia is uploadFile with the agent's client passed through wrap
// (nil: as it is).
func uploadFileVia(t *testing.T, e *env, data []byte, wrap func(custodyv1.AgentServiceClient) custodyv1.AgentServiceClient) (string, *custodyv1.Collection, upload.Result) {
	t.Helper()
	agentID, _, agent := e.enrolledAgent()
	if wrap != nil {
		agent = wrap(agent)
	}
	r := e.responder("alice")
	sctx, cancel := context.WithCancel(ctx(t))
	t.Cleanup(cancel)
	s := session(t, agent, sctx)
	col := collect(t, r, agentID, "file")
	task := nextTask(t, s)

	up, err := upload.Start(ctx(t), agent, upload.Options{TaskID: task.GetTaskId(), Artifact: "file", Extension: "bin", ExpectedSize: int64(len(data)), Bulk: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(up, bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	res, err := up.Close(upload.Trailer{Source: "test"})
	if err != nil {
		t.Fatal(err)
	}
	final := waitFinal(t, r, col.GetCollectionId())
	if final.GetState() != custodyv1.CollectionState_COLLECTION_STATE_COMPLETE {
		t.Fatalf("collection %s: %v", final.GetState(), final)
	}
	return agentID, col, res
}

func TestUploadVerifiedAndSealed(t *testing.T) {
	e := newEnv(t)
	data := make([]byte, 9<<20+123)
	rand.Read(data[:3<<20])
	agentID, col, res := uploadFile(t, e, data)
	want := sha256.Sum256(data)
	if !bytes.Equal(res.RawSHA256, want[:]) {
		t.Fatal("committed hash differs from the source")
	}

	dir := filepath.Join(e.dir, "evidence", "IR-1", agentID, col.GetCollectionId())
	mdata, _ := os.ReadFile(filepath.Join(dir, service.ManifestFile))
	sig, _ := os.ReadFile(filepath.Join(dir, service.SignatureFile))
	m, _, err := manifest.Verify(mdata, sig, e.roots)
	if err != nil {
		t.Fatal(err)
	}
	if m.RequestedBy != "spiffe://custody/responder/alice" || m.Agent.ID != agentID || m.State != "complete" {
		t.Fatalf("manifest: requested_by %q agent %q state %q", m.RequestedBy, m.Agent.ID, m.State)
	}
	a := m.Artifacts[0]
	if a.AgentSHA256 != hex.EncodeToString(want[:]) || a.CollectorSHA256 != a.AgentSHA256 || a.Chunks != 3 {
		t.Fatalf("manifest artifact: %+v", a)
	}
	f, err := os.Open(filepath.Join(dir, "file.bin.zst"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := manifest.VerifyArtifact(ctx(t), a, f); err != nil {
		t.Fatal(err)
	}
}

// digestAgent is an agent's client whose uploads count the digests their
// chunks carry and, with old set, hide the collector's acceptance of
// stream digests, as a collector from before them would send it.
type digestAgent struct {
	custodyv1.AgentServiceClient
	old         bool
	mu          sync.Mutex
	own, stream int
}

func (a *digestAgent) Upload(ctx context.Context, opts ...grpc.CallOption) (custodyv1.AgentService_UploadClient, error) {
	up, err := a.AgentServiceClient.Upload(ctx, opts...)
	if err != nil {
		return nil, err
	}
	return &digestUpload{AgentService_UploadClient: up, a: a}, nil
}

type digestUpload struct {
	custodyv1.AgentService_UploadClient
	a *digestAgent
}

func (u *digestUpload) Send(m *custodyv1.UploadRequest) error {
	if c := m.GetChunk(); c != nil {
		u.a.mu.Lock()
		u.a.own += min(len(c.GetSha256()), 1)
		u.a.stream += min(len(c.GetStreamSha256()), 1)
		u.a.mu.Unlock()
	}
	return u.AgentService_UploadClient.Send(m)
}

func (u *digestUpload) Recv() (*custodyv1.UploadResponse, error) {
	m, err := u.AgentService_UploadClient.Recv()
	if acc := m.GetAccepted(); acc != nil && u.a.old {
		acc.AcceptsStreamSha256 = false
	}
	return m, err
}

// An agent sends each chunk's stream digest alone to a collector that
// accepts it, and its own digest alone to one that does not say so; the
// collector verifies and seals both.
func TestAgentDigestFollowsCollector(t *testing.T) {
	for _, old := range []bool{false, true} {
		t.Run(fmt.Sprintf("old=%v", old), func(t *testing.T) {
			e := newEnv(t)
			data := make([]byte, 9<<20+123)
			rand.Read(data[:5<<20])
			a := &digestAgent{old: old}
			_, _, res := uploadFileVia(t, e, data, func(c custodyv1.AgentServiceClient) custodyv1.AgentServiceClient {
				a.AgentServiceClient = c
				return a
			})
			if want := sha256.Sum256(data); !bytes.Equal(res.RawSHA256, want[:]) {
				t.Fatal("committed hash differs from the source")
			}
			a.mu.Lock()
			defer a.mu.Unlock()
			wantOwn, wantStream := 0, 3
			if old {
				wantOwn, wantStream = 3, 0
			}
			if a.own != wantOwn || a.stream != wantStream {
				t.Fatalf("chunks with their own digest %d, with the stream's %d; want %d and %d", a.own, a.stream, wantOwn, wantStream)
			}
		})
	}
}

// An upload long enough to checkpoint while it runs writes its checkpoint
// records in the background; once committed, none of them may be left (or
// land late) as a resumable session.
func TestCheckpointedUploadLeavesNoSession(t *testing.T) {
	e := newEnv(t)
	// One checkpoint's worth (64 MiB), so that its record is written in
	// the background just as the trailer arrives; mostly zeros, so that it
	// is quick.
	data := make([]byte, 64<<20)
	for off := 0; off < len(data); off += 1 << 20 {
		rand.Read(data[off : off+4096])
	}
	_, col, _ := uploadFile(t, e, data)
	if sess, err := e.db.GetUpload(ctx(t), col.GetCollectionId(), "file"); !errors.Is(err, state.ErrNotFound) {
		t.Fatalf("after the commit, the upload session is still recorded (%+v, %v)", sess, err)
	}
}

// TestTampering sends hand-made upload streams that break the protocol in
// one way each. Every one must be refused with a clear error, leave no
// object under the artifact's key, and leave the collection not complete.
func TestTampering(t *testing.T) {
	raw := make([]byte, 3<<20)
	rand.Read(raw[:1<<20])
	raw[1<<20], raw[2<<20] = 1, 2 // no two chunks alike
	encode := func(d chunk.Digest) ([]chunk.Chunk, chunk.Trailer) {
		enc, _ := chunk.NewEncoder(true)
		enc.SetDigest(d)
		var cs []chunk.Chunk
		for off := 0; off < len(raw); off += 1 << 20 {
			c, _ := enc.Encode(raw[off:off+1<<20], nil)
			cs = append(cs, c)
		}
		return cs, enc.Trailer()
	}
	// streamDigests is the same stream, its chunks carrying the stream's
	// digests.
	streamDigests := func() []chunk.Chunk {
		cs, _ := encode(chunk.DigestStream)
		return cs
	}
	tests := []struct {
		name     string
		mutate   func([]chunk.Chunk, *chunk.Trailer) []chunk.Chunk
		code     codes.Code
		contains string
	}{
		{"bytes do not match hash", func(cs []chunk.Chunk, _ *chunk.Trailer) []chunk.Chunk {
			cs[1].SHA256 = bytes.Clone(cs[1].SHA256)
			cs[1].SHA256[3] ^= 0xff
			return cs
		}, codes.DataLoss, "SHA-256 mismatch"},
		{"bytes do not match stream hash", func(cs []chunk.Chunk, _ *chunk.Trailer) []chunk.Chunk {
			cs = streamDigests()
			cs[1].StreamSHA256[3] ^= 0xff
			return cs
		}, codes.DataLoss, "SHA-256 mismatch"},
		{"chunks swapped with their stream hashes", func(cs []chunk.Chunk, _ *chunk.Trailer) []chunk.Chunk {
			cs = streamDigests()
			cs[1].Data, cs[2].Data = cs[2].Data, cs[1].Data
			cs[1].StreamSHA256, cs[2].StreamSHA256 = cs[2].StreamSHA256, cs[1].StreamSHA256
			return cs
		}, codes.DataLoss, "SHA-256 mismatch"},
		{"no hash", func(cs []chunk.Chunk, _ *chunk.Trailer) []chunk.Chunk { cs[1].SHA256 = nil; return cs }, codes.DataLoss, "carries no digest"},
		{"gap in offsets", func(cs []chunk.Chunk, _ *chunk.Trailer) []chunk.Chunk { cs[1].Offset += 10; return cs }, codes.DataLoss, "wrong offset"},
		{"overlap in offsets", func(cs []chunk.Chunk, _ *chunk.Trailer) []chunk.Chunk { cs[1].Offset -= 10; return cs }, codes.DataLoss, "wrong offset"},
		{"repeated sequence", func(cs []chunk.Chunk, _ *chunk.Trailer) []chunk.Chunk { return []chunk.Chunk{cs[0], cs[0]} }, codes.DataLoss, "wrong sequence"},
		{"skipped sequence", func(cs []chunk.Chunk, _ *chunk.Trailer) []chunk.Chunk { return []chunk.Chunk{cs[0], cs[2]} }, codes.DataLoss, "wrong sequence"},
		{"trailer hash wrong", func(cs []chunk.Chunk, tr *chunk.Trailer) []chunk.Chunk {
			tr.SHA256 = make([]byte, 32)
			return cs
		}, codes.DataLoss, "trailer"},
		{"raw length over the limit", func(cs []chunk.Chunk, _ *chunk.Trailer) []chunk.Chunk {
			cs[0].RawLen = chunk.MaxRawSize + 1
			return cs
		}, codes.ResourceExhausted, "too large"},
		{"message over the size limit", func(cs []chunk.Chunk, _ *chunk.Trailer) []chunk.Chunk {
			cs[0].Data = make([]byte, service.MaxMessageSize+1)
			return cs
		}, codes.ResourceExhausted, ""},
		{"no trailer", func(cs []chunk.Chunk, tr *chunk.Trailer) []chunk.Chunk { tr.Count = ^uint64(0); return cs }, codes.InvalidArgument, "without a trailer"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t)
			agentID, _, agent := e.enrolledAgent()
			r := e.responder("alice")
			sctx, cancel := context.WithCancel(ctx(t))
			defer cancel()
			s := session(t, agent, sctx)
			col := collect(t, r, agentID, "host")
			nextTask(t, s)

			cs, tr := encode(chunk.DigestOwn)
			cs = tt.mutate(cs, &tr)
			up := openUpload(t, agent, col.GetCollectionId(), "host")
			var err error
			for _, c := range cs {
				err = up.Send(&custodyv1.UploadRequest{Msg: &custodyv1.UploadRequest_Chunk{Chunk: &custodyv1.Chunk{
					Sequence: c.Seq, Offset: c.Offset, RawLength: c.RawLen, Sha256: c.SHA256, StreamSha256: c.StreamSHA256, Data: c.Data}}})
				if err != nil {
					break
				}
			}
			if err == nil {
				if tr.Count == ^uint64(0) {
					up.CloseSend()
				} else {
					up.Send(&custodyv1.UploadRequest{Msg: &custodyv1.UploadRequest_Trailer{Trailer: &custodyv1.UploadTrailer{
						TotalLength: tr.Total, Sha256: tr.SHA256, ChunkCount: tr.Count}}})
				}
			}
			for err == nil || errors.Is(err, io.EOF) {
				var m *custodyv1.UploadResponse
				m, err = up.Recv()
				if m.GetCommitted() != nil {
					t.Fatal("tampered upload was committed")
				}
			}
			wantCode(t, err, tt.code, tt.contains)

			final := waitFinal(t, r, col.GetCollectionId())
			if final.GetState() == custodyv1.CollectionState_COLLECTION_STATE_COMPLETE {
				t.Fatal("collection marked complete after a refused upload")
			}
			if a := final.GetArtifacts()[0]; a.GetState() != custodyv1.ArtifactState_ARTIFACT_STATE_FAILED || a.GetError() == "" {
				t.Fatalf("artifact %s with error %q, want failed with a reason", a.GetState(), a.GetError())
			}
			key, _ := store.Key("IR-1", agentID, col.GetCollectionId(), "host.json.zst")
			if _, err := e.store.Stat(ctx(t), key); !errors.Is(err, store.ErrNotFound) {
				t.Fatalf("object visible after a refused upload: %v", err)
			}
			// The failure is sealed: a signed manifest says what is missing.
			dir := filepath.Join(e.dir, "evidence", "IR-1", agentID, col.GetCollectionId())
			mdata, _ := os.ReadFile(filepath.Join(dir, service.ManifestFile))
			sig, _ := os.ReadFile(filepath.Join(dir, service.SignatureFile))
			m, _, err := manifest.Verify(mdata, sig, e.roots)
			if err != nil {
				t.Fatal(err)
			}
			if m.State != "failed" || m.Artifacts[0].Key != "" || len(m.Artifacts[0].Errors) == 0 {
				t.Fatalf("manifest state %q artifact %+v", m.State, m.Artifacts[0])
			}
		})
	}
}

// TestDisconnectKeepsTaskForResume: an agent that goes away mid-collection
// does not fail it (that would lose evidence a restarted agent can still
// send) nor complete it: the task stays running and is delivered again on
// the agent's next hello; an artifact already stored is not taken twice.
func TestDisconnectKeepsTaskForResume(t *testing.T) {
	e := newEnv(t)
	agentID, _, agent := e.enrolledAgent()
	r := e.responder("alice")
	sctx, cancel := context.WithCancel(ctx(t))
	s := session(t, agent, sctx)
	col := collect(t, r, agentID, "host", "processes")
	task := nextTask(t, s)

	// host is stored before the disconnect; processes is cut off mid-upload.
	up, err := upload.Start(ctx(t), agent, upload.Options{TaskID: task.GetTaskId(), Artifact: "host", Extension: "json", ExpectedSize: -1})
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(up, `{"hostname":"test-host"}`)
	if _, err := up.Close(upload.Trailer{Source: "test"}); err != nil {
		t.Fatal(err)
	}
	raw := openUpload(t, agent, col.GetCollectionId(), "processes")
	_ = raw
	cancel()

	deadline := time.Now().Add(30 * time.Second)
	for {
		got, err := r.GetCollection(ctx(t), &custodyv1.GetCollectionRequest{CollectionId: col.GetCollectionId()})
		if err != nil {
			t.Fatal(err)
		}
		if st := got.GetCollection().GetState(); st != custodyv1.CollectionState_COLLECTION_STATE_RUNNING {
			t.Fatalf("collection %s after disconnect, want running (resumable)", st)
		}
		if a := got.GetCollection().GetArtifacts()[1]; a.GetState() != custodyv1.ArtifactState_ARTIFACT_STATE_FAILED {
			break // the interrupted upload was noticed and left resumable
		} else if time.Now().After(deadline) {
			t.Fatalf("processes artifact %s: %s", a.GetState(), a.GetError())
		}
		time.Sleep(20 * time.Millisecond)
	}

	s2 := session(t, agent, ctx(t))
	again := nextTask(t, s2)
	if again.GetTaskId() != col.GetCollectionId() {
		t.Fatalf("re-delivered task %s, want %s", again.GetTaskId(), col.GetCollectionId())
	}
	// The stored artifact is not taken again.
	_, err = upload.Start(ctx(t), agent, upload.Options{TaskID: task.GetTaskId(), Artifact: "host", Extension: "json", ExpectedSize: -1})
	wantCode(t, err, codes.AlreadyExists, "already stored")
	up2, err := upload.Start(ctx(t), agent, upload.Options{TaskID: task.GetTaskId(), Artifact: "processes", Extension: "jsonl", ExpectedSize: -1})
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(up2, "{\"pid\":1}\n")
	if _, err := up2.Close(upload.Trailer{Source: "test"}); err != nil {
		t.Fatal(err)
	}
	if final := waitFinal(t, r, col.GetCollectionId()); final.GetState() != custodyv1.CollectionState_COLLECTION_STATE_COMPLETE {
		t.Fatalf("collection %s after the agent came back, want complete", final.GetState())
	}
}

func TestTaskForOfflineAgentDeliveredOnHello(t *testing.T) {
	e := newEnv(t)
	agentID, _, agent := e.enrolledAgent()
	r := e.responder("alice")
	col := collect(t, r, agentID, "host")
	if col.GetState() != custodyv1.CollectionState_COLLECTION_STATE_PENDING {
		t.Fatalf("state %s, want pending", col.GetState())
	}
	s := session(t, agent, ctx(t))
	task := nextTask(t, s)
	if task.GetTaskId() != col.GetCollectionId() || task.GetCaseId() != "IR-1" || task.GetArtifacts()[0].GetName() != "host" {
		t.Fatalf("task %v", task)
	}
	got, _ := e.db.GetCollection(ctx(t), col.GetCollectionId())
	if got.State != state.Running {
		t.Fatalf("delivered collection is %s, want running", got.State)
	}
}

func TestCreateCollectionValidates(t *testing.T) {
	e := newEnv(t)
	agentID, _, agent := e.enrolledAgent()
	session(t, agent, ctx(t))
	r := e.responder("alice")
	for _, tt := range []struct {
		name string
		req  *custodyv1.CreateCollectionRequest
		code codes.Code
	}{
		{"unknown agent", &custodyv1.CreateCollectionRequest{AgentId: "nope", CaseId: "IR-1", Artifacts: []*custodyv1.ArtifactSpec{{Name: "host"}}}, codes.NotFound},
		{"bad case id", &custodyv1.CreateCollectionRequest{AgentId: agentID, CaseId: "../etc", Artifacts: []*custodyv1.ArtifactSpec{{Name: "host"}}}, codes.InvalidArgument},
		{"no artifacts", &custodyv1.CreateCollectionRequest{AgentId: agentID, CaseId: "IR-1"}, codes.InvalidArgument},
		{"artifact the agent lacks", &custodyv1.CreateCollectionRequest{AgentId: agentID, CaseId: "IR-1", Artifacts: []*custodyv1.ArtifactSpec{{Name: "tea"}}}, codes.InvalidArgument},
		{"duplicate artifact", &custodyv1.CreateCollectionRequest{AgentId: agentID, CaseId: "IR-1", Artifacts: []*custodyv1.ArtifactSpec{{Name: "host"}, {Name: "host"}}}, codes.InvalidArgument},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := r.CreateCollection(ctx(t), tt.req)
			wantCode(t, err, tt.code, "")
		})
	}
}

// A revoked agent is cut off at once, though its certificate is still
// valid: its live session ends with the reason, it cannot start another,
// upload or renew, its unfinished collection fails, nobody can task it,
// and responders see who revoked it and why. Other agents are untouched.
func TestRevokedAgentIsCutOff(t *testing.T) {
	e := newEnv(t)
	id, _, agent := e.enrolledAgent()
	otherID, _, other := e.enrolledAgent()
	r := e.responder("alice")
	sctx, cancel := context.WithCancel(ctx(t))
	defer cancel()
	s := session(t, agent, sctx)
	col := collect(t, r, id, "host")
	nextTask(t, s)
	otherSess := session(t, other, sctx)

	_, err := r.RevokeAgent(ctx(t), &custodyv1.RevokeAgentRequest{AgentId: id})
	wantCode(t, err, codes.InvalidArgument, "reason")
	resp, err := r.RevokeAgent(ctx(t), &custodyv1.RevokeAgentRequest{AgentId: id, Reason: "host terminated after IR-1"})
	if err != nil {
		t.Fatal(err)
	}
	if a := resp.GetAgent(); a.GetRevokedAt() == nil || !strings.Contains(a.GetRevokedBy(), "alice") || a.GetRevokeReason() != "host terminated after IR-1" {
		t.Fatalf("revoked agent: %v", a)
	}

	// The live session ends, saying why.
	for {
		_, err := s.Recv()
		if err != nil {
			wantCode(t, err, codes.PermissionDenied, "revoked")
			break
		}
	}
	// A new session, an upload and a renewal are refused.
	s2, err := agent.Session(ctx(t))
	if err == nil {
		s2.Send(&custodyv1.SessionRequest{Msg: &custodyv1.SessionRequest_Hello{Hello: &custodyv1.Hello{Host: &custodyv1.HostFacts{Hostname: "test-host"}}}})
		_, err = s2.Recv()
	}
	wantCode(t, err, codes.PermissionDenied, "revoked")
	up, err := agent.Upload(ctx(t))
	if err == nil {
		up.Send(&custodyv1.UploadRequest{Msg: &custodyv1.UploadRequest_Open{Open: &custodyv1.UploadOpen{
			TaskId: col.GetCollectionId(), Artifact: "host", Extension: "json", Compression: custodyv1.Compression_COMPRESSION_ZSTD,
		}}})
		_, err = up.Recv()
	}
	wantCode(t, err, codes.PermissionDenied, "revoked")
	_, err = agent.Renew(ctx(t), &custodyv1.RenewRequest{})
	wantCode(t, err, codes.PermissionDenied, "revoked")

	// Its collection failed with the reason; no new one can be made.
	got := waitFinal(t, r, col.GetCollectionId())
	if got.GetState() == custodyv1.CollectionState_COLLECTION_STATE_COMPLETE || !strings.Contains(got.GetArtifacts()[0].GetError(), "revoked") {
		t.Fatalf("collection of the revoked agent: %v", got)
	}
	_, err = r.CreateCollection(ctx(t), &custodyv1.CreateCollectionRequest{AgentId: id, CaseId: "IR-2",
		Artifacts: []*custodyv1.ArtifactSpec{{Name: "host"}}})
	wantCode(t, err, codes.FailedPrecondition, "revoked")

	// The other agent still works.
	col2 := collect(t, r, otherID, "host")
	if task := nextTask(t, otherSess); task.GetTaskId() != col2.GetCollectionId() {
		t.Fatalf("other agent got task %s, want %s", task.GetTaskId(), col2.GetCollectionId())
	}
	g, err := r.GetAgent(ctx(t), &custodyv1.GetAgentRequest{AgentId: id})
	if err != nil || g.GetAgent().GetRevokedAt() == nil || g.GetAgent().GetConnected() {
		t.Fatalf("GetAgent after revocation: %v, %v", g, err)
	}
}

// TestCutUploadResumesAfterLastAck: an upload cut off after the collector
// acknowledged its chunks resumes after the last of them, not at an
// earlier checkpoint: the store's background sync is waited for when an
// upload stops, so a cut costs only the chunks in flight.
func TestCutUploadResumesAfterLastAck(t *testing.T) {
	e := newEnv(t)
	agentID, _, agent := e.enrolledAgent()
	r := e.responder("alice")
	s := session(t, agent, ctx(t))
	col := collect(t, r, agentID, "host")
	nextTask(t, s)

	raw := make([]byte, 3<<20)
	rand.Read(raw)
	enc, _ := chunk.NewEncoder(true)
	cctx, cut := context.WithCancel(ctx(t))
	defer cut()
	up, err := agent.Upload(cctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := up.Send(&custodyv1.UploadRequest{Msg: &custodyv1.UploadRequest_Open{Open: &custodyv1.UploadOpen{
		TaskId: col.GetCollectionId(), Artifact: "host", Extension: "json", ExpectedSize: -1, Compression: custodyv1.Compression_COMPRESSION_ZSTD,
	}}}); err != nil {
		t.Fatal(err)
	}
	if m, err := up.Recv(); err != nil || m.GetAccepted() == nil {
		t.Fatalf("open: %v, %v", m, err)
	}
	for off := 0; off < len(raw); off += 1 << 20 {
		c, _ := enc.Encode(raw[off:off+1<<20], nil)
		if err := up.Send(&custodyv1.UploadRequest{Msg: &custodyv1.UploadRequest_Chunk{Chunk: &custodyv1.Chunk{
			Sequence: c.Seq, Offset: c.Offset, RawLength: c.RawLen, Sha256: c.SHA256, Data: c.Data}}}); err != nil {
			t.Fatal(err)
		}
		if m, err := up.Recv(); err != nil || m.GetAck().GetSequence() != c.Seq {
			t.Fatalf("chunk %d: got %v, %v; want its ack", c.Seq, m, err)
		}
	}
	cut()

	// Whether the collector noticed the cut first or the new stream
	// supersedes the old one, the old handler checkpoints before the new
	// one opens (lockArtifact).
	_, acc := openUploadAccepted(t, agent, col.GetCollectionId(), "host")
	if acc.GetResumeOffset() != int64(len(raw)) || acc.GetNextSequence() != 3 {
		t.Fatalf("resumed at offset %d, sequence %d after 3 acknowledged MiB; want %d, 3", acc.GetResumeOffset(), acc.GetNextSequence(), len(raw))
	}
}
