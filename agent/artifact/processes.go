package artifact

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/custodyhq/custody/agent/procbpf"
)

func init() {
	register(Kind{
		Name:    "processes",
		Ext:     "jsonl",
		Doc:     "one JSON line per process (osquery processes columns plus exe hash, container, namespaces, capabilities), sorted by pid",
		Params:  []string{"with_env", "env_unredacted", "method"},
		Collect: collectProcesses,
	})
}

// userHZ is CLK_TCK, the unit of /proc/<pid>/stat times. It is 100 on
// every architecture Go supports; reading it needs sysconf and so cgo, which
// the static agent does without (procfs makes the same choice).
const userHZ = 100

const (
	// maxCmdline bounds the command line kept per process. The kernel
	// allows megabytes of arguments and a hostile process may use them to
	// bloat the artifact; cmdline_truncated says when this cut.
	maxCmdline = 64 << 10
	// maxEnviron bounds the environment kept per process, likewise.
	maxEnviron = 64 << 10
	// maxExeHash is the largest executable hashed. A bigger one is almost
	// certainly not a real program, and hashing it would stall the scan;
	// the file artifact can still capture it through /proc/PID/exe.
	maxExeHash = 1 << 30
)

// processRecord is one line of the processes artifact. Column names follow
// osquery's processes and process_namespaces tables, so existing queries
// work unchanged. Numbers are pointers because 0 is a meaningful uid, gid
// and parent: a field that could not be read is null, not a plausible lie.
type processRecord struct {
	PID              int      `json:"pid"`
	Parent           *int     `json:"parent"`
	PGroup           *int     `json:"pgroup"`
	Name             string   `json:"name"`
	Path             string   `json:"path"`
	Cmdline          string   `json:"cmdline"`
	CmdlineArgs      []string `json:"cmdline_args"`
	CmdlineTruncated bool     `json:"cmdline_truncated,omitempty"`
	State            string   `json:"state"`
	Cwd              string   `json:"cwd"`
	Root             string   `json:"root"`
	UID              *uint64  `json:"uid"`
	GID              *uint64  `json:"gid"`
	EUID             *uint64  `json:"euid"`
	EGID             *uint64  `json:"egid"`
	SUID             *uint64  `json:"suid"`
	SGID             *uint64  `json:"sgid"`
	User             string   `json:"user"`
	Group            string   `json:"group"`
	EUser            string   `json:"euser"`
	EGroup           string   `json:"egroup"`
	StartTime        *int64   `json:"start_time"`
	StartTimeRFC3339 string   `json:"start_time_rfc3339"`
	Threads          *int     `json:"threads"`
	Nice             *int     `json:"nice"`
	ResidentSize     *uint64  `json:"resident_size"` // bytes
	TotalSize        *uint64  `json:"total_size"`    // bytes of address space
	UserTime         *uint64  `json:"user_time"`     // milliseconds
	SystemTime       *uint64  `json:"system_time"`   // milliseconds
	ExeSHA256        *string  `json:"exe_sha256"`
	ExeDeleted       *bool    `json:"exe_deleted"`
	CgroupPath       string   `json:"cgroup_path"`
	ContainerID      string   `json:"container_id"`
	ContainerRuntime string   `json:"container_runtime"`
	ECSTaskID        string   `json:"ecs_task_id"`
	PodUID           string   `json:"pod_uid"`
	// NSPid is the pid as the process's own pid namespace sees it: 1 for a
	// container's init.
	NSPid           *uint64   `json:"ns_pid"`
	CgroupNamespace *uint64   `json:"cgroup_namespace"`
	IPCNamespace    *uint64   `json:"ipc_namespace"`
	MntNamespace    *uint64   `json:"mnt_namespace"`
	NetNamespace    *uint64   `json:"net_namespace"`
	PIDNamespace    *uint64   `json:"pid_namespace"`
	UserNamespace   *uint64   `json:"user_namespace"`
	UTSNamespace    *uint64   `json:"uts_namespace"`
	CapEffective    string    `json:"cap_effective"` // hex mask, as in /proc/PID/status
	CapEffNames     []string  `json:"cap_effective_names"`
	LoginUID        *uint64   `json:"login_uid"` // 4294967295: never logged in (unset)
	Environment     *[]string `json:"environment,omitempty"`
	EnvTruncated    bool      `json:"environment_truncated,omitempty"`
	Error           string    `json:"error,omitempty"`
}

