package bench

import (
	"context"
	"crypto/tls"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/custodyhq/custody/agent/upload"
	"github.com/custodyhq/custody/internal/pki"
	custodyv1 "github.com/custodyhq/custody/proto/custody/v1"
	"github.com/custodyhq/custody/scripts/e2e"
)

// BenchmarkResumeCuts1GiB: the same 1 GiB transfer, through the same TCP
// proxy, once uninterrupted and once with five connection cuts at random
// points; reports the interrupted/uninterrupted time ratio (target < 1.3).
func BenchmarkResumeCuts1GiB(b *testing.B) {
	const size = 1 << 30
	ctx := b.Context()
	c := e2e.NewCluster(b, bin)
	src := filepath.Join(c.Dir, "evidence.img")
	sum, err := e2e.WriteFile(src, size, 5, e2e.FillRandom, e2e.FillText, e2e.FillZeros)
	if err != nil {
		b.Fatal(err)
	}
	defer os.Remove(src)
	c.StartCollector("127.0.0.1:0")
	p := e2e.NewProxy(b, c.Addr)
	direct := c.Addr
	c.Addr = p.Addr
	c.StartAgent("agent", c.Token(1))
	c.Addr = direct
	agentID := c.WaitConnected(ctx, "")
	rng := rand.New(rand.NewPCG(5, 5))

	transfer := func(cuts int) time.Duration {
		start := time.Now()
		r := c.MustCtl(ctx, "collect", "--agent", agentID, "--artifacts", "file", "--path", src, "--case", "BENCH", "-o", "json")
		col, err := e2e.ParseCollection(r.Stdout)
		if err != nil {
			b.Fatal(err)
		}
		id := col.GetCollectionId()
		for i := 0; i < cuts; i++ {
			at := int64(float64(size) * (float64(i) + 0.2 + 0.6*rng.Float64()) / float64(cuts))
			// Each cut must hit a live upload: a cut of nothing costs
			// nothing.
			if i > 0 {
				if err := c.WaitUploadingThrough(ctx, p, id); err != nil {
					b.Fatal(err)
				}
			}
			if err := c.WaitBytesDone(ctx, id, at); err != nil {
				b.Fatal(err)
			}
			p.Cut()
		}
		if err := e2e.Poll(ctx, 10*time.Minute, 50*time.Millisecond, func() (bool, error) {
			col, err = c.Collection(ctx, id)
			return err == nil && e2e.Final(col.GetState()), nil
		}); err != nil {
			b.Fatal(err)
		}
		took := time.Since(start)
		if a := col.GetArtifacts()[0]; col.GetState() != custodyv1.CollectionState_COLLECTION_STATE_COMPLETE || a.GetRawSha256() != sum {
			b.Fatalf("collection %s, sha256 %s want %s", col.GetState(), a.GetRawSha256(), sum)
		}
		os.RemoveAll(c.CollectionDir("BENCH", agentID, id))
		return took
	}
	b.ResetTimer()
	clean := transfer(0)
	cut := transfer(5)
	b.StopTimer()
	b.ReportMetric(clean.Seconds(), "s_uninterrupted")
	b.ReportMetric(cut.Seconds(), "s_5_cuts")
	b.ReportMetric(cut.Seconds()/clean.Seconds(), "x_cut_vs_clean")
	b.Logf("1 GiB: uninterrupted %.2fs, with 5 connection cuts %.2fs (%.2fx); %d cuts made", clean.Seconds(), cut.Seconds(), cut.Seconds()/clean.Seconds(), p.Cuts())
}

