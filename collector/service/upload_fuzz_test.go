package service

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"

	"github.com/custodyhq/custody/collector/state"
	"github.com/custodyhq/custody/collector/store"
	"github.com/custodyhq/custody/internal/chunk"
	"github.com/custodyhq/custody/internal/manifest"
	"github.com/custodyhq/custody/internal/pki"
	custodyv1 "github.com/custodyhq/custody/proto/custody/v1"
)

// fakeUpload drives Server.Upload with a scripted message sequence.
type fakeUpload struct {
	grpc.ServerStream
	ctx  context.Context
	msgs []*custodyv1.UploadRequest
	sent []*custodyv1.UploadResponse
}

func (f *fakeUpload) Context() context.Context { return f.ctx }
func (f *fakeUpload) Recv() (*custodyv1.UploadRequest, error) {
	if len(f.msgs) == 0 {
		return nil, io.EOF
	}
	m := f.msgs[0]
	f.msgs = f.msgs[1:]
	return m, nil
}
func (f *fakeUpload) Send(m *custodyv1.UploadResponse) error { f.sent = append(f.sent, m); return nil }
func (f *fakeUpload) SetHeader(metadata.MD) error            { return nil }
func (f *fakeUpload) SendHeader(metadata.MD) error           { return nil }
func (f *fakeUpload) SetTrailer(metadata.MD)                 {}