type processOptions struct {
	withEnv, unredacted bool
	method              string // how links are read: auto, bpf, procfs
}

func parseProcessParams(p Params) (processOptions, error) {
	var o processOptions
	for name, dst := range map[string]*bool{"with_env": &o.withEnv, "env_unredacted": &o.unredacted} {
		v, ok := p[name]
		if !ok {
			continue
		}
		b, err := strconv.ParseBool(v)
		if err != nil {
			return o, fmt.Errorf("%w: processes %s=%q: want true or false", ErrBadParam, name, v)
		}
		*dst = b
	}
	// Asking for unredacted values is asking for the environment.
	o.withEnv = o.withEnv || o.unredacted
	var err error
	o.method, err = parseReadMethod(p)
	return o, err
}

func collectProcesses(ctx context.Context, env Env, p Params, w io.Writer) (Result, error) {
	opts, err := parseProcessParams(p)
	if err != nil {
		return Result{Source: "procfs:" + env.ProcRoot}, err
	}
	res, stats, warn, err := beginSnapshot(ctx, env)
	if err != nil {
		return res, err
	}
	pids, err := snapshotPIDs(env.ProcRoot)
	if err != nil {
		return res, fmt.Errorf("processes: %w", err)
	}
	// Without a boot time start_time is unknown, but every other column is
	// still worth having.
	boot, err := bootTime(env.ProcRoot)
	if err != nil {
		warn.add("start_time unavailable: %v", err)
	}
	sc := &processScanner{env: env, opts: opts, boot: boot, hashes: newExeHasher()}
	selfMnt, _ := newSnapProc(env.ProcRoot, 0).selfNamespace("mnt")
	sc.names = newNameResolver(env, selfMnt)

	it, ok, unavailable, err := openIterator(ctx, env, "processes", opts.method, procbpf.OpenTasks)
	if err != nil {
		return res, err
	}
	var src *pidStream[procbpf.Task]
	if ok {
		defer it.Close()
		src = &pidStream[procbpf.Task]{it: it, pid: func(t procbpf.Task) int { return t.PID }}
	}

	var n int
	err = snapshotOrderedPrep(ctx, snapshotWorkers(), len(pids), func(i int) *procbpf.Task {
		if src == nil {
			return nil
		}
		if ts, ok := src.take(pids[i]); ok {
			return &ts[0]
		}
		return nil
	}, func(s *scratch, i int, t *procbpf.Task) procBatch {
		return sc.read(s, pids[i], t)
	}, func(b procBatch) error {
		// One write per process: each reaches w as soon as it is its
		// turn, and nothing accumulates here.
		if err := b.emit(w, stats, &warn, &res, &n); err != nil {
			return fmt.Errorf("processes: %w", err)
		}
		return nil
	})
	res.Warnings = warn.result()
	stats.extra["exe_hashed"] = strconv.Itoa(sc.hashes.count())
	stats.extra["environment"] = map[bool]string{false: "not collected", true: "redacted"}[opts.withEnv]
	if opts.unredacted {
		stats.extra["environment"] = "unredacted"
	}
	res.Details = stats.details()
	if src != nil {
		bpfDetails(&res, true, nil, src.failed())
	} else {
		bpfDetails(&res, false, unavailable, nil)
	}
	return res, err
}

// selfNamespace reads the namespace of the process reading /proc (the
// agent, or whatever "self" is in a fake tree).
func (p snapProc) selfNamespace(kind string) (uint64, error) {
	target, err := os.Readlink(filepath.Join(p.root, "self", "ns", kind))
	if err != nil {
		return 0, err
	}
	return parseNSLink(kind, target)
}

type processScanner struct {
	env    Env
	opts   processOptions
	boot   time.Time
	hashes *exeHasher
	names  *nameResolver
}

