package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	s3api "github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/klauspost/compress/zstd"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/custodyhq/custody/agent/session"
	"github.com/custodyhq/custody/collector/store/s3/s3test"
	"github.com/custodyhq/custody/internal/pki"
	custodyv1 "github.com/custodyhq/custody/proto/custody/v1"
)

// s3Env is a collector served in-process by `serve --config` with an s3
// store on a real versitygw, an agent enrolled against it, and a
// responder client.
type s3Env struct {
	t         *testing.T
	srv       *s3test.Server
	bucket    string
	prefix    string
	proxy     *s3test.Proxy
	responder custodyv1.ResponderServiceClient
	agentID   string
}

func newS3Env(t *testing.T, viaProxy bool) *s3Env {
	srv := s3test.Start(t)
	e := &s3Env{t: t, srv: srv, bucket: srv.Bucket(t, true), prefix: "custody"}
	endpoint := srv.Endpoint
	if viaProxy {
		e.proxy = s3test.NewProxy(t, srv.Endpoint)
		endpoint = e.proxy.URL
	}
	// The collector finds credentials and region where it would in
	// production: the SDK's standard chain, here the environment.
	for _, kv := range srv.Env() {
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v)
	}
	ctx, cancel := context.WithCancel(context.Background())
	dir := t.TempDir()
	mustRun(t, "pki", "init", "--data-dir", dir)
	mustRun(t, "pki", "issue", "responder", "e2e", "--data-dir", dir)
	token := filepath.Join(dir, "join-token")
	mustRun(t, "token", "create", "--uses", "1", "--data-dir", dir, "--out", token)
	config := filepath.Join(dir, "collector.yaml")
	writeFile(t, config, fmt.Sprintf(`store:
  type: s3
  bucket: %s
  prefix: %s
  endpoint: %s
  path_style: true
  kms_key_id: alias/custody-evidence
  object_lock: {mode: GOVERNANCE, retain_days: 1}
  part_size: 5MiB
  max_parts_in_flight: 4
  max_attempts: 3
  max_backoff: 50ms
  stall_timeout: 2s
`, e.bucket, e.prefix, endpoint))

	ready := filepath.Join(dir, "ready")
	served := make(chan error, 1)
	go func() {
		served <- run(ctx, []string{"serve", "--config", config, "--data-dir", dir, "--listen", "127.0.0.1:0", "--ready-file", ready})
	}()
	addr := waitFile(t, ready, served)
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-served:
			if err != nil {
				t.Errorf("serve: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Error("serve did not stop")
		}
	})

	tok, err := os.ReadFile(token)
	if err != nil {
		t.Fatal(err)
	}
	go session.Run(ctx, session.Config{
		Collector: addr, StateDir: filepath.Join(dir, "agent"), CAFile: filepath.Join(dir, "pki", pki.CACertFile),
		JoinToken: strings.TrimSpace(string(tok)), MinBackoff: 50 * time.Millisecond, MaxBackoff: time.Second,
		Logger: slog.New(slog.DiscardHandler),
	})

	roots, err := pki.ReadCertPool(filepath.Join(dir, "pki", pki.CACertFile))
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tls.LoadX509KeyPair(filepath.Join(dir, "pki", "responder-e2e.crt"), filepath.Join(dir, "pki", "responder-e2e.key"))
	if err != nil {
		t.Fatal(err)
	}
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(pki.ClientTLSConfig(roots, "127.0.0.1", pki.NewKeypair(cert)))))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	e.responder = custodyv1.NewResponderServiceClient(cc)
	e.agentID = e.waitAgent()
	return e
}

func mustRun(t *testing.T, args ...string) {
	t.Helper()
	if err := run(t.Context(), args); err != nil {
		t.Fatalf("custody-collector %s: %v", strings.Join(args, " "), err)
	}
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

func waitFile(t *testing.T, path string, served <-chan error) string {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if b, err := os.ReadFile(path); err == nil && bytes.HasSuffix(b, []byte("\n")) {
			return strings.TrimSpace(string(b))
		}
		select {
		case err := <-served:
			t.Fatalf("serve exited before it was ready: %v", err)
		case <-time.After(20 * time.Millisecond):
		}
	}
	t.Fatalf("no ready file %s", path)
	return ""
}