// BenchmarkLoad500Agents holds 500 simulated agents (each its own key,
// certificate and TLS connection, enrolled with a join token) on the real
// collector binary, fans one collection out to all of them, and has 50 of
// them upload 64 MiB at once while the rest upload a small artifact.
// Reports fan-out time (request to the 500th agent starting; target < 2 s)
// and the collector's peak RSS (target < 512 MiB).
func BenchmarkLoad500Agents(b *testing.B) {
	const agents, big, bigSize = 500, 50, 64 << 20
	ctx, cancel := context.WithTimeout(b.Context(), 10*time.Minute)
	defer cancel()
	c := e2e.NewCluster(b, bin)
	collector := c.StartCollector("127.0.0.1:0")
	tokenFile := c.Token(agents)
	tok, err := os.ReadFile(tokenFile)
	if err != nil {
		b.Fatal(err)
	}
	roots, err := pki.ReadCertPool(c.CA)
	if err != nil {
		b.Fatal(err)
	}
	dial := func(keys *pki.Keypair) *grpc.ClientConn {
		cc, err := grpc.NewClient(c.Addr, grpc.WithTransportCredentials(credentials.NewTLS(pki.ClientTLSConfig(roots, "127.0.0.1", keys))))
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { cc.Close() })
		return cc
	}
	anon := custodyv1.NewAgentServiceClient(dial(nil))
	clients := make([]custodyv1.AgentServiceClient, agents)
	ids := make([]string, agents)
	for i := range clients {
		key, _ := pki.GenerateKey()
		csr, _ := pki.CreateCSR(key)
		resp, err := anon.Enroll(ctx, &custodyv1.EnrollRequest{JoinToken: string(tok[:len(tok)-1]), Csr: csr})
		if err != nil {
			b.Fatalf("enrol %d: %v", i, err)
		}
		certPEM := resp.GetCertificate()
		keyPEM, _ := pkcs8PEM(key)
		cert, err := tls.X509KeyPair(certPEM, keyPEM)
		if err != nil {
			b.Fatal(err)
		}
		clients[i], ids[i] = custodyv1.NewAgentServiceClient(dial(pki.NewKeypair(cert))), resp.GetAgentId()
	}
	var ready, started, done sync.WaitGroup
	ready.Add(agents)
	started.Add(agents)
	done.Add(agents)
	var startedAt sync.Map
	for i, cl := range clients {
		go func() {
			defer done.Done()
			s, err := cl.Session(ctx)
			if err == nil {
				err = s.Send(&custodyv1.SessionRequest{Msg: &custodyv1.SessionRequest_Hello{Hello: &custodyv1.Hello{Artifacts: []string{"file"}}}})
			}
			if err == nil {
				_, err = s.Recv()
			}
			ready.Done()
			var m *custodyv1.SessionResponse
			if err == nil {
				m, err = s.Recv()
			}
			startedAt.Store(i, time.Now())
			started.Done()
			if err != nil {
				b.Errorf("agent %d: %v", i, err)
				return
			}
			n := int64(4 << 10)
			if i < big {
				n = bigSize
			}
			up, err := upload.Start(ctx, cl, upload.Options{TaskID: m.GetTask().GetTaskId(), Artifact: "file", Extension: "bin", ExpectedSize: n, Bulk: true})
			if err == nil {
				_, err = io.Copy(up, io.LimitReader(rand.NewChaCha8([32]byte{byte(i)}), n))
			}
			if err == nil {
				_, err = up.Close(upload.Trailer{Source: "simulated"})
			}
			if err != nil {
				b.Errorf("agent %d upload: %v", i, err)
			}
		}()
	}
	ready.Wait()

	responderCert, err := tls.LoadX509KeyPair(c.Cert, c.Key)
	if err != nil {
		b.Fatal(err)
	}
	r := custodyv1.NewResponderServiceClient(dial(pki.NewKeypair(responderCert)))
	b.ResetTimer()
	t0 := time.Now()
	if _, err := r.CreateCollection(ctx, &custodyv1.CreateCollectionRequest{AgentIds: ids, CaseId: "LOAD",
		Artifacts: []*custodyv1.ArtifactSpec{{Name: "file"}}}); err != nil {
		b.Fatal(err)
	}
	started.Wait()
	var last time.Time
	startedAt.Range(func(_, v any) bool {
		if t := v.(time.Time); t.After(last) {
			last = t
		}
		return true
	})
	fanOut := last.Sub(t0)
	done.Wait()
	b.StopTimer()
	peak, err := collector.PeakRSS()
	if err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(fanOut.Seconds()*1000, "ms_fanout_500")
	b.ReportMetric(float64(peak)/mib, "collector_peak_MiB")
	b.Logf("%d agents connected: fan-out to the last agent starting %s; %d×%d MiB + %d small uploads done in %s; collector peak RSS %.0f MiB",
		agents, fanOut.Round(time.Millisecond), big, bigSize>>20, agents-big, time.Since(t0).Round(time.Millisecond), float64(peak)/mib)
}
