package service

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/custodyhq/custody/collector/state"
	"github.com/custodyhq/custody/collector/store"
	custodyv1 "github.com/custodyhq/custody/proto/custody/v1"
)

// ListAgents lists every enrolled agent and whether it is connected now.
func (s *Server) ListAgents(ctx context.Context, _ *custodyv1.ListAgentsRequest) (*custodyv1.ListAgentsResponse, error) {
	agents, err := s.db.ListAgents(ctx)
	if err != nil {
		return nil, toStatus(err)
	}
	resp := &custodyv1.ListAgentsResponse{}
	for _, a := range agents {
		resp.Agents = append(resp.Agents, s.agentProto(a))
	}
	return resp, nil
}

// GetAgent returns one agent.
func (s *Server) GetAgent(ctx context.Context, req *custodyv1.GetAgentRequest) (*custodyv1.GetAgentResponse, error) {
	a, err := s.db.GetAgent(ctx, req.GetAgentId())
	if err != nil {
		return nil, toStatus(err)
	}
	return &custodyv1.GetAgentResponse{Agent: s.agentProto(a)}, nil
}

// RevokeAgent ends an agent identity before its certificate expires.
func (s *Server) RevokeAgent(ctx context.Context, req *custodyv1.RevokeAgentRequest) (*custodyv1.RevokeAgentResponse, error) {
	c, _ := callerFrom(ctx)
	reason := strings.TrimSpace(req.GetReason())
	if reason == "" {
		return nil, toStatus(fmt.Errorf("%w: a revocation needs a reason (it is recorded)", ErrInvalid))
	}
	now := s.now()
	a, err := s.db.UpdateAgent(ctx, req.GetAgentId(), func(a *state.Agent) {
		if a.Revoked() {
			return // the first revocation stands
		}
		a.RevokedAt, a.RevokedBy, a.RevokeReason = now, c.id.String(), reason
	})
	if err != nil {
		return nil, toStatus(err)
	}
	why := fmt.Errorf("%w: agent %s was revoked by %s: %s", ErrForbidden, a.ID, a.RevokedBy, a.RevokeReason)
	s.hub.end(a.ID, why)
	if cols, err := s.db.UnfinishedCollections(ctx, a.ID); err == nil {
		for _, col := range cols {
			s.failUnfinished(ctx, col.ID, "agent revoked by "+a.RevokedBy+": "+a.RevokeReason)
		}
	}
	s.log.Warn("agent revoked", "agent", a.ID, "by", a.RevokedBy, "reason", a.RevokeReason)
	return &custodyv1.RevokeAgentResponse{Agent: s.agentProto(a)}, nil
}

