package service

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/custodyhq/custody/collector/state"
	"github.com/custodyhq/custody/internal/pki"
	custodyv1 "github.com/custodyhq/custody/proto/custody/v1"
)

// Enroll trades a join token and a CSR for a short-lived agent certificate.
func (s *Server) Enroll(ctx context.Context, req *custodyv1.EnrollRequest) (*custodyv1.EnrollResponse, error) {
	if req.GetJoinToken() == "" {
		return nil, toStatus(fmt.Errorf("%w: enrol: no join token", ErrInvalid))
	}
	// Check the CSR before spending a token on it.
	csr, err := x509.ParseCertificateRequest(req.GetCsr())
	if err == nil {
		err = csr.CheckSignature()
	}
	if err != nil {
		return nil, toStatus(fmt.Errorf("%w: enrol: %v", pki.ErrBadCSR, err))
	}
	if err := s.db.RedeemToken(ctx, req.GetJoinToken()); err != nil {
		s.log.Warn("enrolment refused", "err", err, "hostname", req.GetHost().GetHostname())
		return nil, toStatus(err)
	}
	now := s.now()
	id, err := pki.NewIdentity(pki.RoleAgent, newID("a", now))
	if err != nil {
		return nil, toStatus(err)
	}
	cert, certPEM, err := s.cfg.CA.SignCSR(req.GetCsr(), id, s.cfg.AgentCertValidity)
	if err != nil {
		return nil, toStatus(err)
	}
	a := state.Agent{
		ID: id.Name, Host: hostFromProto(req.GetHost()), EnrolledAt: now, LastSeen: now,
		CertFingerprint: pki.Fingerprint(cert), CertNotAfter: cert.NotAfter,
	}
	if err := s.db.CreateAgent(ctx, a); err != nil {
		return nil, toStatus(err)
	}
	s.log.Info("agent enrolled", "agent", id.Name, "hostname", a.Host.Hostname, "not_after", cert.NotAfter)
	return &custodyv1.EnrollResponse{AgentId: id.Name, Certificate: certPEM, CaBundle: s.cfg.CA.CertPEM}, nil
}

// Renew issues a fresh certificate for the caller's own identity.
func (s *Server) Renew(ctx context.Context, req *custodyv1.RenewRequest) (*custodyv1.RenewResponse, error) {
	c, _ := callerFrom(ctx)
	if _, err := s.activeAgent(ctx, c); err != nil {
		return nil, toStatus(fmt.Errorf("renew: %w", err))
	}
	cert, certPEM, err := s.cfg.CA.SignCSR(req.GetCsr(), c.id, s.cfg.AgentCertValidity)
	if err != nil {
		return nil, toStatus(err)
	}
	if _, err := s.db.UpdateAgent(ctx, c.id.Name, func(a *state.Agent) {
		a.CertFingerprint, a.CertNotAfter = pki.Fingerprint(cert), cert.NotAfter
	}); err != nil {
		return nil, toStatus(err)
	}
	s.log.Info("agent certificate renewed", "agent", c.id.Name, "not_after", cert.NotAfter)
	return &custodyv1.RenewResponse{Certificate: certPEM, CaBundle: s.cfg.CA.CertPEM}, nil
}

