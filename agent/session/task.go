package session

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"
	"log/slog"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/custodyhq/custody/agent/artifact"
	"github.com/custodyhq/custody/agent/upload"
	custodyv1 "github.com/custodyhq/custody/proto/custody/v1"
)

// runTask captures a task's artifacts and uploads each as it is produced,
// with nothing staged on disk. Artifacts run in artifact.Stages: the light
// ones (the snapshots, host) side by side, so that the views of the
// host's volatile state are taken close together in time and both CPUs
// the agent may use stay busy; each bulk artifact (memory, files) alone.
func (a *agent) runTask(ctx context.Context, t *custodyv1.Task, send func(*custodyv1.SessionRequest) error) {
	log := a.log.With("task", t.GetTaskId(), "case", t.GetCaseId())
	if dl := t.GetDeadline(); dl != nil && dl.IsValid() {
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, dl.AsTime())
		defer cancel()
	}
	update := func(u *custodyv1.TaskUpdate) {
		u.TaskId = t.GetTaskId()
		if err := send(&custodyv1.SessionRequest{Msg: &custodyv1.SessionRequest_TaskUpdate{TaskUpdate: u}}); err != nil {
			log.Warn("task update not sent", "err", err)
		}
	}
	log.Info("task received", "artifacts", len(t.GetArtifacts()))
	reqs := t.GetArtifacts()
	names := make([]string, len(reqs))
	for i, r := range reqs {
		names[i] = r.GetName()
	}
	env := a.cfg.Env
	env.Shared = artifact.NewShared(names)
	artifact.RunStages(names, func(i int) bool {
		return ctx.Err() == nil && a.runArtifact(ctx, env, t.GetTaskId(), reqs[i], update, log)
	})
}

// runArtifact captures and uploads one artifact of a task, reporting a
// failure to the collector. It returns false when the session broke: the
// collector keeps the task and resumes it on the next hello, so nothing
// more of it should run now, and reporting a failure would be wrong.
func (a *agent) runArtifact(ctx context.Context, env artifact.Env, taskID string, req *custodyv1.ArtifactRequest, update func(*custodyv1.TaskUpdate), log *slog.Logger) bool {
	start := time.Now()
	res, err := a.capture(ctx, env, taskID, req, update)
	if errors.Is(err, errAlreadyStored) {
		log.Info("artifact already stored", "artifact", req.GetName())
		return true
	}
	if ctx.Err() != nil || connectionLost(ctx, err) {
		log.Info("artifact interrupted; will resume", "artifact", req.GetName(), "err", err)
		return false
	}
	if err != nil {
		log.Warn("artifact failed", "artifact", req.GetName(), "err", err)
		update(&custodyv1.TaskUpdate{Artifact: req.GetName(), State: custodyv1.ArtifactState_ARTIFACT_STATE_FAILED, Error: err.Error()})
		return true
	}
	log.Info("artifact uploaded", "artifact", req.GetName(), "key", res.Key, "raw_bytes", res.RawSize,
		"stored_bytes", res.StoredSize, "sha256", fmt.Sprintf("%x", res.RawSHA256), "took", time.Since(start).Round(time.Millisecond))
	return true
}

// connectionLost reports whether err is the upload stream's connection
// breaking. The session stream shares that connection, so it ends too, but
// an instant later: the upload can notice first. Waiting for the session
// to notice (bounded, in case the collector said Unavailable while the
// connection stays up) keeps a network cut from being reported as the
// artifact's failure.
func connectionLost(ctx context.Context, err error) bool {
	if status.Code(err) != codes.Unavailable {
		return false
	}
	select {
	case <-ctx.Done():
		return true
	case <-time.After(sessionNoticeWait):
		return false
	}
}

// sessionNoticeWait bounds connectionLost's wait; keepalives would take
// far longer to notice a connection that silently died.
const sessionNoticeWait = 5 * time.Second

// errAlreadyStored: the collector holds this artifact from an earlier
// session (the task was re-delivered after a reconnect).
var errAlreadyStored = errors.New("already stored by the collector")

// errPrefixChanged: a regenerated source no longer produces the bytes the
// collector already holds.
var errPrefixChanged = errors.New("source no longer reproduces the bytes already stored")

