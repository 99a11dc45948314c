package artifact

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/custodyhq/custody/internal/elfcore"
)

func init() {
	register(Kind{
		Name: "process_memory",
		Bulk: true,
		Ext:  "tar",
		Doc: "ELF core file per process, gdb-loadable, in a PAX tar of core.<pid>.<comm> " +
			"(pid=1,2 process_name=REGEX container=ID; regions=all|anon,heap,stack,writable,exec,file " +
			"skip_file_ro=true max_process_bytes=8GiB max_total_bytes=32GiB freeze=false)",
		Params: []string{"pid", "process_name", "container", "regions", "skip_file_ro",
			"max_process_bytes", "max_total_bytes", "freeze"},
		Collect: collectProcessMemory,
	})
}

// Triage defaults: every readable region except read-only file mappings a
// debugger can read from disk, and caps that keep a broad selection (every
// process in a container) from turning into a full-host dump.
const (
	defaultMaxProcessBytes = 8 << 30
	defaultMaxTotalBytes   = 32 << 30
)

// procMemOptions are the process_memory parameters, parsed.
type procMemOptions struct {
	pids       []int
	name       *regexp.Regexp
	container  string
	filter     regionFilter
	maxProcess uint64 // 0: no cap
	maxTotal   uint64 // 0: no cap
	freeze     bool
}

// isProcMemContainerID admits Docker, containerd and CRI-O ids (hex) and
// ECS runtime ids ("<task id>-<number>"), as they appear in
// /proc/PID/cgroup: 12 to 128 of [0-9A-Za-z_.-], starting alphanumeric.
// (A regular expression for it compiled 127 repetitions at every start of
// the agent: 1.5 ms.)
func isProcMemContainerID(s string) bool {
	if len(s) < 12 || len(s) > 128 {
		return false
	}
	for i, c := range []byte(s) {
		alnum := c >= '0' && c <= '9' || c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z'
		if !alnum && (i == 0 || c != '_' && c != '.' && c != '-') {
			return false
		}
	}
	return true
}

func parseProcMemParams(p Params) (procMemOptions, error) {
	o := procMemOptions{
		filter:     regionFilter{classes: []string{"all"}, skipFileRO: true},
		maxProcess: defaultMaxProcessBytes,
		maxTotal:   defaultMaxTotalBytes,
	}
	bad := func(format string, args ...any) (procMemOptions, error) {
		return procMemOptions{}, fmt.Errorf("%w: process_memory: "+format, append([]any{ErrBadParam}, args...)...)
	}
	if s := p["pid"]; s != "" {
		for f := range strings.SplitSeq(s, ",") {
			pid, err := strconv.Atoi(strings.TrimSpace(f))
			if err != nil || pid <= 0 {
				return bad("pid %q is not a process id", f)
			}
			if !slices.Contains(o.pids, pid) {
				o.pids = append(o.pids, pid)
			}
		}
	}
	if s := p["process_name"]; s != "" {
		re, err := regexp.Compile(s)
		if err != nil {
			return bad("process_name: %v", err)
		}
		o.name = re
	}
	if s := p["container"]; s != "" {
		// A short id would match unrelated cgroup paths by accident.
		if !isProcMemContainerID(s) {
			return bad("container %q: want an id of at least 12 characters (letters, digits, '-', '_', '.')", s)
		}
		o.container = s
	}
	if len(o.pids) == 0 && o.name == nil && o.container == "" {
		return bad("name the processes with pid, process_name or container (process_name=. selects every process)")
	}
	if s := p["regions"]; s != "" {
		o.filter.classes = nil
		for c := range strings.SplitSeq(s, ",") {
			c = strings.TrimSpace(c)
			if _, ok := regionClasses[c]; !ok {
				return bad("regions: unknown class %q (known: all, anon, heap, stack, writable, exec, file)", c)
			}
			o.filter.classes = append(o.filter.classes, c)
		}
	}
	for _, b := range []struct {
		name string
		dst  *bool
	}{{"skip_file_ro", &o.filter.skipFileRO}, {"freeze", &o.freeze}} {
		if s := p[b.name]; s != "" {
			v, err := strconv.ParseBool(s)
			if err != nil {
				return bad("%s=%q: want true or false", b.name, s)
			}
			*b.dst = v
		}
	}
	for _, c := range []struct {
		name string
		dst  *uint64
	}{{"max_process_bytes", &o.maxProcess}, {"max_total_bytes", &o.maxTotal}} {
		if s := p[c.name]; s != "" {
			v, err := parseProcMemSize(s)
			if err != nil {
				return bad("%s: %v", c.name, err)
			}
			*c.dst = v
		}
	}
	return o, nil
}