// read reads and encodes one process, on a worker. t is what the task
// iterator reported of it, or nil.
func (sc *processScanner) read(s *scratch, pid int, t *procbpf.Task) procBatch {
	rec, gone := sc.readProcess(s, pid, t)
	if gone {
		return procBatch{pid: pid, gone: true}
	}
	out := newProcBatch(pid)
	out.add(rec, rec.Error)
	return out.done()
}

// readProcess reads one process. gone reports a process that exited after
// the listing: it is skipped, because a process that no longer exists is not
// part of the state being captured and its half-read record would mislead.
func (sc *processScanner) readProcess(s *scratch, pid int, t *procbpf.Task) (rec processRecord, gone bool) {
	p := newSnapProc(sc.env.ProcRoot, pid)
	rec.PID = pid
	var errs errorList
	// fail records why a column is left empty, unless the error says the
	// process has exited: that alone drops the record.
	fail := func(column string, err error) bool {
		if p.gone(err) {
			return true
		}
		errs.add(column, err)
		return false
	}
	h, err := openProc(p)
	if err != nil {
		if fail("stat", err) {
			return rec, true
		}
		rec.Error = errs.String()
		return rec, false
	}
	defer h.close()
	links := procLinks{h: h, s: s, t: t}
	if b, _, err := h.read(s, "stat", maxSmallFile); err != nil {
		if fail("stat", err) {
			return rec, true
		}
	} else if st, err := parseProcStat(b); err != nil {
		errs.add("stat", err)
	} else {
		rec.Parent, rec.PGroup = &st.PPID, &st.PGRP
		rec.Name = st.Comm
		rec.State = st.State
		rec.Threads = &st.NumThreads
		rec.Nice = &st.Nice
		ut, stime := st.UTime*1000/userHZ, st.STime*1000/userHZ
		rec.UserTime, rec.SystemTime = &ut, &stime
		if !sc.boot.IsZero() {
			// Whole seconds: btime itself is whole seconds, so a fraction
			// from the ticks would be precision the kernel never had.
			sec := sc.boot.Unix() + int64(st.Starttime/userHZ)
			rec.StartTime = &sec
			rec.StartTimeRFC3339 = time.Unix(sec, 0).UTC().Format(time.RFC3339)
		}
	}

	if b, _, err := h.read(s, "status", maxSmallFile); err != nil {
		if fail("status", err) {
			return rec, true
		}
	} else if status, err := parseProcStatus(b); err != nil {
		errs.add("status", err)
	} else {
		rec.UID, rec.EUID, rec.SUID = &status.UIDs[0], &status.UIDs[1], &status.UIDs[2]
		rec.GID, rec.EGID, rec.SGID = &status.GIDs[0], &status.GIDs[1], &status.GIDs[2]
		rec.ResidentSize, rec.TotalSize = &status.VmRSS, &status.VmSize
		if status.HaveCapEff {
			rec.CapEffective = fmt.Sprintf("%016x", status.CapEff)
			rec.CapEffNames = capList(status.CapEff)
		}
		if n := len(status.NSpid); n > 0 {
			rec.NSPid = &status.NSpid[n-1]
		}
	}

	if b, truncated, err := h.readStream(s, "cmdline", maxCmdline); err != nil {
		if fail("cmdline", err) {
			return rec, true
		}
	} else {
		rec.CmdlineArgs = splitCmdline(b)
		rec.Cmdline = strings.Join(rec.CmdlineArgs, " ")
		rec.CmdlineTruncated = truncated
	}

	// A kernel thread has no exe (ENOENT with the process alive): an
	// empty path with exe_deleted false means "no binary".
	if target, err := links.readlink("exe"); err != nil {
		if !errors.Is(err, os.ErrNotExist) {
			if fail("path", err) {
				return rec, true
			}
		} else if p.gone(err) {
			return rec, true
		} else {
			f := false
			rec.ExeDeleted = &f
		}
	} else {
		sum, id, herr := sc.hashes.hash(h)
		if herr != nil {
			if fail("exe_sha256", herr) {
				return rec, true
			}
		} else {
			rec.ExeSHA256 = &sum
		}
		path, deleted := deletedTarget(p, target, id)
		rec.Path, rec.ExeDeleted = path, &deleted
	}

	for _, l := range []struct {
		name string
		dst  *string
	}{{"cwd", &rec.Cwd}, {"root", &rec.Root}} {
		target, err := links.readlink(l.name)
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			if fail(l.name, err) {
				return rec, true
			}
		}
		*l.dst = target
	}

	if b, _, err := h.read(s, "cgroup", maxSmallFile); err != nil {
		if fail("cgroup", err) {
			return rec, true
		}
	} else {
		cg := parseCgroup(b)
		rec.CgroupPath = cg.Path
		rec.ContainerID, rec.ContainerRuntime = cg.Container.ID, cg.Container.Runtime
		rec.ECSTaskID, rec.PodUID = cg.Container.ECSTaskID, cg.Container.PodUID
	}

	for _, ns := range []struct {
		kind string
		dst  **uint64
	}{
		{"cgroup", &rec.CgroupNamespace}, {"ipc", &rec.IPCNamespace}, {"mnt", &rec.MntNamespace},
		{"net", &rec.NetNamespace}, {"pid", &rec.PIDNamespace}, {"user", &rec.UserNamespace},
		{"uts", &rec.UTSNamespace},
	} {
		ino, err := links.namespace(ns.kind)
		if err != nil {
			// Kernels without a namespace type simply lack its link.
			if !errors.Is(err, os.ErrNotExist) && fail(ns.kind+"_namespace", err) {
				return rec, true
			}
			continue
		}
		*ns.dst = &ino
	}

	if t != nil && t.Has(procbpf.HaveLoginUID) {
		v := t.LoginUID
		rec.LoginUID = &v
	} else if b, _, err := h.read(s, "loginuid", 32); err == nil {
		if v, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 32); err == nil {
			rec.LoginUID = &v
		}
	} else if !errors.Is(err, os.ErrNotExist) && fail("login_uid", err) {
		return rec, true
	}

	if sc.opts.withEnv {
		if b, truncated, err := h.readStream(s, "environ", maxEnviron); err != nil {
			if fail("environment", err) {
				return rec, true
			}
		} else {
			env := parseEnviron(b, sc.opts.unredacted)
			rec.Environment, rec.EnvTruncated = &env, truncated
		}
	}

	var mnt uint64
	if rec.MntNamespace != nil {
		mnt = *rec.MntNamespace
	}
	names := sc.names.forProcess(p, mnt)
	rec.User, rec.EUser = names.user(rec.UID), names.user(rec.EUID)
	rec.Group, rec.EGroup = names.group(rec.GID), names.group(rec.EGID)

	rec.Error = errs.String()
	return rec, false
}

