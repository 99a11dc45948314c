package session

import (
	"context"
	"fmt"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/custodyhq/custody/agent/artifact"
	"github.com/custodyhq/custody/agent/upload"
	custodyv1 "github.com/custodyhq/custody/proto/custody/v1"
)

// runTask captures a task's artifacts one after another — one capture at a
// time keeps the agent's footprint on the host small and predictable — and
// uploads each as it is produced, with nothing staged on disk.
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
	for _, req := range t.GetArtifacts() {
		if ctx.Err() != nil {
			return
		}
		start := time.Now()
		res, err := a.capture(ctx, t.GetTaskId(), req, update)
		if err != nil {
			log.Warn("artifact failed", "artifact", req.GetName(), "err", err)
			update(&custodyv1.TaskUpdate{Artifact: req.GetName(), State: custodyv1.ArtifactState_ARTIFACT_STATE_FAILED, Error: err.Error()})
			continue
		}
		log.Info("artifact uploaded", "artifact", req.GetName(), "key", res.Key, "raw_bytes", res.RawSize,
			"stored_bytes", res.StoredSize, "sha256", fmt.Sprintf("%x", res.RawSHA256), "took", time.Since(start).Round(time.Millisecond))
	}
}

func (a *agent) capture(ctx context.Context, taskID string, req *custodyv1.ArtifactRequest, update func(*custodyv1.TaskUpdate)) (upload.Result, error) {
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
	up, err := upload.Start(ctx, a.client, upload.Options{
		TaskID: taskID, Artifact: kind.Name, Extension: kind.Ext, ExpectedSize: expected,
	})
	if err != nil {
		return upload.Result{}, err
	}
	res, cerr := kind.Collect(ctx, a.cfg.Env, params, up)
	if ctx.Err() != nil {
		up.Abort()
		return upload.Result{}, ctx.Err()
	}
	tr := upload.Trailer{Source: res.Source, Warnings: res.Warnings, Err: cerr, Details: res.Details,
		Tool: &custodyv1.ToolInfo{Name: "custody-agent", Version: a.cfg.Version}}
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

// permanent reports errors that retrying will not fix.
func permanent(err error) bool {
	switch status.Code(err) {
	case codes.PermissionDenied, codes.InvalidArgument, codes.Unauthenticated, codes.FailedPrecondition:
		return true
	}
	return false
}