// Session holds an agent's long-lived stream: its hello, heartbeats and
// task updates come up; tasks go down the moment they are created.
func (s *Server) Session(stream custodyv1.AgentService_SessionServer) error {
	ctx := stream.Context()
	c, _ := callerFrom(ctx)
	agentID := c.id.Name
	log := s.log.With("agent", agentID)

	first, err := recvWithin(ctx, stream.Recv, 30*time.Second)
	if err != nil {
		return toStatus(fmt.Errorf("%w: session: waiting for hello: %v", ErrInvalid, err))
	}
	hello := first.GetHello()
	if hello == nil {
		return toStatus(fmt.Errorf("%w: session: first message must be a hello", ErrInvalid))
	}
	if err := s.recordHello(ctx, c, hello); err != nil {
		return toStatus(err)
	}
	live := s.hub.attach(agentID)
	defer s.hub.detach(agentID, live)
	// Checked once attached: a revocation either sees this session and
	// ends it, or committed before this read and is seen here.
	if _, err := s.activeAgent(ctx, c); err != nil {
		return toStatus(fmt.Errorf("session: %w", err))
	}
	log.Info("agent connected", "hostname", hello.GetHost().GetHostname(), "version", hello.GetAgentVersion())

	if err := stream.Send(&custodyv1.SessionResponse{Msg: &custodyv1.SessionResponse_Welcome{Welcome: &custodyv1.Welcome{
		AgentId: agentID, HeartbeatInterval: durationpb.New(s.cfg.HeartbeatInterval),
	}}}); err != nil {
		return err
	}

	// A session that ends leaves its tasks running: uploads checkpoint as
	// they go, and the agent's next hello gets the task again and resumes.
	// Only the task's deadline fails a task whose agent never returns.
	defer log.Info("agent disconnected")

	pending, err := s.db.UnfinishedCollections(ctx, agentID)
	if err != nil {
		return toStatus(err)
	}
	deliver := func(t *custodyv1.Task) error {
		col, err := s.db.GetCollection(ctx, t.GetTaskId())
		if err != nil || state.Final(col.State) {
			return nil // gone or final: nothing to send
		}
		if s.now().After(col.Deadline) {
			return nil // the deadline sweep fails it
		}
		if col.State == state.Pending {
			if col, err = s.db.UpdateCollection(ctx, t.GetTaskId(), func(col *state.Collection) error {
				if col.State != state.Pending {
					return fmt.Errorf("%w: already %s", ErrConflict, col.State)
				}
				col.State, col.StartedAt = state.Running, s.now()
				return nil
			}); err != nil {
				return nil
			}
			s.hub.changed(col.ID)
		}
		if err := stream.Send(&custodyv1.SessionResponse{Msg: &custodyv1.SessionResponse_Task{Task: t}}); err != nil {
			return err
		}
		log.Info("task delivered", "collection", col.ID, "case", col.CaseID)
		return nil
	}
	// Pending tasks, and running ones a previous session was executing:
	// the agent resumes those (artifacts already stored are skipped).
	for _, col := range pending {
		if err := deliver(taskFor(col)); err != nil {
			return err
		}
	}

	recvErr := make(chan error, 1)
	go func() { recvErr <- s.sessionRecv(ctx, agentID, stream) }()

	for {
		select {
		case t := <-live.tasks:
			if err := deliver(t); err != nil {
				return err
			}
		case err := <-recvErr:
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		case <-live.done:
			if live.why != nil {
				return toStatus(live.why)
			}
			return toStatus(fmt.Errorf("%w: session replaced by a newer one from the same agent", ErrConflict))
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// activeAgent returns the calling agent's record; an identity that is not
// enrolled here, or was revoked, is refused whatever its certificate says.
func (s *Server) activeAgent(ctx context.Context, c caller) (state.Agent, error) {
	a, err := s.db.GetAgent(ctx, c.id.Name)
	if err != nil {
		return a, fmt.Errorf("%w: agent %s is not enrolled here: %v", ErrForbidden, c.id.Name, err)
	}
	if a.Revoked() {
		return a, fmt.Errorf("%w: agent %s was revoked at %s by %s: %s", ErrForbidden, a.ID,
			a.RevokedAt.UTC().Format(time.RFC3339), a.RevokedBy, a.RevokeReason)
	}
	return a, nil
}

func (s *Server) recordHello(ctx context.Context, c caller, h *custodyv1.Hello) error {
	now := s.now()
	update := func(a *state.Agent) {
		a.Host, a.Artifacts, a.Version, a.LastSeen = hostFromProto(h.GetHost()), h.GetArtifacts(), h.GetAgentVersion(), now
		a.CertFingerprint, a.CertNotAfter = pki.Fingerprint(c.cert), c.cert.NotAfter
		a.Preflight = a.Preflight[:0]
		for _, p := range h.GetPreflight() {
			a.Preflight = append(a.Preflight, state.PreflightCheck{Name: p.GetName(), OK: p.GetOk(), Detail: p.GetDetail()})
		}
	}
	_, err := s.db.UpdateAgent(ctx, c.id.Name, update)
	if errors.Is(err, state.ErrNotFound) {
		// A certificate our CA issued is proof enough; the record may
		// predate a state reset.
		a := state.Agent{ID: c.id.Name, EnrolledAt: now}
		update(&a)
		err = s.db.CreateAgent(ctx, a)
	}
	return err
}

func (s *Server) sessionRecv(ctx context.Context, agentID string, stream custodyv1.AgentService_SessionServer) error {
	lastTouch := time.Time{}
	for {
		msg, err := stream.Recv()
		if err != nil {
			return err
		}
		switch m := msg.Msg.(type) {
		case *custodyv1.SessionRequest_Heartbeat:
			if now := s.now(); now.Sub(lastTouch) > time.Minute {
				lastTouch = now
				s.db.UpdateAgent(ctx, agentID, func(a *state.Agent) { a.LastSeen = now })
			}
		case *custodyv1.SessionRequest_TaskUpdate:
			s.applyTaskUpdate(ctx, agentID, m.TaskUpdate)
		default:
			s.log.Warn("unexpected session message", "agent", agentID, "type", fmt.Sprintf("%T", m))
		}
	}
}

// applyTaskUpdate records what the agent reports. Only failures and
// progress are taken from it: completion is established by the collector's
// own verification of the upload, never by the agent's word.
func (s *Server) applyTaskUpdate(ctx context.Context, agentID string, u *custodyv1.TaskUpdate) {
	col, err := s.db.UpdateCollection(ctx, u.GetTaskId(), func(col *state.Collection) error {
		if col.AgentID != agentID {
			return fmt.Errorf("%w: task %s is not addressed to agent %s", ErrForbidden, u.GetTaskId(), agentID)
		}
		a := col.Artifact(u.GetArtifact())
		if a == nil || state.Final(a.State) || state.Final(col.State) {
			return ErrConflict
		}
		switch u.GetState() {
		case custodyv1.ArtifactState_ARTIFACT_STATE_FAILED:
			a.State, a.Error = state.Failed, "agent: "+u.GetError()
		case custodyv1.ArtifactState_ARTIFACT_STATE_RUNNING:
			a.State = state.Running
			if u.GetBytesTotal() > 0 {
				a.BytesTotal = u.GetBytesTotal()
			}
		default:
			return ErrConflict
		}
		return nil
	})
	if err != nil {
		if !errors.Is(err, ErrConflict) {
			s.log.Warn("task update refused", "agent", agentID, "task", u.GetTaskId(), "err", err)
		}
		return
	}
	s.hub.changed(col.ID)
	bg, cancel := background()
	defer cancel()
	s.maybeSeal(bg, col.ID)
}

// failUnfinished marks every artifact of a collection that has not reached
// a final state as failed, then seals what is there.
func (s *Server) failUnfinished(ctx context.Context, id, reason string) {
	_, err := s.db.UpdateCollection(ctx, id, func(col *state.Collection) error {
		if state.Final(col.State) {
			return ErrConflict
		}
		for i := range col.Artifacts {
			if a := &col.Artifacts[i]; !state.Final(a.State) {
				a.State, a.Error = state.Failed, reason
			}
		}
		return nil
	})
	if err == nil {
		s.hub.changed(id)
		s.maybeSeal(ctx, id)
	}
}

// setArtifact updates one artifact of a running collection.
func (s *Server) setArtifact(ctx context.Context, id, name string, fn func(*state.Artifact)) error {
	_, err := s.db.UpdateCollection(ctx, id, func(col *state.Collection) error {
		a := col.Artifact(name)
		if a == nil {
			return fmt.Errorf("%w: no artifact %s in %s", ErrInvalid, name, id)
		}
		if state.Final(col.State) || state.Final(a.State) {
			return fmt.Errorf("%w: artifact %s of %s is %s (collection %s)", ErrConflict, name, id, a.State, col.State)
		}
		fn(a)
		return nil
	})
	if err == nil {
		s.hub.changed(id)
	}
	return err
}

func (s *Server) failArtifact(ctx context.Context, id, name, reason string) {
	if s.setArtifact(ctx, id, name, func(a *state.Artifact) { a.State, a.Error = state.Failed, reason }) == nil {
		s.maybeSeal(ctx, id)
	}
}

// recvWithin receives one message or fails after d.
func recvWithin[T any](ctx context.Context, recv func() (T, error), d time.Duration) (T, error) {
	type result struct {
		v   T
		err error
	}
	ch := make(chan result, 1)
	go func() { v, err := recv(); ch <- result{v, err} }()
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case r := <-ch:
		return r.v, r.err
	case <-t.C:
		var zero T
		return zero, fmt.Errorf("nothing received within %s", d)
	case <-ctx.Done():
		var zero T
		return zero, ctx.Err()
	}
}

func taskFor(col state.Collection) *custodyv1.Task {
	t := &custodyv1.Task{TaskId: col.ID, CollectionId: col.ID, CaseId: col.CaseID, Deadline: timestamppb.New(col.Deadline)}
	for _, a := range col.Artifacts {
		t.Artifacts = append(t.Artifacts, &custodyv1.ArtifactRequest{Name: a.Name, Params: a.Params})
	}
	return t
}

func hostFromProto(h *custodyv1.HostFacts) state.HostFacts {
	return state.HostFacts{Hostname: h.GetHostname(), OS: h.GetOs(), Kernel: h.GetKernel(), Arch: h.GetArch(),
		BootID: h.GetBootId(), InstanceID: h.GetInstanceId(), TaskARN: h.GetTaskArn()}
}