// procLinks reads a process's links: from the task iterator's record where
// it has them, else through /proc. An error the iterator met (d_path's)
// reads as the same readlink error /proc would give.
type procLinks struct {
	h procHandle
	s *scratch
	t *procbpf.Task
}

var taskNamespaces = map[string]int{
	"cgroup": procbpf.NSCgroup, "ipc": procbpf.NSIPC, "mnt": procbpf.NSMnt, "net": procbpf.NSNet,
	"pid": procbpf.NSPID, "user": procbpf.NSUser, "uts": procbpf.NSUTS,
}

func (l procLinks) readlink(name string) (string, error) {
	if l.t != nil {
		var bit int
		var target string
		var errno syscall.Errno
		switch name {
		case "exe":
			bit, target, errno = procbpf.HaveExe, l.t.Exe, l.t.ExeErr
		case "cwd":
			bit, target, errno = procbpf.HaveCwd, l.t.Cwd, l.t.CwdErr
		case "root":
			bit, target, errno = procbpf.HaveRoot, l.t.Root, l.t.RootErr
		default:
			bit = -1
		}
		if bit >= 0 && l.t.Has(bit) {
			if errno != 0 {
				return "", &fs.PathError{Op: "readlink", Path: l.h.dir + "/" + name, Err: errno}
			}
			return target, nil
		}
	}
	return l.h.readlink(l.s, name)
}

