package artifact

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"debug/elf"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/custodyhq/custody/internal/elfcore"
	"github.com/custodyhq/custody/internal/testenv"
)

// These tests capture a real process — a small C program built here with
// gcc, testdata/procmem/target.c — and load the result in gdb, the
// responder's own tool.

const procMemGlobal = 0x5ca1ab1e

// buildProcMemTarget compiles the target into dir (made readable to every
// user, for the capability test's unprivileged child).
func buildProcMemTarget(t *testing.T, dir string) string {
	t.Helper()
	gcc := testenv.NeedTool(t, "gcc")
	src, err := filepath.Abs(filepath.Join("testdata", "procmem", "target.c"))
	if err != nil {
		t.Fatal(err)
	}
	exe := filepath.Join(dir, "pmtarget")
	// -g: gdb prints custody_global by name and type. Built as PIE, gcc's
	// default, so gdb must relocate through the core's auxiliary vector.
	if out, err := exec.Command(gcc, "-g", "-O0", "-pthread", "-o", exe, src).CombinedOutput(); err != nil {
		t.Fatalf("gcc: %v\n%s", err, out)
	}
	return exe
}

// procMemTarget is a running target.
type procMemTarget struct {
	exe    string
	pid    int // in the test's pid namespace
	heap   uint64
	beyond uint64
	ticks  atomic.Uint64 // last heartbeat
	marker string
}

// startProcMemTarget runs the target, behind wrap (such as unshare) if
// given, and waits for it to report its addresses.
func startProcMemTarget(t *testing.T, exe string, wrap []string, extra ...string) *procMemTarget {
	t.Helper()
	tg := &procMemTarget{exe: exe, marker: fmt.Sprintf("CUSTODY-MARKER-%d-%d", os.Getpid(), time.Now().UnixNano())}
	args := append(append(append([]string(nil), wrap...), exe, tg.marker, strconv.Itoa(procMemGlobal)), extra...)
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Stderr = os.Stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	ready := make(chan error, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		first := true
		for sc.Scan() {
			line := sc.Text()
			if first {
				first = false
				var heap, beyond string
				_, err := fmt.Sscanf(line, "ready heap=%s beyond=%s", &heap, &beyond)
				if err == nil {
					tg.heap, err = strconv.ParseUint(strings.TrimPrefix(heap, "0x"), 16, 64)
				}
				if err == nil && beyond != "(nil)" {
					tg.beyond, err = strconv.ParseUint(strings.TrimPrefix(beyond, "0x"), 16, 64)
				}
				ready <- err
				continue
			}
			if n, err := strconv.ParseUint(strings.TrimPrefix(line, "tick "), 10, 64); err == nil {
				tg.ticks.Store(n)
			}
		}
		ready <- errors.New("target ended before it was ready")
	}()
	t.Cleanup(func() {
		if tg.pid > 0 {
			syscall.Kill(tg.pid, syscall.SIGKILL)
		}
		cmd.Process.Kill()
		cmd.Wait()
	})
	select {
	case err := <-ready:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("target did not start")
	}
	tg.pid = cmd.Process.Pid
	if len(wrap) > 0 {
		tg.pid = findDescendant(t, cmd.Process.Pid, exe)
	}
	return tg
}

// findDescendant finds the process running exe below pid.
func findDescendant(t *testing.T, pid int, exe string) int {
	t.Helper()
	queue := []int{pid}
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		if l, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", p)); err == nil && l == exe {
			return p
		}
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", p, p))
		for _, f := range strings.Fields(string(b)) {
			if c, err := strconv.Atoi(f); err == nil {
				queue = append(queue, c)
			}
		}
	}
	t.Fatalf("no process running %s below pid %d", exe, pid)
	return 0
}

