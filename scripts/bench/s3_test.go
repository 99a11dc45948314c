package bench

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	s3api "github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/custodyhq/custody/collector/store/s3/s3test"
	"github.com/custodyhq/custody/internal/pki"
	custodyv1 "github.com/custodyhq/custody/proto/custody/v1"
	"github.com/custodyhq/custody/scripts/e2e"
)

// BenchmarkS3Ingest measures agent → collector → S3 (versitygw, posix
// backend on a tmpfs, on loopback) for one 2 GiB artifact and for 16
// agents sending 128 MiB each at once. Beside it:
//   - the ceiling of the store on this machine, the SDK's plain PutObject
//     of the same bytes to the same server, measured before and after
//     (the faster counts);
//   - the same collection into a local evidence directory on the same
//     tmpfs: what agent, gRPC and the collector's verification cost
//     without any S3 store.
//
// The artifact is random, so the collector stores as many bytes as
// PutObject sends. Reported: MiB/s of each, the S3 rate as a fraction of
// PutObject's (target ≥ 0.7) and of fs's, and the collector's peak RSS
// (target < 256 MiB). Also reported: the SDK's plain multipart upload of
// the same bytes, the server's multipart cost without agent or collector.
// On one small machine the agent, the collector and
// the server share the cores, which a deployment does not.
func BenchmarkS3Ingest(b *testing.B) {
	for _, tc := range []struct {
		name   string
		agents int
		size   int64
	}{
		{"1x2GiB", 1, 2 << 30},
		{"16x128MiB", 16, 128 << 20},
	} {
		b.Run(tc.name, func(b *testing.B) { benchS3Ingest(b, tc.agents, tc.size) })
	}
}

const s3BenchMiB = 1 << 20

func benchS3Ingest(b *testing.B, agents int, size int64) {
	ctx := b.Context()
	// The server's data on a tmpfs: this measures the collector against
	// the SDK, not the machine's disk (which a multipart upload writes
	// twice on versitygw's posix backend: parts, then the object).
	parent := os.TempDir()
	if st, err := os.Stat("/dev/shm"); err == nil && st.IsDir() {
		parent = "/dev/shm"
	}
	srv := s3test.StartIn(b, parent)
	bucket := srv.Bucket(b, false)
	client := srv.Client()
	srcDir := b.TempDir()
	src := filepath.Join(srcDir, "evidence.img")
	if _, err := e2e.WriteFile(src, size, 11, e2e.FillRandom); err != nil {
		b.Fatal(err)
	}
	total := float64(size) * float64(agents)

	// uploadAll times one upload per agent's worth of bytes, all at once,
	// to prefix/0, prefix/1, ..., then deletes what they stored.
	uploadAll := func(prefix string, upload func(key string) error) time.Duration {
		start := time.Now()
		var wg sync.WaitGroup
		errs := make([]error, agents)
		for i := range agents {
			wg.Go(func() { errs[i] = upload(fmt.Sprintf("%s/%d", prefix, i)) })
		}
		wg.Wait()
		d := time.Since(start)
		for i, err := range errs {
			if err != nil {
				b.Fatal(err)
			}
			client.DeleteObject(ctx, &s3api.DeleteObjectInput{Bucket: &bucket, Key: aws.String(fmt.Sprintf("%s/%d", prefix, i))})
		}
		return d
	}
	// The ceiling: the SDK's own PutObject, with its defaults.
	putObjects := func() time.Duration {
		return uploadAll("ceiling", func(key string) error {
			f, err := os.Open(src)
			if err != nil {
				return err
			}
			defer f.Close()
			_, err = client.PutObject(ctx, &s3api.PutObjectInput{Bucket: &bucket, Key: &key, Body: f, ContentLength: aws.Int64(size)})
			return err
		})
	}
	// CPU time, for where the machine's two cores go: the SDK's (this
	// process's, which does nothing else meanwhile) and the server's.
	self, server := os.Getpid(), srv.Pid()
	cpu0, srv0 := cpuSeconds(self), cpuSeconds(server)
	ceiling := putObjects()
	putCPU := cpuSeconds(self) - cpu0 + cpuSeconds(server) - srv0

	// The store's own multipart cost: the same bytes as the SDK's plain
	// multipart upload with the collector's part size and parts in flight
	// (8 MiB, 8), its defaults otherwise. No agent, no collector: what
	// versitygw's multipart path costs by itself, which includes a
	// CompleteMultipartUpload that copies every part into the object.
	multipart := func() time.Duration {
		return uploadAll("multipart", func(key string) error { return sdkMultipart(ctx, client, bucket, key, src, size) })
	}
	mpCeiling := multipart()

	for _, kv := range srv.Env() {
		k, v, _ := strings.Cut(kv, "=")
		b.Setenv(k, v)
	}
	fsDir, err := os.MkdirTemp(parent, "custody-fs-")
	if err != nil {
		b.Fatal(err)
	}
	defer os.RemoveAll(fsDir)
	fsRate, fsPeak, _ := s3BenchCollect(b, agents, size, src, fmt.Sprintf("store:\n  type: fs\n  dir: %s\n", fsDir), func(*custodyv1.ArtifactStatus) {
		os.RemoveAll(fsDir)
	})
	srv0 = cpuSeconds(server)
	s3Rate, s3Peak, s3CPU := s3BenchCollect(b, agents, size, src,
		fmt.Sprintf("store:\n  type: s3\n  bucket: %s\n  prefix: evidence\n  endpoint: %s\n  path_style: true\n", bucket, srv.Endpoint),
		func(a *custodyv1.ArtifactStatus) {
			client.DeleteObject(ctx, &s3api.DeleteObjectInput{Bucket: &bucket, Key: aws.String("evidence/" + a.GetKey())})
		})
	serverCPU := cpuSeconds(server) - srv0
	ceiling = min(ceiling, putObjects())
	ceilingRate := total / s3BenchMiB / ceiling.Seconds()
	mpCeiling = min(mpCeiling, multipart())
	mpRate := total / s3BenchMiB / mpCeiling.Seconds()

	b.ReportMetric(s3Rate, "MiB/s")
	b.ReportMetric(ceilingRate, "putobject_MiB/s")
	b.ReportMetric(s3Rate/ceilingRate, "x_of_putobject")
	b.ReportMetric(mpRate, "sdk_multipart_MiB/s")
	b.ReportMetric(mpRate/ceilingRate, "sdk_multipart_x_of_putobject")
	b.ReportMetric(s3Rate/mpRate, "x_of_sdk_multipart")
	b.ReportMetric(fsRate, "fs_MiB/s")
	b.ReportMetric(s3Rate/fsRate, "x_of_fs")
	b.ReportMetric(s3Peak, "collector_peak_MiB")
	gib := total / (1 << 30)        // one PutObject round
	ingestGiB := gib * float64(b.N) // b.N collections
	b.ReportMetric(putCPU/gib, "putobject_cpu_s/GiB")
	b.ReportMetric(s3CPU.agents/ingestGiB, "agents_cpu_s/GiB")
	b.ReportMetric(s3CPU.collector/ingestGiB, "collector_cpu_s/GiB")
	b.ReportMetric(serverCPU/ingestGiB, "server_cpu_s/GiB")
	b.Logf("CPU seconds per GiB: PutObject (SDK + server) %.2f | S3 ingest: agents %.2f + collector %.2f + server %.2f = %.2f",
		putCPU/gib, s3CPU.agents/ingestGiB, s3CPU.collector/ingestGiB, serverCPU/ingestGiB, (s3CPU.agents+s3CPU.collector+serverCPU)/ingestGiB)
	b.Logf("%d agent(s) × %d MiB: to S3 %.0f MiB/s, collector peak RSS %.0f MiB | plain PutObject %.0f MiB/s (S3 ingest %.2fx of it) | "+
		"SDK multipart alone %.0f MiB/s (%.2fx of PutObject; S3 ingest %.2fx of it) | to fs on the same tmpfs %.0f MiB/s, peak RSS %.0f MiB (S3 ingest %.2fx of it)",
		agents, size/s3BenchMiB, s3Rate, s3Peak, ceilingRate, s3Rate/ceilingRate, mpRate, mpRate/ceilingRate, s3Rate/mpRate, fsRate, fsPeak, s3Rate/fsRate)
}