func (l procLinks) namespace(kind string) (uint64, error) {
	if l.t != nil {
		if k, ok := taskNamespaces[kind]; ok && l.t.Has(k) {
			return l.t.NS[k], nil
		}
	}
	return l.h.namespace(l.s, kind)
}

// splitCmdline splits /proc/PID/cmdline into argv. A process may rewrite
// its argument area (setproctitle), leaving one string with spaces and no
// NULs; that is kept as one argument, as ps shows it.
func splitCmdline(b []byte) []string {
	b = bytes.TrimRight(b, "\x00")
	if len(b) == 0 {
		return []string{}
	}
	parts := bytes.Split(b, []byte{0})
	args := make([]string, len(parts))
	for i, p := range parts {
		args[i] = string(p)
	}
	return args
}

// exeHasher hashes executables once per distinct file. A host runs many
// copies of few binaries (a thousand workers of one server), so the scan
// costs one read per binary, not per process. The key is the file's
// identity and version as fstat sees it through /proc/PID/exe, which for a
// deleted binary is still the running image.
type exeHasher struct {
	mu sync.Mutex
	m  map[exeKey]*exeHash
}

type exeKey struct {
	dev, ino     uint64
	size         int64
	mtime, ctime unix.Timespec
}

type exeHash struct {
	once sync.Once
	sum  string
	err  error
}

func newExeHasher() *exeHasher { return &exeHasher{m: map[exeKey]*exeHash{}} }

func (h *exeHasher) count() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.m)
}

// hash returns the SHA-256 of the file behind h's exe link and its
// identity.
func (h *exeHasher) hash(ph procHandle) (string, *fileID, error) {
	display := ph.dir + "/exe"
	// stat first: a host runs few binaries many times, and a cached hash
	// then costs one system call, not three.
	var st unix.Stat_t
	if err := statAt(ph.fd, "exe", display, &st); err != nil {
		return "", nil, err
	}
	id := &fileID{dev: st.Dev, ino: st.Ino}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return "", id, fmt.Errorf("%s is not a regular file", display)
	}
	if st.Size > maxExeHash {
		return "", id, fmt.Errorf("%s is %d bytes, more than the %d hashed", display, st.Size, maxExeHash)
	}
	key := exeKey{dev: st.Dev, ino: st.Ino, size: st.Size, mtime: st.Mtim, ctime: st.Ctim}
	h.mu.Lock()
	e := h.m[key]
	if e == nil {
		e = &exeHash{}
		h.m[key] = e
	}
	h.mu.Unlock()
	e.once.Do(func() { e.sum, e.err = hashExe(ph, display, key) })
	return e.sum, id, e.err
}

// hashExe reads the binary behind ph's exe link, checking that it is still
// the file key describes.
func hashExe(ph procHandle, display string, key exeKey) (string, error) {
	const flags = unix.O_RDONLY | unix.O_NOCTTY | unix.O_CLOEXEC
	// O_NOATIME keeps the binary's access time, itself evidence, where the
	// kernel allows it (owner or CAP_FOWNER).
	fd, err := retryEINTR(func() (int, error) { return unix.Openat(ph.fd, "exe", flags|unix.O_NOATIME, 0) })
	if errors.Is(err, unix.EPERM) {
		fd, err = retryEINTR(func() (int, error) { return unix.Openat(ph.fd, "exe", flags, 0) })
	}
	if err != nil {
		return "", &fs.PathError{Op: "open", Path: display, Err: err}
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return "", &fs.PathError{Op: "fstat", Path: display, Err: err}
	}
	if st.Dev != key.dev || st.Ino != key.ino {
		return "", fmt.Errorf("%s changed while it was hashed", display)
	}
	sum := sha256.New()
	buf := make([]byte, 256<<10)
	for {
		n, err := retryEINTR(func() (int, error) { return unix.Read(fd, buf) })
		if err != nil {
			return "", &fs.PathError{Op: "read", Path: display, Err: err}
		}
		if n == 0 {
			break
		}
		sum.Write(buf[:n])
	}
	return hex.EncodeToString(sum.Sum(nil)), nil
}