// waitRunning asserts that the target is untraced, not stopped, and still
// making progress: it prints heartbeats after the capture returned.
func (tg *procMemTarget) waitRunning(t *testing.T) {
	t.Helper()
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", tg.pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(status), "\n") {
		if v, ok := strings.CutPrefix(line, "TracerPid:"); ok && strings.TrimSpace(v) != "0" {
			t.Errorf("target still traced after the capture: %s", line)
		}
		if v, ok := strings.CutPrefix(line, "State:"); ok && strings.ContainsAny(strings.TrimSpace(v)[:1], "tT") {
			t.Errorf("target left stopped: %s", line)
		}
	}
	before := tg.ticks.Load()
	deadline := time.Now().Add(30 * time.Second)
	for tg.ticks.Load() <= before+2 {
		if time.Now().After(deadline) {
			t.Fatalf("target made no progress after the capture (heartbeat stuck at %d)", before)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// captureProcMem runs the artifact into a file and returns its path.
func captureProcMem(t *testing.T, ctx context.Context, p Params, w io.Writer) (string, Result, error) {
	t.Helper()
	k, err := Lookup("process_memory")
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "process_memory.tar")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out io.Writer = f
	if w != nil {
		out = io.MultiWriter(f, w)
	}
	res, err := k.Collect(ctx, Env{}, p, out)
	return path, res, err
}

// extractCores unpacks the tar, checking each member is a readable core,
// and returns the paths by member name.
func extractCores(t *testing.T, archive string) map[string]string {
	t.Helper()
	f, err := os.Open(archive)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	dir := t.TempDir()
	cores := map[string]string{}
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return cores
		}
		if err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(dir, filepath.Base(h.Name))
		out, err := os.Create(path)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.Copy(out, tr); err != nil {
			t.Fatal(err)
		}
		out.Close()
		cores[h.Name] = path
	}
}