// parseProcMemSize parses "4096", "512MiB", "8G" (binary units; K, M, G, T
// with or without "iB"). 0 means no cap.
func parseProcMemSize(s string) (uint64, error) {
	num := strings.TrimRightFunc(s, func(r rune) bool { return r < '0' || r > '9' })
	shift := 0
	switch unit := strings.ToUpper(strings.TrimSpace(s[len(num):])); unit {
	case "", "B":
	case "K", "KIB":
		shift = 10
	case "M", "MIB":
		shift = 20
	case "G", "GIB":
		shift = 30
	case "T", "TIB":
		shift = 40
	default:
		return 0, fmt.Errorf("%q: unknown unit %q (use K, M, G, T or KiB, MiB, GiB, TiB)", s, unit)
	}
	n, err := strconv.ParseUint(num, 10, 64)
	if err != nil || n > (^uint64(0))>>shift {
		return 0, fmt.Errorf("%q is not a byte count", s)
	}
	return n << shift, nil
}

func procMemBytes(n uint64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := uint64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// procTarget is a selected process. start, its start time in clock ticks
// since boot, tells it apart from a later process given the same pid.
type procTarget struct {
	pid   int
	comm  string
	start uint64
}

// procMemKthreadFlag is PF_KTHREAD in /proc/PID/stat's flags: a kernel thread has no
// user memory to capture.
const procMemKthreadFlag = 0x00200000

// selectProcesses applies the selection. Problems with a pid the responder
// named are returned per pid, because they asked for it by name; processes
// that merely fail to match a pattern are not mentioned.
func selectProcesses(env Env, o procMemOptions) (targets []procTarget, refused map[int]error, err error) {
	refused = map[int]error{}
	pids := o.pids
	explicit := len(pids) > 0
	if !explicit {
		ents, err := os.ReadDir(env.ProcRoot)
		if err != nil {
			return nil, nil, fmt.Errorf("process_memory: list %s: %w", env.ProcRoot, err)
		}
		for _, e := range ents {
			if pid, err := strconv.Atoi(e.Name()); err == nil && pid > 0 {
				pids = append(pids, pid)
			}
		}
		slices.Sort(pids)
	}
	self := os.Getpid()
	// /proc/self names the agent in /proc's own pid namespace, which is
	// the one the pids here are in.
	if l, err := os.Readlink(filepath.Join(env.ProcRoot, "self")); err == nil {
		if n, err := strconv.Atoi(l); err == nil {
			self = n
		}
	}
	fs := procMemFS(env.ProcRoot)
	for _, pid := range pids {
		refuse := func(format string, args ...any) {
			if explicit {
				refused[pid] = fmt.Errorf("pid %d: "+format, append([]any{pid}, args...)...)
			}
		}
		if pid == self {
			refuse("is the agent itself")
			continue
		}
		p, err := fs.Proc(pid)
		if err != nil {
			refuse("%w", ErrProcessGone)
			continue
		}
		st, err := p.Stat()
		if err != nil {
			refuse("%w", ErrProcessGone)
			continue
		}
		switch {
		case st.Flags&procMemKthreadFlag != 0:
			refuse("is a kernel thread: it has no user memory")
			continue
		case st.State == "Z" || st.State == "X":
			refuse("is a zombie: its memory is already gone")
			continue
		case o.name != nil && !o.name.MatchString(st.Comm):
			refuse("name %q does not match process_name %q", st.Comm, o.name)
			continue
		}
		if o.container != "" {
			cg, err := readSmall(filepath.Join(env.ProcRoot, strconv.Itoa(pid), "cgroup"))
			if err != nil || !strings.Contains(string(cg), o.container) {
				refuse("is not in container %s", o.container)
				continue
			}
		}
		targets = append(targets, procTarget{pid: pid, comm: st.Comm, start: st.Starttime})
	}
	return targets, refused, nil
}

// coreName is a process's member name in the tar: core.<pid>.<comm>, the
// kernel's and gcore's core.<pid> with the name added. comm is chosen by the
// process and may hold '/' or control characters, so anything but
// [A-Za-z0-9._-] in it is replaced. The name does not start with a digit:
// `gdb prog NAME` would first try NAME as a process id.
func coreName(pid int, comm string) string {
	b := []byte(comm)
	for i, c := range b {
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '.' || c == '_' || c == '-') {
			b[i] = '_'
		}
	}
	if len(b) == 0 {
		b = []byte("unknown")
	}
	return fmt.Sprintf("core.%d.%s", pid, b)
}

