package service_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"sync"
	"testing"
	"time"

	"github.com/custodyhq/custody/agent/upload"
	"github.com/custodyhq/custody/internal/pki"
	custodyv1 "github.com/custodyhq/custody/proto/custody/v1"
)

// loadAgents is how many simulated agents the load test holds: the issue's
// figure for one collector.
const loadAgents = 500

// TestLoadFanOut holds 500 agent sessions on one collector (each agent its
// own TLS connection and certificate), fans one collection out to all of
// them and has each upload a small artifact: every collection must
// complete. It reports the time from the request to the last agent
// starting, and to the last collection sealed.
func TestLoadFanOut(t *testing.T) {
	if testing.Short() {
		t.Skip("load test in -short mode")
	}
	e := newEnv(t)
	tok, _, err := e.db.CreateToken(context.Background(), loadAgents, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	anon := custodyv1.NewAgentServiceClient(e.dial(nil))
	type simAgent struct {
		id     string
		client custodyv1.AgentServiceClient
	}
	agents := make([]simAgent, loadAgents)
	for i := range agents {
		key, _ := pki.GenerateKey()
		csr, _ := pki.CreateCSR(key)
		resp, err := anon.Enroll(ctx(t), &custodyv1.EnrollRequest{JoinToken: tok, Csr: csr, Host: &custodyv1.HostFacts{Hostname: fmt.Sprintf("sim-%03d", i)}})
		if err != nil {
			t.Fatalf("enrol %d: %v", i, err)
		}
		cert := tlsCert(t, resp.GetCertificate(), key)
		agents[i] = simAgent{id: resp.GetAgentId(), client: custodyv1.NewAgentServiceClient(e.dial(&cert))}
	}

	// Generous: under -race on a loaded 2-core CI machine, sealing 500
	// collections (two fsynced files and a transaction each) takes a while.
	lctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	var ready, started, done sync.WaitGroup
	ready.Add(loadAgents)
	started.Add(loadAgents)
	done.Add(loadAgents)
	errs := make(chan error, loadAgents)
	for i, a := range agents {
		go func() {
			defer done.Done()
			s, err := a.client.Session(lctx)
			if err == nil {
				err = s.Send(&custodyv1.SessionRequest{Msg: &custodyv1.SessionRequest_Hello{Hello: &custodyv1.Hello{
					Host: &custodyv1.HostFacts{Hostname: fmt.Sprintf("sim-%03d", i)}, Artifacts: []string{"host"}}}})
			}
			var m *custodyv1.SessionResponse
			if err == nil {
				m, err = s.Recv() // welcome
			}
			ready.Done()
			if err == nil {
				m, err = s.Recv() // the task
			}
			started.Done()
			if err != nil {
				errs <- fmt.Errorf("agent %d: %v", i, err)
				return
			}
			task := m.GetTask()
			up, err := upload.Start(lctx, a.client, upload.Options{TaskID: task.GetTaskId(), Artifact: "host", Extension: "json", ExpectedSize: -1})
			if err == nil {
				_, err = io.WriteString(up, fmt.Sprintf(`{"hostname":"sim-%03d"}`, i))
			}
			if err == nil {
				_, err = up.Close(upload.Trailer{Source: "simulated"})
			}
			if err != nil {
				errs <- fmt.Errorf("agent %d upload: %v", i, err)
			}
		}()
	}
	ready.Wait()

	ids := make([]string, len(agents))
	for i, a := range agents {
		ids[i] = a.id
	}
	r := e.responder("alice")
	t0 := time.Now()
	resp, err := r.CreateCollection(lctx, &custodyv1.CreateCollectionRequest{AgentIds: ids, CaseId: "LOAD-1",
		Artifacts: []*custodyv1.ArtifactSpec{{Name: "host"}}})
	if err != nil {
		t.Fatal(err)
	}
	started.Wait()
	fanOut := time.Since(t0)
	for _, col := range resp.GetCollections() {
		final := waitFinalCtx(t, lctx, r, col.GetCollectionId())
		if final.GetState() != custodyv1.CollectionState_COLLECTION_STATE_COMPLETE {
			t.Fatalf("collection %s on %s: %s", col.GetCollectionId(), col.GetAgentId(), final.GetState())
		}
	}
	sealed := time.Since(t0)
	cancel()
	done.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	t.Logf("%d agents: request to last task start %s, to last collection sealed %s", loadAgents, fanOut.Round(time.Millisecond), sealed.Round(time.Millisecond))
	_ = tls.VersionTLS13
}