// FuzzUploadHandler feeds the upload handler arbitrary sequences of opens,
// chunks (valid, replayed, corrupted), trailers and early ends. Whatever the
// sequence: no panic, and a collection that ends complete has a stored
// object that verifies against the signed manifest.
//
// Each byte of the script is one message: byte%6 says which, byte/6 is its
// argument. 36 opens the requested artifact, zstd-compressed; 1 and 7 send
// the next valid chunk with its own digest or the stream's.
func FuzzUploadHandler(f *testing.F) {
	f.Add([]byte{36, 1, 1, 1, 3})     // complete, own digests
	f.Add([]byte{36, 7, 7, 7, 3})     // complete, stream digests
	f.Add([]byte{36, 1, 7, 1, 3})     // complete, both kinds
	f.Add([]byte{36, 1, 14, 1, 1, 3}) // a corrupted chunk
	f.Add([]byte{36, 1, 1, 4})
	f.Add([]byte{36, 1, 1, 1, 5})
	f.Add([]byte{0, 1, 1, 1, 3}) // the wrong open
	f.Add([]byte{1, 36, 3})
	f.Add([]byte{36, 36, 1, 1, 1, 3})

	dir := f.TempDir()
	db, err := state.Open(context.Background(), filepath.Join(dir, "state.db"))
	if err != nil {
		f.Fatal(err)
	}
	defer db.Close()
	st, err := store.NewFS(filepath.Join(dir, "evidence"))
	if err != nil {
		f.Fatal(err)
	}
	pkiDir := filepath.Join(dir, "pki")
	if err := pki.Init(pki.InitOptions{Dir: pkiDir}); err != nil {
		f.Fatal(err)
	}
	ca, _ := pki.LoadCA(pkiDir)
	signer, _ := pki.ReadKey(filepath.Join(pkiDir, pki.SigningKeyFile))
	signCert, _ := os.ReadFile(filepath.Join(pkiDir, pki.SigningCertFile))
	roots, _ := pki.ReadCertPool(filepath.Join(pkiDir, pki.CACertFile))
	collectorID, _ := pki.NewIdentity(pki.RoleCollector, "collector")
	s := New(Config{Identity: collectorID, CA: ca, SigningKey: signer.(ed25519.PrivateKey), SigningCertPEM: signCert}, db, st, slog.New(slog.DiscardHandler))

	agentID, _ := pki.NewIdentity(pki.RoleAgent, "fuzz-agent")
	if err := db.CreateAgent(context.Background(), state.Agent{ID: agentID.Name, EnrolledAt: time.Now()}); err != nil {
		f.Fatal(err)
	}
	ctx := context.WithValue(context.Background(), callerKey{}, caller{id: agentID, cert: &x509.Certificate{NotAfter: time.Now().Add(time.Hour)}})

	// A valid three-chunk stream to draw from, its chunks carrying their
	// own digests (good) or the stream's (goodStream).
	raw := make([]byte, 3<<10)
	rand.Read(raw)
	enc, _ := chunk.NewEncoder(true)
	encStream, _ := chunk.NewEncoder(true)
	encStream.SetDigest(chunk.DigestStream)
	var good, goodStream []*custodyv1.Chunk
	for off := 0; off < len(raw); off += 1 << 10 {
		c, _ := enc.Encode(raw[off:off+1<<10], nil)
		good = append(good, &custodyv1.Chunk{Sequence: c.Seq, Offset: c.Offset, RawLength: c.RawLen, Sha256: c.SHA256, Data: c.Data})
		c, _ = encStream.Encode(raw[off:off+1<<10], nil)
		goodStream = append(goodStream, &custodyv1.Chunk{Sequence: c.Seq, Offset: c.Offset, RawLength: c.RawLen, StreamSha256: c.StreamSHA256, Data: c.Data})
	}
	tr := enc.Trailer()

	f.Fuzz(func(t *testing.T, script []byte) {
		colID := "c-fuzz-" + time.Now().Format("150405.000000000")
		if err := db.CreateCollection(ctx, state.Collection{ID: colID, AgentID: agentID.Name, CaseID: "FUZZ", State: state.Running,
			RequestedAt: time.Now(), Deadline: time.Now().Add(time.Hour), Artifacts: []state.Artifact{{Name: "host", State: state.Pending}}}); err != nil {
			t.Fatal(err)
		}
		var msgs []*custodyv1.UploadRequest
		next := 0
		for _, b := range script {
			arg := b / 6
			switch b % 6 {
			case 0:
				msgs = append(msgs, &custodyv1.UploadRequest{Msg: &custodyv1.UploadRequest_Open{Open: &custodyv1.UploadOpen{
					TaskId: colID, Artifact: []string{"host", "processes", ""}[arg%3], Extension: []string{"json", "../x", ""}[arg%3],
					Compression: custodyv1.Compression(arg % 4), Restart: arg&8 != 0}}})
			case 1:
				c := good[next%len(good)]
				if arg&1 != 0 {
					c = goodStream[next%len(good)]
				}
				msgs = append(msgs, &custodyv1.UploadRequest{Msg: &custodyv1.UploadRequest_Chunk{Chunk: c}})
				next++
			case 2:
				from := good
				if arg&2 != 0 {
					from = goodStream
				}
				c := proto.Clone(from[int(arg)%len(from)]).(*custodyv1.Chunk)
				if len(c.Data) > 0 {
					c.Data[int(arg)%len(c.Data)] ^= arg | 1
				}
				msgs = append(msgs, &custodyv1.UploadRequest{Msg: &custodyv1.UploadRequest_Chunk{Chunk: c}})
			case 3:
				msgs = append(msgs, &custodyv1.UploadRequest{Msg: &custodyv1.UploadRequest_Trailer{Trailer: &custodyv1.UploadTrailer{
					TotalLength: tr.Total, Sha256: tr.SHA256, ChunkCount: tr.Count}}})
			case 4:
				msgs = append(msgs, &custodyv1.UploadRequest{Msg: &custodyv1.UploadRequest_Trailer{Trailer: &custodyv1.UploadTrailer{
					TotalLength: int64(arg), Sha256: script, ChunkCount: uint64(arg)}}})
			case 5:
				msgs = append(msgs, &custodyv1.UploadRequest{})
			}
		}
		s.Upload(&fakeUpload{ctx: ctx, msgs: msgs})

		col, err := db.GetCollection(ctx, colID)
		if err != nil {
			t.Fatal(err)
		}
		if col.State != state.Complete {
			return
		}
		// Complete: the signed manifest and the stored bytes must agree.
		key, _ := store.Key("FUZZ", agentID.Name, colID, ManifestFile)
		sigKey, _ := store.Key("FUZZ", agentID.Name, colID, SignatureFile)
		data := readAll(t, st, key)
		sig := readAll(t, st, sigKey)
		m, _, err := manifest.Verify(data, sig, roots)
		if err != nil {
			t.Fatalf("complete collection with a bad manifest: %v", err)
		}
		r, err := st.Open(ctx, m.Artifacts[0].Key)
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		if err := manifest.VerifyArtifact(ctx, m.Artifacts[0], r); err != nil {
			t.Fatalf("complete collection whose object does not verify: %v", err)
		}
		if m.Artifacts[0].RawSize != int64(len(raw)) {
			t.Fatalf("complete with %d raw bytes, want %d", m.Artifacts[0].RawSize, len(raw))
		}
	})
}

func readAll(t *testing.T, st store.Store, key string) []byte {
	t.Helper()
	r, err := st.Open(context.Background(), key)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	b, err := io.ReadAll(r)
	if err != nil && !errors.Is(err, io.EOF) {
		t.Fatal(err)
	}
	return b
}

func TestChunkSizeFor(t *testing.T) {
	for active, want := range map[int]int64{0: 4 << 20, 1: 4 << 20, 4: 4 << 20, 5: 2 << 20, 8: 2 << 20, 9: 1 << 20, 16: 1 << 20, 500: 1 << 20} {
		if got := chunkSizeFor(active); got != want {
			t.Errorf("chunkSizeFor(%d) = %d, want %d", active, got, want)
		}
	}
}
