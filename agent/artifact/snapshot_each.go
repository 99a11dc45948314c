package artifact

import (
	"context"
	"fmt"
	"io"
	"strconv"
)

// beginSnapshot is how every snapshot starts: its Result, counters and
// warnings, unless ctx has already ended.
func beginSnapshot(ctx context.Context, env Env) (Result, *snapshotStats, warnings, error) {
	return Result{Source: "procfs:" + env.ProcRoot}, newSnapshotStats(env), warnings{log: env.Logger}, ctx.Err()
}

// scanProcesses drives a per-process artifact (open_files, memory_maps):
// every pid read by read on the snapshot workers, records emitted in pid
// order, the record count reported in the manifest's details under
// countKey, errors prefixed with the artifact's name. fold, if not nil,
// sees every batch in pid order before it is written.
func scanProcesses(ctx context.Context, env Env, w io.Writer, name, countKey string,
	read func(snapProc, *scratch) procBatch, fold func(procBatch)) (Result, error) {
	return scanProcessesPrep(ctx, env, w, name, countKey, func(int) struct{} { return struct{}{} },
		func(p snapProc, s *scratch, _ struct{}) procBatch { return read(p, s) }, fold)
}

// scanProcessesPrep is scanProcesses with prep, called in pid order on one
// goroutine before each process is read (see snapshotOrderedPrep).
func scanProcessesPrep[P any](ctx context.Context, env Env, w io.Writer, name, countKey string,
	prep func(pid int) P, read func(snapProc, *scratch, P) procBatch, fold func(procBatch)) (Result, error) {
	res, stats, warn, err := beginSnapshot(ctx, env)
	if err != nil {
		return res, err
	}
	pids, err := snapshotPIDs(env.ProcRoot)
	if err != nil {
		return res, fmt.Errorf("%s: %w", name, err)
	}
	var n int
	err = snapshotOrderedPrep(ctx, snapshotWorkers(), len(pids), func(i int) P {
		return prep(pids[i])
	}, func(s *scratch, i int, pp P) procBatch {
		return read(newSnapProc(env.ProcRoot, pids[i]), s, pp)
	}, func(b procBatch) error {
		if fold != nil {
			fold(b)
		}
		return b.emit(w, stats, &warn, &res, &n)
	})
	res.Warnings = warn.result()
	stats.extra[countKey] = strconv.Itoa(n)
	res.Details = stats.details()
	if err != nil {
		return res, fmt.Errorf("%s: %w", name, err)
	}
	return res, nil
}