func readCore(t *testing.T, path string) *elfcore.File {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	fi, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	c, err := elfcore.Read(f, fi.Size())
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// checkGDB loads the core in gdb and checks that it shows the marker at its
// heap address and the global's value through the executable's symbols.
func checkGDB(t *testing.T, tg *procMemTarget, core string, extra ...string) string {
	t.Helper()
	gdb := testenv.NeedTool(t, "gdb")
	args := []string{"-nx", "-batch",
		"-ex", fmt.Sprintf("x/s %#x", tg.heap),
		"-ex", "print custody_global",
		"-ex", "info threads"}
	for _, e := range extra {
		args = append(args, "-ex", e)
	}
	args = append(args, tg.exe, core)
	out, err := exec.Command(gdb, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("gdb: %v\n%s", err, out)
	}
	for _, want := range []string{fmt.Sprintf("%#x:\t\"%s\"", tg.heap, tg.marker), fmt.Sprintf("= %d", procMemGlobal)} {
		if !strings.Contains(string(out), want) {
			t.Errorf("gdb output lacks %q:\n%s", want, out)
		}
	}
	// gdb complains, and carries on, about notes it cannot use and memory
	// it cannot find: both would be defects of the core.
	for _, bad := range []string{"too small", "Cannot access memory", "not a core dump", "is truncated"} {
		if strings.Contains(string(out), bad) {
			t.Errorf("gdb says %q:\n%s", bad, out)
		}
	}
	return string(out)
}

func TestProcessMemoryGDB(t *testing.T) {
	testenv.NeedTool(t, "gdb")
	exe := buildProcMemTarget(t, t.TempDir())
	for _, freeze := range []bool{false, true} {
		t.Run(fmt.Sprintf("freeze=%v", freeze), func(t *testing.T) {
			tg := startProcMemTarget(t, exe, nil)
			archive, res, err := captureProcMem(t, context.Background(),
				Params{"pid": strconv.Itoa(tg.pid), "freeze": strconv.FormatBool(freeze)}, nil)
			if err != nil {
				t.Fatal(err)
			}
			if len(res.Skipped) != 0 {
				t.Errorf("skipped ranges in a healthy process: %+v", res.Skipped)
			}
			if res.Details["freeze"] != strconv.FormatBool(freeze) {
				t.Errorf("details record freeze=%q, want %v", res.Details["freeze"], freeze)
			}
			cores := extractCores(t, archive)
			name := fmt.Sprintf("core.%d.pmtarget", tg.pid)
			if len(cores) != 1 || cores[name] == "" {
				t.Fatalf("archive holds %v, want %s", cores, name)
			}
			// A backtrace needs every register; running, only pc and sp are
			// known, and gdb's walk past the first frame reads garbage.
			var extra []string
			if freeze {
				extra = append(extra, "bt")
			}
			out := checkGDB(t, tg, cores[name], extra...)
			// Four threads: main and three idlers.
			if n := strings.Count(out, "(LWP "); n < 4 {
				t.Errorf("gdb lists %d threads, want 4:\n%s", n, out)
			}
			c := readCore(t, cores[name])
			threads, err := c.Threads()
			if err != nil {
				t.Fatal(err)
			}
			a, _ := elfcore.ArchOf(c.Machine)
			if len(threads) != 4 || int(threads[0].PID) != tg.pid {
				t.Fatalf("core threads %d, first %d; want 4 led by %d", len(threads), threads[0].PID, tg.pid)
			}
			for _, th := range threads {
				// Frozen, every register is read; running, a thread blocked
				// in usleep still gives its pc and sp.
				if elfcore.Reg(th.Regs, a.PC) == 0 || elfcore.Reg(th.Regs, a.SP) == 0 {
					t.Errorf("thread %d: pc %#x sp %#x", th.PID, elfcore.Reg(th.Regs, a.PC), elfcore.Reg(th.Regs, a.SP))
				}
			}
			if freeze {
				if _, ok := c.Note("CORE", elf.NT_FPREGSET); !ok {
					t.Error("frozen capture without NT_FPREGSET")
				}
				if !strings.HasPrefix(res.Details[fmt.Sprintf("pid.%d.freeze", tg.pid)], "stopped 4 threads") {
					t.Errorf("freeze detail %q", res.Details[fmt.Sprintf("pid.%d.freeze", tg.pid)])
				}
				if !strings.Contains(out, "main") {
					t.Errorf("gdb backtrace does not reach main:\n%s", out)
				}
			}
			tg.waitRunning(t)
		})
	}
}

// TestProcessMemoryUnreadable maps pages past the end of a file: the kernel
// refuses to read them. They must come out as zeros listed in Skipped, with
// the readable page beside them intact.
func TestProcessMemoryUnreadable(t *testing.T) {
	dir := t.TempDir()
	exe := buildProcMemTarget(t, dir)
	tg := startProcMemTarget(t, exe, nil, filepath.Join(dir, "short-file"))
	archive, res, err := captureProcMem(t, context.Background(), Params{"pid": strconv.Itoa(tg.pid)}, nil)
	if err != nil {
		t.Fatal(err)
	}
	pg := uint64(os.Getpagesize())
	want := Range{Start: tg.beyond + pg, End: tg.beyond + 4*pg,
		Reason: fmt.Sprintf("pid %d (pmtarget): unreadable: bad address", tg.pid)}
	if len(res.Skipped) != 1 || res.Skipped[0] != want {
		t.Errorf("skipped %+v, want [%+v]", res.Skipped, want)
	}
	cores := extractCores(t, archive)
	core := cores[fmt.Sprintf("core.%d.pmtarget", tg.pid)]
	out := checkGDB(t, tg, core, fmt.Sprintf("x/s %#x", tg.beyond))
	if !strings.Contains(out, `"FIRST-PAGE-READABLE"`) {
		t.Errorf("gdb does not show the readable page:\n%s", out)
	}
	c := readCore(t, core)
	b := make([]byte, 3*pg)
	if _, err := c.ReadMemory(b, tg.beyond+pg); err != nil {
		t.Fatal(err)
	}
	for _, v := range b {
		if v != 0 {
			t.Fatal("unreadable pages are not zero-filled in the core")
		}
	}
}

// TestProcessMemoryPIDNamespace captures a target in its own pid namespace
// from outside it, and from inside a namespace it shares with the target,
// the way a Fargate sidecar with pidMode "task" sees its task.
func TestProcessMemoryPIDNamespace(t *testing.T) {
	testenv.NeedRoot(t)
	unshare := testenv.NeedTool(t, "unshare")
	nsenter := testenv.NeedTool(t, "nsenter")
	dir := t.TempDir()
	exe := buildProcMemTarget(t, dir)

	t.Run("from outside", func(t *testing.T) {
		tg := startProcMemTarget(t, exe, []string{unshare, "--pid", "--fork", "--mount-proc"})
		archive, _, err := captureProcMem(t, context.Background(), Params{"pid": strconv.Itoa(tg.pid)}, nil)
		if err != nil {
			t.Fatal(err)
		}
		cores := extractCores(t, archive)
		checkGDB(t, tg, cores[fmt.Sprintf("core.%d.pmtarget", tg.pid)])
	})

	t.Run("shared namespace", func(t *testing.T) {
		tg := startProcMemTarget(t, exe, []string{unshare, "--pid", "--fork", "--mount-proc"})
		// A second process in the target's namespace runs the capture: it
		// sees the target by its namespace pid, which it finds by name.
		out := filepath.Join(t.TempDir(), "process_memory.tar")
		res := runProcMemHelper(t, []string{nsenter, "--target", strconv.Itoa(tg.pid), "--pid", "--mount", "--"},
			Params{"process_name": "^pmtarget$"}, out)
		if res.Err != "" {
			t.Fatalf("capture inside the namespace: %s", res.Err)
		}
		cores := extractCores(t, out)
		if len(cores) != 1 {
			t.Fatalf("archive holds %v, want the one target", cores)
		}
		for name, path := range cores {
			// pid 1: the target is its namespace's init.
			if name != "core.1.pmtarget" {
				t.Errorf("member %s, want core.1.pmtarget", name)
			}
			checkGDB(t, tg, path)
		}
	})
}

// TestProcessMemoryFreezeLeavesRunning checks that a frozen capture thaws
// the target whether it completes or is cancelled halfway through.
func TestProcessMemoryFreezeLeavesRunning(t *testing.T) {
	exe := buildProcMemTarget(t, t.TempDir())

	t.Run("complete", func(t *testing.T) {
		tg := startProcMemTarget(t, exe, nil)
		_, res, err := captureProcMem(t, context.Background(), Params{"pid": strconv.Itoa(tg.pid), "freeze": "true"}, nil)
		if err != nil {
			t.Fatal(err)
		}
		if res.Details["freeze"] != "true" {
			t.Errorf("freeze not recorded: %v", res.Details)
		}
		tg.waitRunning(t)
	})

	t.Run("cancelled halfway", func(t *testing.T) {
		tg := startProcMemTarget(t, exe, nil)
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		// Cancel once the core's memory is streaming, and check then that
		// the target really is held stopped.
		var frozenSeen atomic.Bool
		w := &cancelAfter{n: 64 << 10, cancel: func() {
			status, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", tg.pid))
			frozenSeen.Store(strings.Contains(string(status), "State:\tt (tracing stop)"))
			cancel()
		}}
		_, _, err := captureProcMem(t, ctx, Params{"pid": strconv.Itoa(tg.pid), "freeze": "true"}, w)
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("cancelled capture returned %v, want context.Canceled", err)
		}
		if !frozenSeen.Load() {
			t.Error("the target was not in a tracing stop while its memory was read")
		}
		tg.waitRunning(t)
	})
}