func (e *s3Env) waitAgent() string {
	e.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		resp, err := e.responder.ListAgents(e.t.Context(), &custodyv1.ListAgentsRequest{})
		if err == nil {
			for _, a := range resp.GetAgents() {
				if a.GetConnected() {
					return a.GetAgentId()
				}
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	e.t.Fatal("the agent did not connect")
	return ""
}

// collect runs a collection to its end.
func (e *s3Env) collect(artifacts ...*custodyv1.ArtifactSpec) *custodyv1.Collection {
	e.t.Helper()
	ctx := e.t.Context()
	resp, err := e.responder.CreateCollection(ctx, &custodyv1.CreateCollectionRequest{
		AgentId: e.agentID, Artifacts: artifacts, CaseId: "IR-S3", Reason: "s3 end to end",
	})
	if err != nil {
		e.t.Fatal(err)
	}
	id := resp.GetCollection().GetCollectionId()
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		got, err := e.responder.GetCollection(ctx, &custodyv1.GetCollectionRequest{CollectionId: id})
		if err != nil {
			e.t.Fatal(err)
		}
		switch col := got.GetCollection(); col.GetState() {
		case custodyv1.CollectionState_COLLECTION_STATE_PENDING, custodyv1.CollectionState_COLLECTION_STATE_RUNNING:
		default:
			return col
		}
		time.Sleep(50 * time.Millisecond)
	}
	e.t.Fatalf("collection %s did not finish", id)
	return nil
}

func (e *s3Env) object(key string) []byte {
	e.t.Helper()
	out, err := e.srv.Client().GetObject(e.t.Context(), &s3api.GetObjectInput{Bucket: &e.bucket, Key: aws.String(e.prefix + "/" + key)})
	if err != nil {
		e.t.Fatalf("GetObject %s: %v", key, err)
	}
	defer out.Body.Close()
	b, err := io.ReadAll(out.Body)
	if err != nil {
		e.t.Fatal(err)
	}
	return b
}

func randomFile(t *testing.T, n int) (string, []byte) {
	t.Helper()
	data := make([]byte, n)
	r := rand.NewChaCha8([32]byte{4})
	r.Read(data)
	p := filepath.Join(t.TempDir(), "evidence.img")
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return p, data
}

func hexSum(b []byte) string { s := sha256.Sum256(b); return hex.EncodeToString(s[:]) }

// TestServeS3EndToEnd: agent → collector → versitygw, selected by the
// configuration file alone. The objects read back with the SDK are the
// agent's bytes, with the hashes the collector reported, and the signed
// manifest beside them names their bucket, key, version and ETag.
func TestServeS3EndToEnd(t *testing.T) {
	e := newS3Env(t, false)
	src, data := randomFile(t, 13<<20) // three parts of 5 MiB
	col := e.collect(
		&custodyv1.ArtifactSpec{Name: "file", Params: map[string]string{"path": src}},
		&custodyv1.ArtifactSpec{Name: "host"},
	)
	if col.GetState() != custodyv1.CollectionState_COLLECTION_STATE_COMPLETE {
		t.Fatalf("collection %s: %v", col.GetState(), col)
	}
	var file *custodyv1.ArtifactStatus
	for _, a := range col.GetArtifacts() {
		if a.GetState() != custodyv1.ArtifactState_ARTIFACT_STATE_COMPLETE {
			t.Errorf("artifact %s: %s %s", a.GetName(), a.GetState(), a.GetError())
		}
		stored := e.object(a.GetKey())
		if got := hexSum(stored); got != a.GetStoredSha256() || int64(len(stored)) != a.GetStoredSize() {
			t.Errorf("%s: object read back is %d bytes sha256 %s; collector stored %d bytes sha256 %s",
				a.GetName(), len(stored), got, a.GetStoredSize(), a.GetStoredSha256())
		}
		if a.GetName() == "file" {
			file = a
		}
	}
	if file == nil {
		t.Fatal("no file artifact")
	}
	stored := e.object(file.GetKey())
	d, err := zstd.NewReader(bytes.NewReader(stored))
	if err != nil {
		t.Fatal(err)
	}
	raw, err := io.ReadAll(d)
	d.Close()
	if err != nil {
		t.Fatalf("decompress %s: %v", file.GetKey(), err)
	}
	if !bytes.Equal(raw, data) {
		t.Fatalf("decompressed object: %d bytes sha256 %s; the agent read %d bytes sha256 %s", len(raw), hexSum(raw), len(data), hexSum(data))
	}
	if file.GetRawSha256() != hexSum(data) {
		t.Errorf("collector's raw sha256 %s, file's %s", file.GetRawSha256(), hexSum(data))
	}
	fileObj := e.prefix + "/" + file.GetKey()
	head, err := e.srv.Client().HeadObject(t.Context(), &s3api.HeadObjectInput{Bucket: &e.bucket, Key: &fileObj})
	if err != nil {
		t.Fatal(err)
	}
	if head.ObjectLockMode != "GOVERNANCE" || head.ObjectLockRetainUntilDate == nil {
		t.Errorf("object lock mode %q until %v, want GOVERNANCE with a date", head.ObjectLockMode, head.ObjectLockRetainUntilDate)
	}

	// The manifest, signed, beside the artifacts.
	if col.GetManifestKey() == "" {
		t.Fatal("no manifest key")
	}
	mb := e.object(col.GetManifestKey())
	e.object(col.GetManifestKey() + ".sig")
	var m struct {
		Artifacts []struct {
			Name, Key, Location, StoredSHA256 string
			VersionID                         string `json:"version_id"`
			ETag                              string `json:"etag"`
			Stored                            string `json:"stored_sha256"`
		} `json:"artifacts"`
	}
	if err := json.Unmarshal(mb, &m); err != nil {
		t.Fatal(err)
	}
	for _, a := range m.Artifacts {
		obj := e.prefix + "/" + a.Key
		if want := "s3://" + e.bucket + "/" + obj; a.Location != want {
			t.Errorf("manifest: %s location %q, want %q", a.Name, a.Location, want)
		}
		head, err := e.srv.Client().HeadObject(t.Context(), &s3api.HeadObjectInput{Bucket: &e.bucket, Key: &obj})
		if err != nil {
			t.Fatal(err)
		}
		if a.VersionID == "" || a.VersionID != aws.ToString(head.VersionId) || a.ETag != strings.Trim(aws.ToString(head.ETag), `"`) {
			t.Errorf("manifest: %s version %q etag %q; object has version %q etag %q",
				a.Name, a.VersionID, a.ETag, aws.ToString(head.VersionId), aws.ToString(head.ETag))
		}
	}

	// The responder API reads the evidence back from S3 (what custodyctl
	// verify re-hashes).
	stream, err := e.responder.ReadEvidence(t.Context(), &custodyv1.ReadEvidenceRequest{CollectionId: col.GetCollectionId(), Key: file.GetKey()})
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.New()
	for {
		msg, err := stream.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		h.Write(msg.GetData())
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != file.GetStoredSha256() {
		t.Errorf("ReadEvidence: sha256 %s, want %s", got, file.GetStoredSha256())
	}
}

// TestServeS3Unavailable: when S3 keeps throttling every part beyond the
// retries, the artifact fails with the cause, the collection is sealed as
// failed, the multipart upload is aborted and no object is left at the key.
func TestServeS3Unavailable(t *testing.T) {
	e := newS3Env(t, true)
	e.proxy.SetFaults(func(r s3test.Request) s3test.Fault {
		if r.Op() == "UploadPart" {
			return s3test.Fault{Kind: s3test.SlowDown}
		}
		return s3test.Fault{}
	})
	src, _ := randomFile(t, 12<<20)
	col := e.collect(&custodyv1.ArtifactSpec{Name: "file", Params: map[string]string{"path": src}})
	if col.GetState() != custodyv1.CollectionState_COLLECTION_STATE_FAILED {
		t.Fatalf("collection %s, want FAILED: %v", col.GetState(), col)
	}
	a := col.GetArtifacts()[0]
	if a.GetState() != custodyv1.ArtifactState_ARTIFACT_STATE_FAILED || !strings.Contains(a.GetError(), "SlowDown") {
		t.Errorf("artifact %s error %q, want FAILED naming SlowDown", a.GetState(), a.GetError())
	}
	if e.proxy.Injected(s3test.SlowDown) == 0 {
		t.Fatal("no SlowDown was injected")
	}
	client := e.srv.Client()
	key := fmt.Sprintf("%s/IR-S3/%s/%s/file.bin.zst", e.prefix, e.agentID, col.GetCollectionId())
	if a.GetKey() != "" {
		key = e.prefix + "/" + a.GetKey()
	}
	if _, err := client.HeadObject(t.Context(), &s3api.HeadObjectInput{Bucket: &e.bucket, Key: &key}); err == nil {
		t.Errorf("a failed upload left an object at %s", key)
	}
	ups, err := client.ListMultipartUploads(t.Context(), &s3api.ListMultipartUploadsInput{Bucket: &e.bucket})
	if err != nil {
		t.Fatal(err)
	}
	if len(ups.Uploads) != 0 {
		t.Errorf("%d multipart uploads left behind", len(ups.Uploads))
	}
	if col.GetManifestKey() == "" {
		t.Error("the failed collection was not sealed with a manifest")
	}
}

// TestServeS3ObjectLockRequired: retention configured on a bucket without
// Object Lock stops the collector at startup, before it accepts evidence.
func TestServeS3ObjectLockRequired(t *testing.T) {
	srv := s3test.Start(t)
	for _, kv := range srv.Env() {
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v)
	}
	dir := t.TempDir()
	mustRun(t, "pki", "init", "--data-dir", dir)
	config := filepath.Join(dir, "collector.yaml")
	writeFile(t, config, fmt.Sprintf("store:\n  type: s3\n  bucket: %s\n  endpoint: %s\n  path_style: true\n  object_lock: {mode: COMPLIANCE, retain_days: 2555}\n",
		srv.Bucket(t, false), srv.Endpoint))
	err := run(t.Context(), []string{"serve", "--config", config, "--data-dir", dir, "--listen", "127.0.0.1:0"})
	if err == nil || !strings.Contains(err.Error(), "Object Lock") {
		t.Fatalf("serve = %v, want a startup error about Object Lock", err)
	}
}
