package service

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"time"

	"github.com/custodyhq/custody/collector/state"
	"github.com/custodyhq/custody/collector/store"
	"github.com/custodyhq/custody/internal/manifest"
	"github.com/custodyhq/custody/internal/pki"
)

// Manifest file names beside a collection's artifacts.
const (
	ManifestFile    = "manifest.json"
	SignatureFile   = "manifest.json.sig"
	manifestVersion = manifest.SchemaVersion
)

// maybeSeal finishes a collection once every artifact has reached a final
// state: it decides complete/partial/failed from the collector's own
// records, writes the signed manifest beside the artifacts, and only then
// records the final state, so a collection that says complete has one.
func (s *Server) maybeSeal(ctx context.Context, id string) {
	s.sealMu.Lock()
	defer s.sealMu.Unlock()
	col, err := s.db.GetCollection(ctx, id)
	if err != nil || state.Final(col.State) {
		return
	}
	complete := 0
	for _, a := range col.Artifacts {
		if !state.Final(a.State) {
			return
		}
		if a.State == state.Complete {
			complete++
		}
	}
	final := state.Failed
	switch complete {
	case len(col.Artifacts):
		final = state.Complete
	case 0:
	default:
		final = state.Partial
	}
	finished := s.now()
	key, err := s.writeManifest(ctx, col, final, finished)
	log := s.log.With("collection", id)
	if err != nil {
		log.Error("sealing manifest failed", "err", err)
		final = state.Failed
	}
	col, err2 := s.db.UpdateCollection(ctx, id, func(c *state.Collection) error {
		if state.Final(c.State) {
			return ErrConflict
		}
		c.State, c.FinishedAt, c.ManifestKey = final, finished, key
		if err != nil {
			c.Error = "sealing manifest: " + err.Error()
		}
		return nil
	})
	if err2 != nil {
		log.Error("recording sealed collection", "err", err2)
		return
	}
	s.hub.changed(id)
	log.Info("collection sealed", "state", final, "manifest", key)
}

func (s *Server) writeManifest(ctx context.Context, col state.Collection, final string, finished time.Time) (string, error) {
	m := s.manifestFor(col, final, finished)
	data, sig, err := manifest.Sign(m, s.cfg.SigningKey, s.cfg.SigningCertPEM)
	if err != nil {
		return "", err
	}
	key, err := store.Key(col.CaseID, col.AgentID, col.ID, ManifestFile)
	if err != nil {
		return "", err
	}
	sigKey, err := store.Key(col.CaseID, col.AgentID, col.ID, SignatureFile)
	if err != nil {
		return "", err
	}
	// The signature first: a manifest.json without its signature next to
	// it would look sealed to a careless reader.
	if err := s.put(ctx, sigKey, sig); err != nil {
		return "", err
	}
	if err := s.put(ctx, key, data); err != nil {
		return "", err
	}
	return key, nil
}

func (s *Server) put(ctx context.Context, key string, data []byte) error {
	w, err := s.store.Create(ctx, key, store.CreateOptions{ExpectedSize: int64(len(data))})
	if err != nil {
		return err
	}
	if _, err := bytes.NewReader(data).WriteTo(w); err != nil {
		w.Abort(ctx)
		return err
	}
	sum := sha256.Sum256(data)
	if _, err := w.Commit(ctx, int64(len(data)), sum[:]); err != nil {
		w.Abort(ctx)
		return fmt.Errorf("store %s: %w", key, err)
	}
	return nil
}

func (s *Server) manifestFor(col state.Collection, final string, finished time.Time) *manifest.Manifest {
	m := &manifest.Manifest{
		SchemaVersion: manifestVersion,
		CollectionID:  col.ID, CaseID: col.CaseID, Reason: col.Reason, RequestedBy: col.RequestedBy,
		RequestedAt: col.RequestedAt, StartedAt: col.StartedAt, FinishedAt: finished, State: final,
		Agent:     manifest.Agent{ID: col.AgentID, Identity: agentURI(col.AgentID)},
		Collector: &manifest.Collector{Identity: s.cfg.Identity.String(), Version: s.cfg.Version},
	}
	if a, err := s.db.GetAgent(context.Background(), col.AgentID); err == nil {
		m.Agent.CertFingerprint, m.Agent.Hostname, m.Agent.Kernel, m.Agent.OS, m.Agent.Arch = a.CertFingerprint, a.Host.Hostname, a.Host.Kernel, a.Host.OS, a.Host.Arch
		m.Agent.InstanceID, m.Agent.TaskARN, m.Agent.Version = a.Host.InstanceID, a.Host.TaskARN, a.Version
	}
	for _, a := range col.Artifacts {
		ma := manifest.Artifact{
			Name: a.Name, Source: a.Source, State: a.State, RawSize: a.RawSize,
			AgentSHA256: a.AgentSHA256, CollectorSHA256: a.CollectorSHA256,
			Key: a.Key, Location: a.Location, StoredSize: a.StoredSize, StoredSHA256: a.StoredSHA256,
			Compression: a.Compression, Chunks: a.Chunks, VersionID: a.VersionID, ETag: a.ETag,
			Warnings: a.Warnings, Tool: manifest.Tool{Name: a.Tool.Name, Version: a.Tool.Version}, Details: a.Details,
		}
		if a.State != state.Complete && a.Error == "" {
			ma.Errors = []string{"not captured"}
		}
		if a.Error != "" {
			ma.Errors = []string{a.Error}
		}
		if a.State != state.Complete && a.CollectorSHA256 == "" {
			// Nothing verified was stored: do not point at an object.
			ma.Key, ma.Location = "", ""
		}
		for _, r := range a.Skipped {
			ma.SkippedRanges = append(ma.SkippedRanges, manifest.Range{Start: r.Start, End: r.End, Reason: r.Reason})
		}
		m.Artifacts = append(m.Artifacts, ma)
	}
	return m
}

func agentURI(id string) string {
	if ident, err := pki.NewIdentity(pki.RoleAgent, id); err == nil {
		return ident.String()
	}
	return ""
}