// benchCPU is the CPU seconds agents and collector spent.
type benchCPU struct{ agents, collector float64 }

// s3BenchCollect runs b.N collections of src on agents agents against a
// collector whose configuration file is storeYAML, and returns the rate in
// MiB/s, the collector's peak RSS in MiB and the CPU time of the agents and
// the collector. clean is called on every stored artifact between
// iterations.
func s3BenchCollect(b *testing.B, agents int, size int64, src, storeYAML string, clean func(*custodyv1.ArtifactStatus)) (float64, float64, benchCPU) {
	ctx := b.Context()
	c := e2e.NewCluster(b, bin)
	config := filepath.Join(c.Dir, "collector.yaml")
	if err := os.WriteFile(config, []byte(storeYAML), 0o600); err != nil {
		b.Fatal(err)
	}
	ready := filepath.Join(c.Dir, "collector.addr")
	collector := c.Start("collector", bin.Collector, "serve", "--config", config, "--data-dir", c.DataDir,
		"--listen", "127.0.0.1:0", "--ready-file", ready)
	if err := e2e.Poll(ctx, e2e.Deadline, 20*time.Millisecond, func() (bool, error) {
		bs, err := os.ReadFile(ready)
		if err == nil && bytes.HasSuffix(bs, []byte("\n")) {
			c.Addr = strings.TrimSpace(string(bs))
			return true, nil
		}
		select {
		case <-collector.Done():
			return false, fmt.Errorf("collector exited: %v\n%s", collector.Err(), collector.Logs())
		default:
			return false, nil
		}
	}); err != nil {
		b.Fatal(err)
	}
	token := c.Token(agents)
	var procs []*e2e.Proc
	for i := range agents {
		procs = append(procs, c.StartAgent(fmt.Sprintf("agent-%d", i), token))
	}
	responder := s3BenchResponder(b, c)
	var ids []string
	if err := e2e.Poll(ctx, e2e.Deadline, 100*time.Millisecond, func() (bool, error) {
		resp, err := responder.ListAgents(ctx, &custodyv1.ListAgentsRequest{})
		if err != nil {
			return false, nil
		}
		ids = ids[:0]
		for _, a := range resp.GetAgents() {
			if a.GetConnected() {
				ids = append(ids, a.GetAgentId())
			}
		}
		return len(ids) == agents, nil
	}); err != nil {
		b.Fatalf("%d of %d agents connected: %v", len(ids), agents, err)
	}

	var took time.Duration
	for n := 0; n < b.N; n++ {
		start := time.Now()
		resp, err := responder.CreateCollection(ctx, &custodyv1.CreateCollectionRequest{
			AgentIds: ids, CaseId: "BENCH", Reason: "make bench",
			Artifacts: []*custodyv1.ArtifactSpec{{Name: "file", Params: map[string]string{"path": src}}},
		})
		if err != nil {
			b.Fatal(err)
		}
		var done []*custodyv1.Collection
		for _, col := range resp.GetCollections() {
			id := col.GetCollectionId()
			if err := e2e.Poll(ctx, 10*time.Minute, 50*time.Millisecond, func() (bool, error) {
				got, err := responder.GetCollection(ctx, &custodyv1.GetCollectionRequest{CollectionId: id})
				if err != nil {
					return false, err
				}
				col = got.GetCollection()
				return e2e.Final(col.GetState()), nil
			}); err != nil {
				b.Fatal(err)
			}
			if col.GetState() != custodyv1.CollectionState_COLLECTION_STATE_COMPLETE || col.GetArtifacts()[0].GetRawSize() != size {
				b.Fatalf("collection %s: %v\n%s", id, col, collector.Logs())
			}
			done = append(done, col)
		}
		took += time.Since(start)
		for _, col := range done {
			for _, a := range col.GetArtifacts() {
				clean(a)
			}
		}
	}
	peak, err := collector.PeakRSS()
	if err != nil {
		b.Fatal(err)
	}
	cpu := benchCPU{collector: cpuSeconds(collector.Pid())}
	for _, p := range procs {
		cpu.agents += cpuSeconds(p.Pid())
		p.Stop()
	}
	collector.Stop()
	return float64(size) * float64(agents) * float64(b.N) / s3BenchMiB / took.Seconds(), float64(peak) / s3BenchMiB, cpu
}