// procMemMaxSkipped bounds Result.Skipped; see procSkipLog.
const procMemMaxSkipped = 10000

// procMemReadBuf is the unit of each memory read: large enough that the
// syscall cost vanishes against the copy, small enough that the agent's
// memory stays flat and cancellation is noticed quickly.
const procMemReadBuf = 1 << 20

// collectProcessMemory writes one tar stream holding an ELF core per
// selected process. Each core's size is computed from its maps before its
// memory is read, so the tar header can be written first and nothing is
// buffered; a page that cannot be read is written as zeros of the same
// length and listed in Result.Skipped with its virtual address range and the
// process it belongs to, so a gap never passes for memory that held zeros.
func collectProcessMemory(ctx context.Context, env Env, p Params, w io.Writer) (Result, error) {
	res := Result{Source: "procfs:" + env.ProcRoot, Details: map[string]string{}}
	o, err := parseProcMemParams(p)
	if err != nil {
		return res, err
	}
	machine, err := elfcore.MachineOf(runtime.GOARCH)
	if err != nil {
		return res, fmt.Errorf("process_memory: %w", err)
	}
	arch, _ := elfcore.ArchOf(machine)
	d := res.Details
	d["format"] = "PAX tar of ELF64 core files named core.<pid>.<comm>; skipped_ranges are virtual addresses of the process their reason names"
	d["freeze"] = strconv.FormatBool(o.freeze)
	d["regions"] = strings.Join(o.filter.classes, ",")
	d["skip_file_ro"] = strconv.FormatBool(o.filter.skipFileRO)
	d["max_process_bytes"] = strconv.FormatUint(o.maxProcess, 10)
	d["max_total_bytes"] = strconv.FormatUint(o.maxTotal, 10)

	warn := warnings{log: env.Logger}
	targets, refused, err := selectProcesses(env, o)
	if err != nil {
		return res, err
	}
	var failures []error
	for _, pid := range slices.Sorted(maps.Keys(refused)) {
		failures = append(failures, refused[pid])
		d[fmt.Sprintf("pid.%d.error", pid)] = refused[pid].Error()
		warn.add("%v", refused[pid])
	}
	finish := func(err error) (Result, error) {
		res.Warnings = warn.result()
		return res, err
	}
	if len(targets) == 0 {
		if len(failures) == 0 {
			return finish(fmt.Errorf("process_memory: %w: no process matches the selection", ErrNoProcess))
		}
		return finish(fmt.Errorf("process_memory: %w: %w", ErrNoProcess, joinProcMemFailures(failures)))
	}

	c := &procMemCapture{
		env: env, o: o, arch: arch,
		pageSize: uint64(os.Getpagesize()),
		tw:       tar.NewWriter(w),
		skips:    &procSkipLog{max: procMemMaxSkipped},
		warn:     &warn,
		details:  d,
		buf:      make([]byte, procMemReadBuf),
		zeros:    make([]byte, 64<<10),
		methods:  map[string]bool{},
	}
	c.ownNS = procRootIsOwn(env.ProcRoot)
	c.remaining = o.maxTotal
	if c.remaining == 0 {
		c.remaining = ^uint64(0)
	}
	captured := 0
	for _, t := range targets {
		if err := ctx.Err(); err != nil {
			res.Skipped = c.skips.ranges
			return finish(err)
		}
		started, err := c.process(ctx, t)
		if err == nil {
			captured++
			continue
		}
		if started || ctx.Err() != nil {
			// The tar member is cut short: nothing after it could be read.
			res.Skipped = c.skips.ranges
			return finish(fmt.Errorf("process_memory: %w", err))
		}
		failures = append(failures, err)
		d[fmt.Sprintf("pid.%d.error", t.pid)] = err.Error()
		warn.add("%v", err)
	}
	res.Skipped = c.skips.ranges
	d["processes"] = fmt.Sprintf("%d selected, %d captured", len(targets)+len(refused), captured)
	d["read_method"] = strings.Join(slices.Sorted(maps.Keys(c.methods)), ",")
	if captured == 0 {
		return finish(fmt.Errorf("process_memory: nothing captured: %w", joinProcMemFailures(failures)))
	}
	if err := c.tw.Close(); err != nil {
		return finish(fmt.Errorf("process_memory: %w", err))
	}
	return finish(nil)
}

