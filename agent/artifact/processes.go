package artifact

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/procfs"
)

func init() {
	register(Kind{
		Name:    "processes",
		Ext:     "jsonl",
		Doc:     "one JSON line per process (osquery processes columns), sorted by pid",
		Collect: collectProcesses,
	})
}

// userHZ is CLK_TCK, the unit of /proc/<pid>/stat starttime. It is 100 on
// every architecture Go supports; reading it needs sysconf and so cgo, which
// the static agent does without (procfs makes the same choice).
const userHZ = 100

// deletedSuffix is what the kernel appends to the exe link of a process whose
// binary was unlinked: the classic sign of malware that deleted itself.
const deletedSuffix = " (deleted)"

// processRecord is one line of the processes artifact. Column names follow
// osquery's processes table so that existing queries work unchanged. Numbers
// are pointers because 0 is a meaningful uid, gid and parent: a field that
// could not be read is null, not a plausible lie.
type processRecord struct {
	PID              int      `json:"pid"`
	Parent           *int     `json:"parent"`
	Name             string   `json:"name"`
	Path             string   `json:"path"`
	Cmdline          string   `json:"cmdline"`
	CmdlineArgs      []string `json:"cmdline_args"`
	UID              *uint64  `json:"uid"`
	GID              *uint64  `json:"gid"`
	EUID             *uint64  `json:"euid"`
	EGID             *uint64  `json:"egid"`
	State            string   `json:"state"`
	StartTime        *int64   `json:"start_time"`
	StartTimeRFC3339 string   `json:"start_time_rfc3339"`
	Threads          *int     `json:"threads"`
	ExeDeleted       *bool    `json:"exe_deleted"`
	Error            string   `json:"error,omitempty"`
}

func collectProcesses(ctx context.Context, env Env, _ Params, w io.Writer) (Result, error) {
	res := Result{Source: "procfs:" + env.ProcRoot}
	warn := warnings{log: env.Logger}

	pfs, err := procfs.NewFS(env.ProcRoot)
	if err != nil {
		return res, fmt.Errorf("processes: %w", err)
	}
	procs, err := pfs.AllProcs()
	if err != nil {
		return res, fmt.Errorf("processes: list %s: %w", env.ProcRoot, err)
	}
	// Directory order is whatever the filesystem gives; a sorted artifact
	// diffs cleanly between two collections of the same host.
	slices.SortFunc(procs, func(a, b procfs.Proc) int { return cmp.Compare(a.PID, b.PID) })

	// Without a boot time start_time is unknown, but every other column is
	// still worth having.
	boot, err := bootTime(env.ProcRoot)
	if err != nil {
		warn.add("start_time unavailable: %v", err)
	}

	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	for _, p := range procs {
		if err := ctx.Err(); err != nil {
			res.Warnings = warn.result()
			return res, err
		}
		rec, gone := readProcess(p, boot)
		if gone {
			continue
		}
		if rec.Error != "" {
			warn.add("pid %d: %s", rec.PID, rec.Error)
		}
		// Encode writes exactly one line per call, so each process reaches
		// w as soon as it is read and nothing accumulates here.
		if err := enc.Encode(rec); err != nil {
			res.Warnings = warn.result()
			return res, fmt.Errorf("write processes artifact: %w", err)
		}
		res.Records++
	}
	res.Warnings = warn.result()
	return res, nil
}

// readProcess reads one process. gone reports a process that exited after
// the listing: it is skipped, because a process that no longer exists is not
// part of the state being captured and its half-read record would mislead.
func readProcess(p procfs.Proc, boot time.Time) (rec processRecord, gone bool) {
	rec.PID = p.PID
	var errs []string
	// fail records why a column is left empty, unless the error says the
	// process has exited: that alone drops the record.
	fail := func(column string, err error) bool {
		if vanished(err) {
			return true
		}
		errs = append(errs, column+": "+err.Error())
		return false
	}

	if st, err := p.Stat(); err != nil {
		if fail("stat", err) {
			return rec, true
		}
	} else {
		rec.Parent = &st.PPID
		rec.Name = st.Comm
		rec.State = st.State
		rec.Threads = &st.NumThreads
		if !boot.IsZero() {
			// Whole seconds: btime itself is whole seconds, so a fraction
			// from the ticks would be precision the kernel never had.
			sec := boot.Unix() + int64(st.Starttime/userHZ)
			rec.StartTime = &sec
			rec.StartTimeRFC3339 = time.Unix(sec, 0).UTC().Format(time.RFC3339)
		}
	}

	if status, err := p.NewStatus(); err != nil {
		if fail("status", err) {
			return rec, true
		}
	} else {
		rec.UID, rec.EUID = &status.UIDs[0], &status.UIDs[1]
		rec.GID, rec.EGID = &status.GIDs[0], &status.GIDs[1]
	}

	if args, err := p.CmdLine(); err != nil {
		if fail("cmdline", err) {
			return rec, true
		}
	} else {
		rec.CmdlineArgs = args
		rec.Cmdline = strings.Join(args, " ")
	}

	// Executable reports a kernel thread, which has no exe, as "" and no
	// error, so an empty path with exe_deleted false means "no binary".
	if exe, err := p.Executable(); err != nil {
		if fail("path", err) {
			return rec, true
		}
	} else {
		path, deleted := strings.CutSuffix(exe, deletedSuffix)
		rec.Path = path
		rec.ExeDeleted = &deleted
	}

	rec.Error = strings.Join(errs, "; ")
	return rec, false
}

// vanished reports an error that means the process exited while it was being
// read: its /proc directory is gone (ENOENT) or the kernel refuses to look
// into a task that is being torn down (ESRCH).
func vanished(err error) bool {
	return errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ESRCH)
}