// cancelAfter calls cancel once n bytes have been written.
type cancelAfter struct {
	n      int
	cancel func()
	done   bool
}

func (c *cancelAfter) Write(p []byte) (int, error) {
	c.n -= len(p)
	if c.n <= 0 && !c.done {
		c.done = true
		c.cancel()
	}
	return len(p), nil
}

// TestProcessMemoryCapabilities runs the capture as an unprivileged user
// holding only CAP_SYS_PTRACE — a Fargate sidecar — against a root target,
// and then with no capability at all, which must fail with ErrPtraceDenied.
func TestProcessMemoryCapabilities(t *testing.T) {
	testenv.NeedRoot(t)
	setpriv := testenv.NeedTool(t, "setpriv")
	dir, err := os.MkdirTemp("", "procmem-caps")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	// The unprivileged child must reach the test binary, the target and
	// its output file.
	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	exe := buildProcMemTarget(t, dir)
	tg := startProcMemTarget(t, exe, nil)
	asNobody := func(caps string) []string {
		return []string{setpriv, "--reuid=65534", "--regid=65534", "--clear-groups",
			"--inh-caps=-all" + caps, "--ambient-caps=-all" + caps, "--bounding-set=-all" + caps, "--"}
	}

	for _, freeze := range []string{"false", "true"} {
		t.Run("CAP_SYS_PTRACE only, freeze="+freeze, func(t *testing.T) {
			out := filepath.Join(dir, "with-cap-"+freeze+".tar")
			res := runProcMemHelper(t, asNobody(",+sys_ptrace"), Params{"pid": strconv.Itoa(tg.pid), "freeze": freeze}, out)
			if res.Err != "" {
				t.Fatalf("capture with CAP_SYS_PTRACE: %s", res.Err)
			}
			if res.CapEff != fmt.Sprintf("%016x", uint64(1)<<capSysPtraceBit) || res.UID != 65534 {
				t.Fatalf("helper ran as uid %d with CapEff %s, want 65534 with CAP_SYS_PTRACE only", res.UID, res.CapEff)
			}
			// /proc/PID/auxv is closed to this agent: gdb printing the PIE
			// executable's global proves the vector found on the stack.
			if res.Details[fmt.Sprintf("pid.%d.auxv", tg.pid)] == "" {
				t.Errorf("auxv not taken from the stack: %v", res.Details)
			}
			if freeze == "true" && !strings.HasPrefix(res.Details[fmt.Sprintf("pid.%d.freeze", tg.pid)], "stopped 4 threads") {
				t.Errorf("not frozen: %v", res.Details)
			}
			cores := extractCores(t, out)
			checkGDB(t, tg, cores[fmt.Sprintf("core.%d.pmtarget", tg.pid)])
		})
	}
	tg.waitRunning(t)

	t.Run("no capabilities", func(t *testing.T) {
		res := runProcMemHelper(t, asNobody(""), Params{"pid": strconv.Itoa(tg.pid)}, filepath.Join(dir, "without-cap.tar"))
		// Under Yama's ptrace_scope 1 or 2 it is Yama that refuses first.
		if scope := yamaPtraceScope("/proc"); scope >= 1 {
			if !res.Scope {
				t.Fatalf("capture without CAP_SYS_PTRACE, ptrace_scope=%d: err %q, want ErrPtraceScope", scope, res.Err)
			}
		} else if !res.Denied {
			t.Fatalf("capture without CAP_SYS_PTRACE: err %q, want ErrPtraceDenied", res.Err)
		}
		if !strings.Contains(res.Err, "CAP_SYS_PTRACE") {
			t.Errorf("error does not say what is missing: %s", res.Err)
		}
	})
}

