package artifact

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/custodyhq/custody/internal/testenv"
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
	if diff := cmp.Diff([]int{1, 2, 777, 778, 4242, 31337}, pids); diff != "" {
		t.Errorf("pids (-want +got):\n%s", diff)
	}
	if res.Source != "procfs:"+filepath.Join("testdata", "proc") || res.Records != 6 {
		t.Errorf("Result = %+v", res)
	}
	// The hostile process's exe does not exist on this machine, and says so.
	if len(res.Warnings) != 1 || !strings.Contains(res.Warnings[0], "pid 4242: exe_sha256:") {
		t.Errorf("warnings = %q, want one for pid 4242's unreadable exe", res.Warnings)
	}
	for k, want := range map[string]string{"processes_scanned": "6", "processes_vanished": "0", "errors": "1", "exe_hashed": "3", "environment": "not collected"} {
		if res.Details[k] != want {
			t.Errorf("Details[%s] = %q, want %q (all: %v)", k, res.Details[k], want, res.Details)
		}
	}
	if _, err := strconv.Atoi(res.Details["scan_duration_ms"]); err != nil {
		t.Errorf("Details[scan_duration_ms] = %q: %v", res.Details["scan_duration_ms"], err)
	}
}

func TestProcessesFields(t *testing.T) {
	out, _ := collect(t, "processes", fakeEnv(), nil)
	byPID := map[int]processRecord{}
	for _, r := range decodeProcesses(t, out) {
		byPID[r.PID] = r
	}
	sha := func(s string) string { return fmt.Sprintf("%x", sha256.Sum256([]byte(s))) }

	deleted := byPID[31337]
	if deleted.Path != "../../dev/shm/kworker" || deleted.ExeDeleted == nil || !*deleted.ExeDeleted {
		t.Errorf("pid 31337 path %q exe_deleted %v, want the suffix stripped and true", deleted.Path, deleted.ExeDeleted)
	}
	// The deleted binary is still hashed, through the exe link.
	if deleted.ExeSHA256 == nil || *deleted.ExeSHA256 != sha("fake self-deleting implant\n") {
		t.Errorf("pid 31337 exe_sha256 = %v", deleted.ExeSHA256)
	}
	// btime 1700000000 plus 123456 ticks of 10 ms.
	if deleted.StartTime == nil || *deleted.StartTime != 1700001234 || deleted.StartTimeRFC3339 != "2023-11-14T22:33:54Z" {
		t.Errorf("pid 31337 start_time %v %q", deleted.StartTime, deleted.StartTimeRFC3339)
	}
	if deleted.UID == nil || *deleted.UID != 33 || deleted.Parent == nil || *deleted.Parent != 4242 || deleted.User != "www-data" {
		t.Errorf("pid 31337 uid %v user %q parent %v", deleted.UID, deleted.User, deleted.Parent)
	}
	// Hybrid cgroup host: the unified line says "/", v1 says where it is.
	wantECS := "8ac6a5a8c1f24e1c9c85b3a4e6e7c5c1"
	if deleted.ECSTaskID != wantECS || deleted.ContainerID != wantECS+"-3677734812" || deleted.ContainerRuntime != "ecs" ||
		deleted.CgroupPath != "/ecs/"+wantECS+"/"+wantECS+"-3677734812" {
		t.Errorf("pid 31337 cgroup %q container %q %q task %q", deleted.CgroupPath, deleted.ContainerID, deleted.ContainerRuntime, deleted.ECSTaskID)
	}

	kthread := byPID[2]
	if kthread.Path != "" || kthread.CmdlineArgs == nil || len(kthread.CmdlineArgs) != 0 || kthread.Error != "" || kthread.ExeSHA256 != nil {
		t.Errorf("kernel thread = %+v, want no path, no hash, empty (not null) args, no error", kthread)
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
	if evil.EUID == nil || *evil.EUID != 0 || evil.UID == nil || *evil.UID != 1000 || evil.User != "alice" || evil.EUser != "root" {
		t.Errorf("pid 4242 uid %v (%q) euid %v (%q), want 1000 alice and 0 root (setuid)", evil.UID, evil.User, evil.EUID, evil.EUser)
	}
	if evil.LoginUID == nil || *evil.LoginUID != 1000 || evil.Cwd != "/tmp" {
		t.Errorf("pid 4242 login_uid %v cwd %q", evil.LoginUID, evil.Cwd)
	}
	if evil.Environment != nil {
		t.Errorf("environment collected without with_env: %q", *evil.Environment)
	}

	// The container: its own namespaces, its own passwd, its pid inside.
	nginx := byPID[778]
	wantCID := "3f4e5d6c7b8a99887766554433221100ffeeddccbbaa00998877665544332211"
	if nginx.ContainerID != wantCID || nginx.ContainerRuntime != "docker" || nginx.CgroupPath != "/system.slice/docker-"+wantCID+".scope" {
		t.Errorf("pid 778 container %q runtime %q cgroup %q", nginx.ContainerID, nginx.ContainerRuntime, nginx.CgroupPath)
	}
	if nginx.User != "nginx" || nginx.Group != "nginx" || *nginx.UID != 101 {
		t.Errorf("pid 778 uid %v user %q group %q, want 101 resolved in the container's /etc/passwd", *nginx.UID, nginx.User, nginx.Group)
	}
	host := byPID[1]
	if nginx.NSPid == nil || *nginx.NSPid != 7 || nginx.PIDNamespace == nil || *nginx.PIDNamespace == *host.PIDNamespace ||
		*nginx.NetNamespace != 4026532305 || *nginx.UserNamespace != *host.UserNamespace {
		t.Errorf("pid 778 ns_pid %v pid_ns %v net_ns %v user_ns %v", nginx.NSPid, nginx.PIDNamespace, nginx.NetNamespace, nginx.UserNamespace)
	}
	// setproctitle leaves one string with spaces and no NULs: one argument.
	if diff := cmp.Diff([]string{"nginx: worker process"}, nginx.CmdlineArgs); diff != "" {
		t.Errorf("pid 778 cmdline_args (-want +got):\n%s", diff)
	}
	if nginx.ResidentSize == nil || *nginx.ResidentSize != 2800*1024 || *nginx.TotalSize != 10740*1024 ||
		*nginx.UserTime != 120 || *nginx.SystemTime != 340 {
		t.Errorf("pid 778 rss %v total %v utime %v stime %v", nginx.ResidentSize, nginx.TotalSize, nginx.UserTime, nginx.SystemTime)
	}
	master := byPID[777]
	wantCaps := []string{"cap_chown", "cap_dac_override", "cap_fowner", "cap_fsetid", "cap_kill", "cap_setgid", "cap_setuid",
		"cap_setpcap", "cap_net_bind_service", "cap_net_raw", "cap_sys_chroot", "cap_mknod", "cap_audit_write", "cap_setfcap"}
	if diff := cmp.Diff(wantCaps, master.CapEffNames); diff != "" || master.CapEffective != "00000000a80425fb" {
		t.Errorf("pid 777 cap_effective %q, names (-want +got):\n%s", master.CapEffective, diff)
	}
	if host.ExeSHA256 == nil || *host.ExeSHA256 != sha("fake systemd image\n") || host.LoginUID == nil || *host.LoginUID != 4294967295 {
		t.Errorf("pid 1 exe_sha256 %v login_uid %v", host.ExeSHA256, host.LoginUID)
	}
	if len(host.CapEffNames) != len(capNames) {
		t.Errorf("pid 1 has %d capabilities named, want all %d", len(host.CapEffNames), len(capNames))
	}
}

func TestProcessesEnvironment(t *testing.T) {
	tests := []struct {
		params Params
		want   []string
		detail string
	}{
		{Params{"with_env": "true"}, []string{
			"AWS_SECRET_ACCESS_KEY=<redacted>", "DATABASE_URL=postgres://app:<redacted>@db:5432/x",
			"PWD=/tmp", "LD_PRELOAD=/tmp/libevil.so", "NOEQUALS",
		}, "redacted"},
		{Params{"with_env": "1", "env_unredacted": "true"}, []string{
			"AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI", "DATABASE_URL=postgres://app:hunter2@db:5432/x",
			"PWD=/tmp", "LD_PRELOAD=/tmp/libevil.so", "NOEQUALS",
		}, "unredacted"},
		// Asking for unredacted values is asking for the environment.
		{Params{"env_unredacted": "true"}, []string{
			"AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI", "DATABASE_URL=postgres://app:hunter2@db:5432/x",
			"PWD=/tmp", "LD_PRELOAD=/tmp/libevil.so", "NOEQUALS",
		}, "unredacted"},
	}
	for _, tt := range tests {
		out, res := collect(t, "processes", fakeEnv(), tt.params)
		for _, r := range decodeProcesses(t, out) {
			if r.PID != 4242 {
				continue
			}
			if r.Environment == nil {
				t.Fatalf("%v: no environment", tt.params)
			}
			if diff := cmp.Diff(tt.want, *r.Environment); diff != "" {
				t.Errorf("%v: environment (-want +got):\n%s", tt.params, diff)
			}
		}
		if res.Details["environment"] != tt.detail {
			t.Errorf("%v: Details[environment] = %q, want %q", tt.params, res.Details["environment"], tt.detail)
		}
	}

	k, _ := Lookup("processes")
	_, err := k.Collect(context.Background(), fakeEnv(), Params{"with_env": "yes please"}, io.Discard)
	if !errors.Is(err, ErrBadParam) {
		t.Errorf("with_env=\"yes please\": err = %v, want ErrBadParam", err)
	}
}

func TestProcessesHostileCmdlineCapped(t *testing.T) {
	env := copyFixture(t, t.TempDir())
	huge := bytes.Repeat([]byte("A\x00\n\xff"), 1<<20)
	if err := os.WriteFile(filepath.Join(env.ProcRoot, "4242", "cmdline"), huge, 0o644); err != nil {
		t.Fatal(err)
	}
	out, _ := collect(t, "processes", env, nil)
	for _, r := range decodeProcesses(t, out) {
		if r.PID != 4242 {
			continue
		}
		if !r.CmdlineTruncated || len(r.Cmdline) > maxCmdline*2 {
			t.Errorf("cmdline of %d bytes: truncated %v, kept %d bytes", len(huge), r.CmdlineTruncated, len(r.Cmdline))
		}
	}
}

// TestProcessesVanished models a process that exits between the listing and
// the read: it is left out without a warning.
func TestProcessesVanished(t *testing.T) {
	env := copyFixture(t, t.TempDir())
	for _, pid := range []string{"4242", "31337"} {
		if err := os.RemoveAll(filepath.Join(env.ProcRoot, pid)); err != nil {
			t.Fatal(err)
		}
	}
	// The listing happens before the read; a directory listed and gone by
	// the time it is read is what a real exit looks like.
	var pids []int
	sc := &processScanner{env: env.withDefaults(), hashes: newExeHasher(), names: newNameResolver(env, 0)}
	for _, pid := range []int{1, 2, 777, 778, 4242, 31337} {
		if l := sc.read(newScratch(), pid, nil); !l.gone {
			pids = append(pids, pid)
		}
	}
	if diff := cmp.Diff([]int{1, 2, 777, 778}, pids); diff != "" {
		t.Errorf("pids (-want +got):\n%s", diff)
	}
}

// TestProcessesMissingFileIsNotExit: a missing file inside a live process
// directory (a damaged or partial /proc) is an error on that column, not a
// reason to drop the process.
func TestProcessesMissingFileIsNotExit(t *testing.T) {
	env := copyFixture(t, t.TempDir())
	if err := os.Remove(filepath.Join(env.ProcRoot, "777", "status")); err != nil {
		t.Fatal(err)
	}
	out, res := collect(t, "processes", env, nil)
	for _, r := range decodeProcesses(t, out) {
		if r.PID == 777 && (!strings.HasPrefix(r.Error, "status: ") || r.UID != nil || r.Name != "nginx") {
			t.Errorf("pid 777 = uid %v name %q error %q, want the status error and the rest", r.UID, r.Name, r.Error)
		}
	}
	if res.Details["processes_vanished"] != "0" {
		t.Errorf("Details = %v", res.Details)
	}
}

func TestProcessesNoBootTime(t *testing.T) {
	env := copyFixture(t, t.TempDir())
	if err := os.Remove(filepath.Join(env.ProcRoot, "stat")); err != nil {
		t.Fatal(err)
	}
	out, res := collect(t, "processes", env, nil)
	for _, r := range decodeProcesses(t, out) {
		if r.StartTime != nil || r.StartTimeRFC3339 != "" || r.Name == "" {
			t.Errorf("pid %d: start_time %v %q name %q, want no start time but the rest", r.PID, r.StartTime, r.StartTimeRFC3339, r.Name)
		}
	}
	if res.Records != 6 || len(res.Warnings) != 2 || !strings.Contains(res.Warnings[0], "start_time unavailable") {
		t.Errorf("Result = %+v, want 6 records, the boot time warning and pid 4242's exe", res)
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
	root := filepath.Join(dir, "fixture")
	copyFixture(t, root)
	for _, f := range []string{"proc/31337/status", "proc/31337/maps", "proc/4242/fd"} {
		if err := os.Chmod(filepath.Join(root, f), 0); err != nil {
			t.Fatal(err)
		}
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

// checkPermissionDenied runs where the kernel refuses reads: a refused
// file costs its columns or records, never the process or the scan.
func checkPermissionDenied(t *testing.T, root string) {
	env := fakeEnv()
	env.ProcRoot, env.HostRoot = filepath.Join(root, "proc"), root
	out, res := collect(t, "processes", env, nil)
	recs := decodeProcesses(t, out)
	if len(recs) != 6 {
		t.Fatalf("got %d records, want all 6: a refused field must not drop the process", len(recs))
	}
	var denied processRecord
	for _, r := range recs {
		switch r.PID {
		case 31337:
			denied = r
		case 4242: // its exe is not on this machine
		default:
			if r.Error != "" {
				t.Errorf("pid %d: unexpected error %q", r.PID, r.Error)
			}
		}
	}
	if denied.UID != nil || denied.GID != nil || denied.EUID != nil || denied.EGID != nil {
		t.Errorf("pid 31337 ids = %v %v %v %v, want null", denied.UID, denied.GID, denied.EUID, denied.EGID)
	}
	if !strings.HasPrefix(denied.Error, "status: ") || !strings.Contains(denied.Error, "permission denied") {
		t.Errorf("pid 31337 error = %q, want a status permission error", denied.Error)
	}
	if denied.Name != "kworker" || denied.Path != "../../dev/shm/kworker" || denied.ExeSHA256 == nil {
		t.Errorf("pid 31337 lost readable fields: name %q path %q hash %v", denied.Name, denied.Path, denied.ExeSHA256)
	}
	if len(res.Warnings) != 2 || !strings.Contains(res.Warnings[1], "pid 31337") {
		t.Errorf("warnings = %q, want pid 4242's exe and pid 31337's status", res.Warnings)
	}

	out, res = collect(t, "memory_maps", env, nil)
	var mapErrs []string
	for _, r := range decodeLines[memoryMapRecord](t, out) {
		if r.PID == 31337 {
			mapErrs = append(mapErrs, r.Error)
		}
	}
	if len(mapErrs) != 1 || !strings.Contains(mapErrs[0], "permission denied") || res.Details["errors"] == "0" {
		t.Errorf("pid 31337 maps records = %q, errors %s; want one permission error", mapErrs, res.Details["errors"])
	}

	out, _ = collect(t, "open_files", env, nil)
	var fdErrs []string
	for _, r := range decodeLines[openFileRecord](t, out) {
		if r.PID == 4242 {
			fdErrs = append(fdErrs, r.Error)
		}
	}
	if len(fdErrs) != 1 || !strings.Contains(fdErrs[0], "permission denied") {
		t.Errorf("pid 4242 open_files records = %q, want one permission error", fdErrs)
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