// procMemCapture is one run of the artifact: the shared tar stream and the
// budget that spans its processes.
type procMemCapture struct {
	env        Env
	o          procMemOptions
	arch       elfcore.Arch
	pageSize   uint64
	tw         *tar.Writer
	skips      *procSkipLog
	warn       *warnings
	details    map[string]string
	ownNS      bool   // env.ProcRoot is the agent's own procfs
	remaining  uint64 // of max_total_bytes
	buf, zeros []byte
	methods    map[string]bool
}

type procMemOutcome struct {
	started bool
	err     error
}

// joinProcMemFailures joins per-process errors for the artifact's error,
// keeping every one for errors.Is but only the first few in the text: a
// broad selection on a host the agent may not read can fail hundreds of
// times, and each failure is in Details already.
func joinProcMemFailures(errs []error) error {
	const shown = 5
	if len(errs) <= shown {
		return errors.Join(errs...)
	}
	return &procMemFailures{errs: errs, shown: shown}
}

type procMemFailures struct {
	errs  []error
	shown int
}

func (f *procMemFailures) Error() string {
	return fmt.Sprintf("%v\n(and %d more, listed in details)", errors.Join(f.errs[:f.shown]...), len(f.errs)-f.shown)
}

func (f *procMemFailures) Unwrap() []error { return f.errs }

// process captures one process. started reports whether its tar member was
// begun: after that a failure leaves the stream cut short.
func (c *procMemCapture) process(ctx context.Context, t procTarget) (started bool, err error) {
	if !c.o.freeze {
		return c.capture(ctx, t)
	}
	out := runOnLockedThread(func() procMemOutcome {
		started, err := c.capture(ctx, t)
		return procMemOutcome{started, err}
	})
	return out.started, out.err
}