func (a *agent) capture(ctx context.Context, env artifact.Env, taskID string, req *custodyv1.ArtifactRequest, update func(*custodyv1.TaskUpdate)) (upload.Result, error) {
	kind, err := artifact.Lookup(req.GetName())
	if err != nil {
		return upload.Result{}, err
	}
	params := artifact.Params(req.GetParams())
	if err := kind.CheckParams(params); err != nil {
		return upload.Result{}, err
	}
	expected := int64(-1)
	if kind.Name == "file" {
		if n, err := artifact.FileSize(params["path"]); err == nil {
			expected = n
		}
	}
	update(&custodyv1.TaskUpdate{Artifact: kind.Name, State: custodyv1.ArtifactState_ARTIFACT_STATE_RUNNING, BytesTotal: expected})
	restart := false
	for {
		up, err := upload.Start(ctx, a.client, upload.Options{
			TaskID: taskID, Artifact: kind.Name, Extension: kind.Ext, ExpectedSize: expected, Restart: restart, Bulk: kind.Bulk,
		})
		if status.Code(err) == codes.AlreadyExists {
			return upload.Result{}, errAlreadyStored
		}
		if err != nil {
			return upload.Result{}, err
		}
		var res artifact.Result
		var cerr error
		off := up.ResumeOffset()
		switch {
		case off == 0:
			res, cerr = kind.Collect(ctx, env, params, up)
		case kind.CollectAt != nil:
			a.log.Info("resuming upload in place", "artifact", kind.Name, "offset", off)
			res, cerr = kind.CollectAt(ctx, env, params, off, up)
		default:
			// Regenerate the source, skip what the collector holds, and
			// check it is what the collector holds.
			sk := &skipper{w: up, skip: off, h: sha256.New(), want: up.ResumeSHA256()}
			res, cerr = kind.Collect(ctx, env, params, sk)
			if !restart && (errors.Is(cerr, errPrefixChanged) || (cerr == nil && !sk.reached)) {
				a.log.Info("source changed since the interrupted upload; starting it over", "artifact", kind.Name, "offset", off)
				up.Abort()
				restart = true
				continue
			}
			a.log.Info("resumed upload after a verified prefix", "artifact", kind.Name, "offset", off)
		}
		if ctx.Err() != nil {
			up.Abort()
			return upload.Result{}, ctx.Err()
		}
		tr := upload.Trailer{Source: res.Source, Warnings: res.Warnings, Err: cerr, Details: res.Details,
			Tool: &custodyv1.ToolInfo{Name: "custody-agent", Version: a.cfg.Version}}
		if restart {
			tr.Warnings = append(tr.Warnings, "upload restarted from zero after an interruption: the source no longer reproduced the bytes already stored")
		}
		for _, r := range res.Skipped {
			tr.Skipped = append(tr.Skipped, &custodyv1.SkippedRange{Start: r.Start, End: r.End, Reason: r.Reason})
		}
		out, err := up.Close(tr)
		if err != nil {
			return upload.Result{}, err
		}
		if cerr != nil {
			return out, fmt.Errorf("capture incomplete (what was read is stored): %w", cerr)
		}
		return out, nil
	}
}

// skipper discards the first skip bytes written to it, hashing them, and
// passes the rest on once the hash of the skipped prefix is the expected one.
type skipper struct {
	w       io.Writer
	skip    int64
	seen    int64
	h       hash.Hash
	want    []byte
	reached bool
}

func (s *skipper) Write(p []byte) (int, error) {
	n := len(p)
	if !s.reached {
		take := min(int64(len(p)), s.skip-s.seen)
		s.h.Write(p[:take])
		s.seen += take
		p = p[take:]
		if s.seen < s.skip {
			return n, nil
		}
		if !bytes.Equal(s.h.Sum(nil), s.want) {
			return 0, errPrefixChanged
		}
		s.reached = true
	}
	if len(p) > 0 {
		if _, err := s.w.Write(p); err != nil {
			return 0, err
		}
	}
	return n, nil
}

// permanent reports errors that retrying will not fix.
func permanent(err error) bool {
	switch status.Code(err) {
	case codes.PermissionDenied, codes.InvalidArgument, codes.Unauthenticated, codes.FailedPrecondition:
		return true
	}
	return false
}