// procMemHelperResult is what the helper process reports.
type procMemHelperResult struct {
	Err     string
	Details map[string]string
	Denied  bool // errors.Is(err, ErrPtraceDenied)
	Scope   bool // errors.Is(err, ErrPtraceScope)
	UID     int
	CapEff  string
}

// runProcMemHelper runs TestProcessMemoryHelper in a copy of the test
// binary behind wrap, capturing with p into out.
func runProcMemHelper(t *testing.T, wrap []string, p Params, out string) procMemHelperResult {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	// The test binary lives in a private build directory; the child may
	// run as another user.
	dir, err := os.MkdirTemp("", "procmem-helper")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)
	bin := filepath.Join(dir, "artifact.test")
	data, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, data, 0o755); err != nil {
		t.Fatal(err)
	}
	os.Chmod(filepath.Dir(out), 0o777)
	req, _ := json.Marshal(struct {
		Params Params
		Out    string
	}{p, out})
	args := append(append([]string(nil), wrap...), bin, "-test.run=^TestProcessMemoryHelper$", "-test.v")
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CUSTODY_PROCMEM_HELPER="+string(req))
	stdout, err := cmd.Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			t.Logf("helper stderr:\n%s", ee.Stderr)
		}
		t.Fatalf("helper: %v\n%s", err, stdout)
	}
	for _, line := range strings.Split(string(stdout), "\n") {
		if js, ok := strings.CutPrefix(line, "procmem-helper: "); ok {
			var res procMemHelperResult
			if err := json.Unmarshal([]byte(js), &res); err != nil {
				t.Fatal(err)
			}
			return res
		}
	}
	t.Fatalf("helper printed no result:\n%s", stdout)
	return procMemHelperResult{}
}

