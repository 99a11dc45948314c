package artifact

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"github.com/custodyhq/custody/internal/testenv"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// lines splits JSON Lines output and fails on any line that is not one
// complete JSON value: a newline smuggled through comm or cmdline would show
// up here as two broken lines.
func lines(t *testing.T, out []byte) [][]byte {
	t.Helper()
	if len(out) == 0 {
		return nil
	}
	if out[len(out)-1] != '\n' {
		t.Errorf("output does not end in a newline")
	}
	ls := bytes.Split(bytes.TrimSuffix(out, []byte("\n")), []byte("\n"))
	for i, l := range ls {
		if !json.Valid(l) {
			t.Errorf("line %d is not valid JSON: %q", i+1, l)
		}
	}
	return ls
}

func decodeProcesses(t *testing.T, out []byte) []processRecord {
	t.Helper()
	var recs []processRecord
	for _, l := range lines(t, out) {
		var r processRecord
		if err := json.Unmarshal(l, &r); err != nil {
			t.Fatalf("%q: %v", l, err)
		}
		recs = append(recs, r)
	}
	return recs
}

func TestProcessesGolden(t *testing.T) {
	out, res := collect(t, "processes", fakeEnv(), nil)
	golden(t, "processes.golden", out)

	recs := decodeProcesses(t, out)
	var pids []int
	for _, r := range recs {
		pids = append(pids, r.PID)
	}
	if diff := cmp.Diff([]int{1, 2, 4242, 31337}, pids); diff != "" {
		t.Errorf("pids (-want +got):\n%s", diff)
	}
	want := Result{Source: "procfs:" + filepath.Join("testdata", "proc"), Records: 4}
	if diff := cmp.Diff(want, res); diff != "" {
		t.Errorf("Result (-want +got):\n%s", diff)
	}
}

func TestProcessesFields(t *testing.T) {
	out, _ := collect(t, "processes", fakeEnv(), nil)
	recs := decodeProcesses(t, out)
	byPID := map[int]processRecord{}
	for _, r := range recs {
		byPID[r.PID] = r
	}

	deleted := byPID[31337]
	if deleted.Path != "/dev/shm/kworker" || deleted.ExeDeleted == nil || !*deleted.ExeDeleted {
		t.Errorf("pid 31337 path %q exe_deleted %v, want the suffix stripped and true", deleted.Path, deleted.ExeDeleted)
	}
	// btime 1700000000 plus 123456 ticks of 10 ms.
	if deleted.StartTime == nil || *deleted.StartTime != 1700001234 || deleted.StartTimeRFC3339 != "2023-11-14T22:33:54Z" {
		t.Errorf("pid 31337 start_time %v %q", deleted.StartTime, deleted.StartTimeRFC3339)
	}
	if deleted.UID == nil || *deleted.UID != 33 || deleted.Parent == nil || *deleted.Parent != 4242 {
		t.Errorf("pid 31337 uid %v parent %v", deleted.UID, deleted.Parent)
	}

	kthread := byPID[2]
	if kthread.Path != "" || kthread.CmdlineArgs == nil || len(kthread.CmdlineArgs) != 0 || kthread.Error != "" {
		t.Errorf("kernel thread = %+v, want no path, empty (not null) args, no error", kthread)
	}

	// The hostile process: ")" inside comm must not shift the stat fields,
	// and a newline inside an argument must stay inside that argument.
	evil := byPID[4242]
	if evil.Name != "ev)il\n\x00\uFFFD\uFFFD" || evil.State != "R" || evil.Threads == nil || *evil.Threads != 3 {
		t.Errorf("pid 4242 name %q state %q threads %v", evil.Name, evil.State, evil.Threads)
	}
	if len(evil.CmdlineArgs) != 5 || evil.CmdlineArgs[0] != "./x\nfake line" {
		t.Errorf("pid 4242 cmdline_args %q", evil.CmdlineArgs)
	}
	if evil.EUID == nil || *evil.EUID != 0 || evil.UID == nil || *evil.UID != 1000 {
		t.Errorf("pid 4242 uid %v euid %v, want 1000 and 0 (setuid)", evil.UID, evil.EUID)
	}
}

// TestProcessesVanished models a process that exits between the listing and
// the read: it is left out without a warning.
func TestProcessesVanished(t *testing.T) {
	root := t.TempDir()
	copyTree(t, filepath.Join("testdata", "proc"), root)
	if err := os.Remove(filepath.Join(root, "4242", "status")); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(filepath.Join(root, "31337")); err != nil {
		t.Fatal(err)
	}
	env := fakeEnv()
	env.ProcRoot = root
	out, res := collect(t, "processes", env, nil)
	var pids []int
	for _, r := range decodeProcesses(t, out) {
		pids = append(pids, r.PID)
	}
	if diff := cmp.Diff([]int{1, 2}, pids); diff != "" {
		t.Errorf("pids (-want +got):\n%s", diff)
	}
	if res.Records != 2 || len(res.Warnings) != 0 {
		t.Errorf("Result = %+v, want 2 records and no warnings", res)
	}
}

func TestProcessesNoBootTime(t *testing.T) {
	root := t.TempDir()
	copyTree(t, filepath.Join("testdata", "proc"), root)
	if err := os.Remove(filepath.Join(root, "stat")); err != nil {
		t.Fatal(err)
	}
	env := fakeEnv()
	env.ProcRoot = root
	out, res := collect(t, "processes", env, nil)
	for _, r := range decodeProcesses(t, out) {
		if r.StartTime != nil || r.StartTimeRFC3339 != "" || r.Name == "" {
			t.Errorf("pid %d: start_time %v %q name %q, want no start time but the rest", r.PID, r.StartTime, r.StartTimeRFC3339, r.Name)
		}
	}
	if res.Records != 4 || len(res.Warnings) != 1 {
		t.Errorf("Result = %+v, want 4 records and one warning", res)
	}
}