func s3BenchResponder(b *testing.B, c *e2e.Cluster) custodyv1.ResponderServiceClient {
	b.Helper()
	roots, err := pki.ReadCertPool(c.CA)
	if err != nil {
		b.Fatal(err)
	}
	cert, err := tls.LoadX509KeyPair(c.Cert, c.Key)
	if err != nil {
		b.Fatal(err)
	}
	cc, err := grpc.NewClient(c.Addr, grpc.WithTransportCredentials(credentials.NewTLS(pki.ClientTLSConfig(roots, "127.0.0.1", pki.NewKeypair(cert)))))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { cc.Close() })
	return custodyv1.NewResponderServiceClient(cc)
}

// sdkMultipart uploads size bytes of src to key as the SDK's plain
// multipart upload: 8 MiB parts (the collector's default), 8 in flight.
func sdkMultipart(ctx context.Context, client *s3api.Client, bucket, key, src string, size int64) error {
	f, err := os.Open(src)
	if err != nil {
		return err
	}
	defer f.Close()
	up, err := client.CreateMultipartUpload(ctx, &s3api.CreateMultipartUploadInput{Bucket: &bucket, Key: &key})
	if err != nil {
		return err
	}
	const partSize, inFlight = 8 << 20, 8
	n := int((size + partSize - 1) / partSize)
	parts := make([]types.CompletedPart, n)
	errs := make([]error, n)
	sem := make(chan struct{}, inFlight)
	var wg sync.WaitGroup
	for i := range n {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			off := int64(i) * partSize
			l := min(partSize, size-off)
			out, err := client.UploadPart(ctx, &s3api.UploadPartInput{Bucket: &bucket, Key: &key, UploadId: up.UploadId,
				PartNumber: aws.Int32(int32(i + 1)), Body: io.NewSectionReader(f, off, l), ContentLength: aws.Int64(l)})
			if err != nil {
				errs[i] = err
				return
			}
			parts[i] = types.CompletedPart{PartNumber: aws.Int32(int32(i + 1)), ETag: out.ETag, ChecksumCRC32: out.ChecksumCRC32}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		client.AbortMultipartUpload(ctx, &s3api.AbortMultipartUploadInput{Bucket: &bucket, Key: &key, UploadId: up.UploadId})
		return err
	}
	_, err = client.CompleteMultipartUpload(ctx, &s3api.CompleteMultipartUploadInput{Bucket: &bucket, Key: &key, UploadId: up.UploadId,
		MultipartUpload: &types.CompletedMultipartUpload{Parts: parts}})
	return err
}