// TestProcessMemoryHelper is not a test: it is the child process of
// runProcMemHelper, and does nothing unless run as one.
func TestProcessMemoryHelper(t *testing.T) {
	req := os.Getenv("CUSTODY_PROCMEM_HELPER")
	if req == "" {
		return
	}
	var r struct {
		Params Params
		Out    string
	}
	if err := json.Unmarshal([]byte(req), &r); err != nil {
		t.Fatal(err)
	}
	res := procMemHelperResult{UID: os.Getuid()}
	if status, err := os.ReadFile("/proc/self/status"); err == nil {
		for _, line := range strings.Split(string(status), "\n") {
			if v, ok := strings.CutPrefix(line, "CapEff:"); ok {
				res.CapEff = strings.TrimSpace(v)
			}
		}
	}
	f, err := os.Create(r.Out)
	if err != nil {
		t.Fatal(err)
	}
	k, err := Lookup("process_memory")
	if err != nil {
		t.Fatal(err)
	}
	cres, err := k.Collect(context.Background(), Env{}, r.Params, f)
	res.Details = cres.Details
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		res.Err = err.Error()
		res.Denied = errors.Is(err, ErrPtraceDenied)
		res.Scope = errors.Is(err, ErrPtraceScope)
	}
	js, _ := json.Marshal(res)
	fmt.Printf("procmem-helper: %s\n", js)
}

// TestProcessMemoryAuxvFromStack checks the stack walk that stands in for
// /proc/PID/auxv when an agent without the target's uid cannot open it.
func TestProcessMemoryAuxvFromStack(t *testing.T) {
	exe := buildProcMemTarget(t, t.TempDir())
	tg := startProcMemTarget(t, exe, nil)
	want, err := os.ReadFile(fmt.Sprintf("/proc/%d/auxv", tg.pid))
	if err != nil {
		t.Fatal(err)
	}
	start, err := procMemStartTicks("/proc", tg.pid)
	if err != nil {
		t.Fatal(err)
	}
	mem, err := openProcMemReader("/proc", tg.pid, start, true)
	if err != nil {
		t.Fatal(err)
	}
	defer mem.Close()
	info, err := readCoreProcInfo("/proc", tg.pid)
	if err != nil {
		t.Fatal(err)
	}
	got, err := auxvFromStack(mem, info.stat.StartStack)
	if err != nil {
		t.Fatal(err)
	}
	// /proc/PID/auxv may pad after AT_NULL; the vector itself must match.
	if len(got) > len(want) || !bytes.Equal(got, want[:len(got)]) {
		t.Errorf("auxv from the stack:\n%x\nwant (from /proc):\n%x", got, want)
	}
}