// CreateCollection records a request for evidence from one agent, or from
// many at once (agent_ids: one collection each), and pushes each task to its
// agent at once if it is connected; otherwise the task waits for the agent's
// next hello, until its deadline.
func (s *Server) CreateCollection(ctx context.Context, req *custodyv1.CreateCollectionRequest) (*custodyv1.CreateCollectionResponse, error) {
	c, _ := callerFrom(ctx)
	ids := req.GetAgentIds()
	switch {
	case req.GetAgentId() != "" && len(ids) > 0:
		return nil, toStatus(fmt.Errorf("%w: give agent_id or agent_ids, not both", ErrInvalid))
	case req.GetAgentId() != "":
		ids = []string{req.GetAgentId()}
	case len(ids) == 0:
		return nil, toStatus(fmt.Errorf("%w: no agent given", ErrInvalid))
	}
	if _, err := store.Key(req.GetCaseId(), "x", "x", "x"); err != nil || req.GetCaseId() == "" {
		return nil, toStatus(fmt.Errorf("%w: case id %q: letters, digits, '.', '_' and '-' only, at most 128", ErrInvalid, req.GetCaseId()))
	}
	if len(req.GetArtifacts()) == 0 {
		return nil, toStatus(fmt.Errorf("%w: no artifacts requested", ErrInvalid))
	}
	now := s.now()
	cols := make([]state.Collection, 0, len(ids))
	seenAgent := map[string]bool{}
	for _, id := range ids {
		if seenAgent[id] {
			return nil, toStatus(fmt.Errorf("%w: agent %s listed twice", ErrInvalid, id))
		}
		seenAgent[id] = true
		agent, err := s.db.GetAgent(ctx, id)
		if err != nil {
			return nil, toStatus(err)
		}
		if agent.Revoked() {
			return nil, toStatus(fmt.Errorf("%w: agent %s was revoked at %s: %s", ErrConflict, agent.ID, agent.RevokedAt.UTC().Format(time.RFC3339), agent.RevokeReason))
		}
		col := state.Collection{
			ID: newID("c", now), AgentID: agent.ID, CaseID: req.GetCaseId(), Reason: req.GetReason(),
			RequestedBy: c.id.String(), State: state.Pending, RequestedAt: now, Deadline: now.Add(s.cfg.TaskTTL),
		}
		if s.hub.connected(agent.ID) {
			// Pushed in a moment; should the push miss, a running task is
			// delivered again on the agent's next hello anyway. Recording
			// it here spares one transaction per agent on the fan-out path.
			col.State, col.StartedAt = state.Running, now
		}
		seen := map[string]bool{}
		for _, spec := range req.GetArtifacts() {
			name := spec.GetName()
			if seen[name] {
				return nil, toStatus(fmt.Errorf("%w: artifact %q requested twice", ErrInvalid, name))
			}
			seen[name] = true
			if len(agent.Artifacts) > 0 && !slices.Contains(agent.Artifacts, name) {
				return nil, toStatus(fmt.Errorf("%w: agent %s cannot capture %q (it offers %s)", ErrInvalid, agent.ID, name, strings.Join(agent.Artifacts, ", ")))
			}
			col.Artifacts = append(col.Artifacts, state.Artifact{Name: name, Params: spec.GetParams(), State: state.Pending, BytesTotal: -1})
		}
		cols = append(cols, col)
	}
	// One transaction for the whole fan-out: one fsync, not one per agent.
	if err := s.db.CreateCollections(ctx, cols); err != nil {
		return nil, toStatus(err)
	}
	resp := &custodyv1.CreateCollectionResponse{}
	for _, col := range cols {
		s.log.Info("collection requested", "collection", col.ID, "agent", col.AgentID, "case", col.CaseID, "by", col.RequestedBy, "artifacts", len(col.Artifacts))
		s.hub.push(col.AgentID, taskFor(col))
		resp.Collections = append(resp.Collections, collectionProto(col))
	}
	resp.Collection = resp.Collections[0]
	return resp, nil
}

// GetCollection returns a collection's current state.
func (s *Server) GetCollection(ctx context.Context, req *custodyv1.GetCollectionRequest) (*custodyv1.GetCollectionResponse, error) {
	col, err := s.db.GetCollection(ctx, req.GetCollectionId())
	if err != nil {
		return nil, toStatus(err)
	}
	return &custodyv1.GetCollectionResponse{Collection: collectionProto(col)}, nil
}

// WatchCollection streams the collection on every change until it is final.
func (s *Server) WatchCollection(req *custodyv1.WatchCollectionRequest, stream custodyv1.ResponderService_WatchCollectionServer) error {
	ctx := stream.Context()
	for {
		// Subscribe before reading, so a change in between is not missed.
		changed := s.hub.watch(req.GetCollectionId())
		col, err := s.db.GetCollection(ctx, req.GetCollectionId())
		if err != nil {
			return toStatus(err)
		}
		if err := stream.Send(&custodyv1.WatchCollectionResponse{Collection: collectionProto(col)}); err != nil {
			return err
		}
		if state.Final(col.State) {
			return nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return toStatus(ctx.Err())
		}
	}
}

// ListEvidence lists the stored objects of a collection.
func (s *Server) ListEvidence(ctx context.Context, req *custodyv1.ListEvidenceRequest) (*custodyv1.ListEvidenceResponse, error) {
	prefix, err := s.collectionPrefix(ctx, req.GetCollectionId())
	if err != nil {
		return nil, toStatus(err)
	}
	infos, err := s.store.List(ctx, prefix)
	if err != nil {
		return nil, toStatus(err)
	}
	resp := &custodyv1.ListEvidenceResponse{}
	for _, in := range infos {
		resp.Objects = append(resp.Objects, &custodyv1.EvidenceObject{Key: in.Key, Size: in.Size, Sha256: in.SHA256, Location: in.Location})
	}
	return resp, nil
}