const childProcRoot = "CUSTODY_ARTIFACT_TEST_PROCROOT"

// TestProcessesPermissionDenied needs a read the kernel refuses. Root is
// never refused by file modes, so as root the test re-runs itself as nobody.
func TestProcessesPermissionDenied(t *testing.T) {
	if root := os.Getenv(childProcRoot); root != "" {
		checkPermissionDenied(t, root)
		t.Log("permission-denied check ran")
		return
	}

	// Everything the unprivileged child touches must be reachable by it,
	// and t.TempDir is private to root.
	dir, err := os.MkdirTemp("", "custody-artifact-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	root := filepath.Join(dir, "proc")
	copyTree(t, filepath.Join("testdata", "proc"), root)
	if err := os.Chmod(filepath.Join(root, "31337", "status"), 0); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{dir, root} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}

	if os.Geteuid() != 0 {
		checkPermissionDenied(t, root)
		return
	}
	bin := filepath.Join(dir, "artifact.test")
	copyFile(t, os.Args[0], bin, 0o755)
	cmd := exec.Command(bin, "-test.run=^TestProcessesPermissionDenied$", "-test.v", "-test.count=1")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), childProcRoot+"="+root)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.CombinedOutput()
	if errors.Is(err, syscall.EPERM) {
		testenv.Skip(t, "cannot switch to uid 65534 to provoke EACCES: %v", err)
	}
	if err != nil {
		t.Fatalf("child as uid 65534: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "permission-denied check ran") {
		t.Fatalf("child did not run the check:\n%s", out)
	}
}

func checkPermissionDenied(t *testing.T, root string) {
	env := fakeEnv()
	env.ProcRoot = root
	out, res := collect(t, "processes", env, nil)
	recs := decodeProcesses(t, out)
	if len(recs) != 4 {
		t.Fatalf("got %d records, want all 4: a refused field must not drop the process", len(recs))
	}
	var denied processRecord
	for _, r := range recs {
		if r.PID == 31337 {
			denied = r
		} else if r.Error != "" {
			t.Errorf("pid %d: unexpected error %q", r.PID, r.Error)
		}
	}
	if denied.UID != nil || denied.GID != nil || denied.EUID != nil || denied.EGID != nil {
		t.Errorf("pid 31337 ids = %v %v %v %v, want null", denied.UID, denied.GID, denied.EUID, denied.EGID)
	}
	if !strings.HasPrefix(denied.Error, "status: ") || !strings.Contains(denied.Error, "permission denied") {
		t.Errorf("pid 31337 error = %q, want a status permission error", denied.Error)
	}
	if denied.Name != "kworker" || denied.Path != "/dev/shm/kworker" {
		t.Errorf("pid 31337 lost readable fields: name %q path %q", denied.Name, denied.Path)
	}
	if len(res.Warnings) != 1 || !strings.Contains(res.Warnings[0], "pid 31337") {
		t.Errorf("warnings = %q, want one naming pid 31337", res.Warnings)
	}
}

func copyFile(t *testing.T, src, dst string, perm os.FileMode) {
	t.Helper()
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, perm)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestProcessesCancelled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	k, _ := Lookup("processes")
	var buf bytes.Buffer
	_, err := k.Collect(ctx, fakeEnv(), nil, &buf)
	if !errors.Is(err, context.Canceled) {
		t.Errorf("error = %v, want context.Canceled", err)
	}
	if buf.Len() != 0 {
		t.Errorf("wrote %d bytes after cancellation", buf.Len())
	}
}

// TestProcessesRealProc runs against the live kernel: the one place where
// procfs formats are not ours to choose.
func TestProcessesRealProc(t *testing.T) {
	if _, err := os.Stat("/proc/self/stat"); err != nil {
		testenv.Skip(t, "no procfs mounted at /proc: %v", err)
	}
	out, res := collect(t, "processes", Env{}, nil)
	recs := decodeProcesses(t, out)
	if res.Records != len(recs) {
		t.Errorf("Records = %d, lines = %d", res.Records, len(recs))
	}
	for i := 1; i < len(recs); i++ {
		if recs[i-1].PID >= recs[i].PID {
			t.Fatalf("not sorted by pid: %d before %d", recs[i-1].PID, recs[i].PID)
		}
	}
	self := os.Getpid()
	for _, r := range recs {
		if r.PID != self {
			continue
		}
		if r.Parent == nil || *r.Parent != os.Getppid() {
			t.Errorf("own record parent = %v, want %d", r.Parent, os.Getppid())
		}
		exe, _ := os.Executable()
		if r.Path != exe || r.StartTime == nil || r.UID == nil || *r.UID != uint64(os.Getuid()) {
			t.Errorf("own record = %+v, want path %q, a start time and uid %d", r, exe, os.Getuid())
		}
		return
	}
	t.Errorf("own pid %d missing from %d records", self, len(recs))
}

// TestProcessesStreams checks that records reach the writer one line at a
// time rather than in one write at the end.
func TestProcessesStreams(t *testing.T) {
	var w countingWriter
	k, _ := Lookup("processes")
	res, err := k.Collect(context.Background(), fakeEnv(), nil, &w)
	if err != nil {
		t.Fatal(err)
	}
	if w.writes != res.Records {
		t.Errorf("%d writes for %d records", w.writes, res.Records)
	}
}

type countingWriter struct{ writes int }

func (w *countingWriter) Write(p []byte) (int, error) {
	w.writes++
	if n := bytes.Count(p, []byte("\n")); n != 1 || p[len(p)-1] != '\n' {
		return 0, errors.New("a write that is not exactly one line")
	}
	return len(p), nil
}