func (c *procMemCapture) capture(ctx context.Context, t procTarget) (started bool, err error) {
	procRoot := c.env.ProcRoot
	key := "pid." + strconv.Itoa(t.pid)
	mem, err := openProcMemReader(procRoot, t.pid, t.start, c.ownNS)
	if err != nil {
		return false, err
	}
	defer mem.Close()

	var fr *freezer
	var frozenAt time.Time
	switch {
	case c.o.freeze && !c.ownNS:
		// ptrace takes pids of the agent's namespace, not procRoot's.
		c.details[key+".freeze"] = "not frozen: " + procRoot + " is not the agent's own procfs, so its pids cannot be traced"
		c.warn.add("pid %d: not frozen: %s is not the agent's own procfs", t.pid, procRoot)
	case c.o.freeze:
		fr, err = freezeProcess(ctx, procRoot, t.pid)
		switch {
		case ctx.Err() != nil:
			return false, ctx.Err()
		case err != nil:
			// Memory read unfrozen is still evidence; say so and go on.
			err = c.freezeRefused(t.pid, err)
			c.details[key+".freeze"] = "not frozen: " + err.Error()
			c.warn.add("%v; captured without freezing", err)
			fr = nil
		default:
			frozenAt = time.Now()
			// Normally thawed below, as soon as memory is read; this is for
			// every early return.
			defer fr.thaw()
		}
	}

	regions, err := readProcRegions(procRoot, t.pid)
	if err != nil {
		return false, err
	}
	if err := mem.probe(regions); errors.Is(err, errProcExited) {
		return false, fmt.Errorf("pid %d: %w", t.pid, ErrProcessGone)
	} else if err != nil {
		return false, ptraceError(t.pid, "read memory", err, yamaPtraceScope(procRoot), agentHasCapSysPtrace())
	}
	info, err := readCoreProcInfo(procRoot, t.pid)
	if err != nil {
		return false, fmt.Errorf("pid %d: %w", t.pid, err)
	}
	if info.auxv == nil {
		// /proc/PID/auxv is mode 0400, like mem; the vector itself lies on
		// the process's initial stack, readable like any other memory.
		info.auxv, err = auxvFromStack(mem, info.stat.StartStack)
		if err != nil {
			c.warn.add("pid %d: no auxiliary vector (%v): gdb will not relocate a PIE executable's symbols", t.pid, err)
		} else {
			c.details[key+".auxv"] = "read from the initial stack (/proc/PID/auxv unreadable)"
		}
	}
	threads, regs, err := readCoreThreads(procRoot, info, fr, c.arch)
	if err != nil {
		return false, err
	}
	limit := c.remaining
	if c.o.maxProcess > 0 {
		limit = min(limit, c.o.maxProcess)
	}
	plan := planRegions(regions, c.o.filter, limit, c.pageSize)
	notes, err := buildCoreNotes(c.arch, info, threads, regions, c.pageSize)
	if err != nil {
		return false, fmt.Errorf("pid %d: %w", t.pid, err)
	}
	core := &elfcore.Core{Machine: c.arch.Machine, Align: c.pageSize, Notes: notes}
	for _, s := range plan.segments {
		core.Segments = append(core.Segments, elfcore.Segment{Vaddr: s.Start, Size: s.End - s.Start, Flags: s.Flags})
	}

	name := coreName(t.pid, t.comm)
	hdr := &tar.Header{
		Typeflag: tar.TypeReg,
		Name:     name,
		Size:     core.Size(),
		Mode:     0o640,
		ModTime:  c.env.Now().UTC(),
		Format:   tar.FormatPAX,
	}
	if err := c.tw.WriteHeader(hdr); err != nil {
		return true, fmt.Errorf("pid %d: %w", t.pid, err)
	}
	if _, err := core.WriteHeader(c.tw); err != nil {
		return true, fmt.Errorf("pid %d: %w", t.pid, err)
	}
	s := &coreStreamer{
		src: mem, w: c.tw, buf: c.buf, zeros: c.zeros, pageSize: c.pageSize,
		skips: c.skips, label: fmt.Sprintf("pid %d (%s)", t.pid, t.comm),
	}
	skippedBefore := len(c.skips.ranges)
	for _, seg := range plan.segments {
		if err := s.stream(ctx, seg.Start, seg.End); err != nil {
			return true, fmt.Errorf("pid %d: read %#x-%#x: %w", t.pid, seg.Start, seg.End, err)
		}
	}
	if fr != nil {
		held := time.Since(frozenAt)
		stopped := len(fr.stopped())
		note := fmt.Sprintf("stopped %d threads for %v", stopped, held.Round(time.Millisecond))
		if n := fr.notStopped(); n > 0 {
			note += fmt.Sprintf("; %d threads did not stop within %v and ran on", n, freezeTimeout)
			c.warn.add("pid %d: %d threads did not stop within %v", t.pid, n, freezeTimeout)
		}
		if err := fr.thaw(); err != nil {
			c.warn.add("pid %d: %v", t.pid, err)
			note += "; detach: " + err.Error()
		}
		c.details[key+".freeze"] = note
	}
	c.remaining -= plan.bytes
	c.methods[mem.method()] = true

	c.details[key] = name
	c.details[key+".start_ticks"] = strconv.FormatUint(t.start, 10)
	// The executable to hand gdb beside the core.
	if exe, err := os.Readlink(filepath.Join(procRoot, strconv.Itoa(t.pid), "exe")); err == nil {
		c.details[key+".exe"] = exe
	}
	c.details[key+".registers"] = regs
	for _, n := range notes {
		if n.Name == xstateOwnerNonStandard {
			c.details[key+".xstate"] = "NT_X86_XSTATE kept under note owner " + xstateOwnerNonStandard +
				": this CPU's XSAVE layout is not Intel's standard one, which gdb assumes; SSE registers are in NT_FPREGSET"
			break
		}
	}
	c.details[key+".captured"] = fmt.Sprintf("%d segments, %s, %d threads; unreadable and zero-filled: %s in %d ranges",
		len(plan.segments), procMemBytes(plan.bytes), len(threads), procMemBytes(plan.bytes-s.read), len(c.skips.ranges)-skippedBefore)
	excluded := fmt.Sprintf("%d regions by filter (%s), %d not readable or device memory", plan.filtered, procMemBytes(plan.filteredBytes), plan.unreadable)
	if plan.headerPages > 0 || plan.modifiedRO > 0 {
		excluded += fmt.Sprintf("; of read-only file mappings, kept %d modified in memory and the ELF header page of %d", plan.modifiedRO, plan.headerPages)
	}
	if plan.capped > 0 {
		excluded += fmt.Sprintf("; %d regions cut or left out by a byte cap (%s)", plan.capped, procMemBytes(plan.cappedBytes))
		c.warn.add("pid %d: byte cap reached: %s in %d regions not captured", t.pid, procMemBytes(plan.cappedBytes), plan.capped)
	}
	c.details[key+".excluded"] = excluded
	if plan.dontDump > 0 {
		c.details[key+".dontdump"] = fmt.Sprintf("%d captured regions are marked MADV_DONTDUMP, which the kernel's and gcore's cores leave out", plan.dontDump)
	}
	return true, nil
}