// TestProcessMemoryMultiple puts two processes in one archive, and shows a
// byte cap keeping what matters to triage: the heap holding the marker.
func TestProcessMemoryMultiple(t *testing.T) {
	exe := buildProcMemTarget(t, t.TempDir())
	a := startProcMemTarget(t, exe, nil)
	b := startProcMemTarget(t, exe, nil)
	pids := fmt.Sprintf("%d,%d", a.pid, b.pid)

	archive, res, err := captureProcMem(t, context.Background(), Params{"pid": pids}, nil)
	if err != nil {
		t.Fatal(err)
	}
	cores := extractCores(t, archive)
	if len(cores) != 2 {
		t.Fatalf("archive holds %v, want two cores", cores)
	}
	for _, tg := range []*procMemTarget{a, b} {
		checkGDB(t, tg, cores[fmt.Sprintf("core.%d.pmtarget", tg.pid)])
	}
	if res.Details["processes"] != "2 selected, 2 captured" {
		t.Errorf("processes detail %q", res.Details["processes"])
	}

	archive, res, err = captureProcMem(t, context.Background(), Params{"pid": pids, "max_process_bytes": "1MiB"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(res.Warnings, func(w string) bool { return strings.Contains(w, "byte cap reached") }) {
		t.Errorf("no warning of the cap: %q", res.Warnings)
	}
	cores = extractCores(t, archive)
	for _, tg := range []*procMemTarget{a, b} {
		path := cores[fmt.Sprintf("core.%d.pmtarget", tg.pid)]
		c := readCore(t, path)
		var data uint64
		for _, l := range c.Loads {
			data += l.Filesz
		}
		if data > 1<<20 {
			t.Errorf("pid %d: %d bytes of memory under a 1 MiB cap", tg.pid, data)
		}
		buf := make([]byte, len(tg.marker))
		if _, err := c.ReadMemory(buf, tg.heap); err != nil || string(buf) != tg.marker {
			t.Errorf("pid %d: the capped core lost the heap marker: %q, %v", tg.pid, buf, err)
		}
	}
}

// TestProcessMemoryAlreadyTraced freezes a process that a debugger holds:
// ptrace admits one tracer, so the capture goes on unfrozen and says why.
// Malware that traces itself to keep debuggers out meets the same path.
func TestProcessMemoryAlreadyTraced(t *testing.T) {
	gdb := testenv.NeedTool(t, "gdb")
	exe := buildProcMemTarget(t, t.TempDir())
	tg := startProcMemTarget(t, exe, nil)
	holder := exec.Command(gdb, "-nx", "-batch", "-p", strconv.Itoa(tg.pid), "-ex", "shell sleep 60")
	if err := holder.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		holder.Process.Kill()
		holder.Wait()
	})
	deadline := time.Now().Add(30 * time.Second)
	for procTracerPID("/proc", tg.pid) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("gdb did not attach")
		}
		time.Sleep(10 * time.Millisecond)
	}
	archive, res, err := captureProcMem(t, context.Background(), Params{"pid": strconv.Itoa(tg.pid), "freeze": "true"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if d := res.Details[fmt.Sprintf("pid.%d.freeze", tg.pid)]; !strings.Contains(d, "already traced by pid") {
		t.Errorf("freeze detail %q, want it to name the tracer", d)
	}
	checkGDB(t, tg, extractCores(t, archive)[fmt.Sprintf("core.%d.pmtarget", tg.pid)])
	// Once the debugger is gone the target runs again: the capture did not
	// leave a stop of its own behind.
	holder.Process.Kill()
	holder.Wait()
	tg.waitRunning(t)
}