// ReadEvidence streams one stored object of a collection, byte for byte.
func (s *Server) ReadEvidence(req *custodyv1.ReadEvidenceRequest, stream custodyv1.ResponderService_ReadEvidenceServer) error {
	ctx := stream.Context()
	prefix, err := s.collectionPrefix(ctx, req.GetCollectionId())
	if err != nil {
		return toStatus(err)
	}
	if !strings.HasPrefix(req.GetKey(), prefix+"/") {
		return toStatus(fmt.Errorf("%w: key %q is not part of collection %s", ErrInvalid, req.GetKey(), req.GetCollectionId()))
	}
	r, err := s.store.Open(ctx, req.GetKey())
	if err != nil {
		return toStatus(err)
	}
	defer r.Close()
	buf := make([]byte, 1<<20)
	for {
		n, err := r.Read(buf)
		if n > 0 {
			if err := stream.Send(&custodyv1.ReadEvidenceResponse{Data: buf[:n]}); err != nil {
				return err
			}
		}
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return toStatus(err)
		}
	}
}

func (s *Server) collectionPrefix(ctx context.Context, id string) (string, error) {
	col, err := s.db.GetCollection(ctx, id)
	if err != nil {
		return "", err
	}
	return col.CaseID + "/" + col.AgentID + "/" + col.ID, nil
}

func (s *Server) agentProto(a state.Agent) *custodyv1.Agent {
	var checks []*custodyv1.PreflightCheck
	for _, p := range a.Preflight {
		checks = append(checks, &custodyv1.PreflightCheck{Name: p.Name, Ok: p.OK, Detail: p.Detail})
	}
	return &custodyv1.Agent{
		Preflight: checks,
		AgentId:   a.ID,
		Host: &custodyv1.HostFacts{Hostname: a.Host.Hostname, Os: a.Host.OS, Kernel: a.Host.Kernel, Arch: a.Host.Arch,
			BootId: a.Host.BootID, InstanceId: a.Host.InstanceID, TaskArn: a.Host.TaskARN},
		Artifacts: a.Artifacts, AgentVersion: a.Version, Connected: s.hub.connected(a.ID),
		EnrolledAt: ts(a.EnrolledAt), LastSeen: ts(a.LastSeen), CertFingerprint: a.CertFingerprint, CertNotAfter: ts(a.CertNotAfter),
		RevokedAt: ts(a.RevokedAt), RevokedBy: a.RevokedBy, RevokeReason: a.RevokeReason,
	}
}

var collectionStates = map[string]custodyv1.CollectionState{
	state.Pending: custodyv1.CollectionState_COLLECTION_STATE_PENDING, state.Running: custodyv1.CollectionState_COLLECTION_STATE_RUNNING,
	state.Complete: custodyv1.CollectionState_COLLECTION_STATE_COMPLETE, state.Partial: custodyv1.CollectionState_COLLECTION_STATE_PARTIAL,
	state.Failed: custodyv1.CollectionState_COLLECTION_STATE_FAILED, state.Cancelled: custodyv1.CollectionState_COLLECTION_STATE_CANCELLED,
}

var artifactStates = map[string]custodyv1.ArtifactState{
	state.Pending: custodyv1.ArtifactState_ARTIFACT_STATE_PENDING, state.Running: custodyv1.ArtifactState_ARTIFACT_STATE_RUNNING,
	state.Complete: custodyv1.ArtifactState_ARTIFACT_STATE_COMPLETE, state.Failed: custodyv1.ArtifactState_ARTIFACT_STATE_FAILED,
}

func collectionProto(c state.Collection) *custodyv1.Collection {
	p := &custodyv1.Collection{
		CollectionId: c.ID, AgentId: c.AgentID, CaseId: c.CaseID, Reason: c.Reason, RequestedBy: c.RequestedBy,
		State: collectionStates[c.State], RequestedAt: ts(c.RequestedAt), StartedAt: ts(c.StartedAt), FinishedAt: ts(c.FinishedAt),
		Error: c.Error, ManifestKey: c.ManifestKey,
	}
	for _, a := range c.Artifacts {
		p.Artifacts = append(p.Artifacts, &custodyv1.ArtifactStatus{
			Name: a.Name, State: artifactStates[a.State], BytesDone: a.BytesDone, BytesTotal: a.BytesTotal, Error: a.Error,
			Key: a.Key, RawSize: a.RawSize, RawSha256: a.CollectorSHA256, StoredSize: a.StoredSize, StoredSha256: a.StoredSHA256,
		})
	}
	return p
}

func ts(t time.Time) *timestamppb.Timestamp {
	if t.IsZero() {
		return nil
	}
	return timestamppb.New(t)
}