// freezeRefused names why ptrace could not stop a process whose memory the
// agent can read: the process is already traced (a debugger, or malware's
// classic guard of tracing itself), or seccomp forbids ptrace while
// process_vm_readv is allowed.
func (c *procMemCapture) freezeRefused(pid int, err error) error {
	if errors.Is(err, syscall.EPERM) {
		if tracer := procTracerPID(c.env.ProcRoot, pid); tracer > 0 {
			return fmt.Errorf("pid %d: freeze: already traced by pid %d (a debugger, or the process guarding itself against one)", pid, tracer)
		}
	}
	return ptraceError(pid, "freeze", err, yamaPtraceScope(c.env.ProcRoot), agentHasCapSysPtrace())
}

func procTracerPID(procRoot string, pid int) int {
	b, err := readSmall(filepath.Join(procRoot, strconv.Itoa(pid), "status"))
	if err != nil {
		return 0
	}
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, "TracerPid:"); ok {
			n, _ := strconv.Atoi(strings.TrimSpace(v))
			return n
		}
	}
	return 0
}

// readProcRegions reads /proc/PID/smaps, or maps where smaps does not exist
// (kernels without CONFIG_PROC_PAGE_MONITOR).
func readProcRegions(procRoot string, pid int) ([]procRegion, error) {
	dir := filepath.Join(procRoot, strconv.Itoa(pid))
	f, err := os.Open(filepath.Join(dir, "smaps"))
	if errors.Is(err, os.ErrNotExist) {
		if _, serr := os.Stat(dir); serr == nil {
			f, err = os.Open(filepath.Join(dir, "maps"))
		}
	}
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("pid %d: %w", pid, ErrProcessGone)
		}
		// The open of smaps is a ptrace access check of its own.
		return nil, ptraceError(pid, "read memory map", err, yamaPtraceScope(procRoot), agentHasCapSysPtrace())
	}
	defer f.Close()
	regions, err := parseRegions(f)
	if err != nil {
		return nil, fmt.Errorf("pid %d: %s: %w", pid, f.Name(), err)
	}
	return regions, nil
}
