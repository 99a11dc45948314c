package artifact

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/custodyhq/custody/agent/procbpf"
	"github.com/custodyhq/custody/internal/testenv"
)

// TestBPFFilesTake: the iterator's stream is cut into one piece per listed
// pid; pids it skipped, or reported out of order or unlisted, come back
// empty (read through /proc), and a torn stream stops it.
func TestBPFFilesTake(t *testing.T) {
	var stream []byte
	for _, f := range []procbpf.File{
		{PID: 3, FD: 0, Path: "/a"}, {PID: 3, FD: 1, Path: "/b"},
		{PID: 4, FD: 0, Path: "/unlisted"},
		{PID: 5, FD: 2, Path: "/c"},
		{PID: 2, FD: 9, Path: "/late"},
		{PID: 7, FD: 0, Path: "/d"},
	} {
		stream = procbpf.AppendRecord(stream, f)
	}
	src := &pidStream[procbpf.File]{it: procbpf.NewReader(bytes.NewReader(stream)), pid: filePID}
	paths := func(fds []procbpf.File) []string {
		var out []string
		for _, f := range fds {
			out = append(out, f.Path)
		}
		return out
	}
	for _, step := range []struct {
		pid  int
		want []string
	}{
		{1, nil}, {3, []string{"/a", "/b"}}, {5, []string{"/c"}}, {7, []string{"/d"}}, {8, nil},
	} {
		fds, ok := src.take(step.pid)
		if !slices.Equal(paths(fds), step.want) || ok != (step.want != nil) {
			t.Errorf("take(%d) = %q, %v; want %q", step.pid, paths(fds), ok, step.want)
		}
	}
	if err := src.failed(); err != nil {
		t.Errorf("failed() = %v after a whole stream", err)
	}

	// The torn record might have been one more of pid 5's: pid 5 goes to
	// /proc whole, and so does everything after.
	torn := &pidStream[procbpf.File]{it: procbpf.NewReader(bytes.NewReader(stream[:len(stream)-2])), pid: filePID}
	if _, ok := torn.take(3); !ok {
		t.Fatal("take(3) before the tear found nothing")
	}
	for _, pid := range []int{5, 7} {
		if fds, ok := torn.take(pid); ok || fds != nil {
			t.Errorf("take(%d) across the tear = %v, %v; want it left to /proc", pid, fds, ok)
		}
	}
	if err := torn.failed(); !errors.Is(err, procbpf.ErrTruncated) {
		t.Errorf("failed() = %v, want ErrTruncated", err)
	}
}

func TestOpenFilesMethodParam(t *testing.T) {
	k, _ := Lookup("open_files")
	if _, err := k.Collect(context.Background(), fakeEnv(), Params{"method": "ebpf"}, io.Discard); !errors.Is(err, ErrBadParam) {
		t.Errorf("method=ebpf: %v, want ErrBadParam", err)
	}
	_, err := k.Collect(context.Background(), fakeEnv(), Params{"method": "bpf"}, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "not the live /proc") {
		t.Errorf("method=bpf on a fake /proc: %v, want an error saying why", err)
	}
	_, res := collect(t, "open_files", fakeEnv(), nil)
	if res.Details["method"] != "procfs" || !strings.Contains(res.Details["bpf_unavailable"], "not the live /proc") {
		t.Errorf("auto on a fake /proc: details %v, want method procfs and why not bpf", res.Details)
	}
}

// TestOpenFilesBPFMatchesProcfs: for a process holding every kind of
// descriptor (deleted file with O_APPEND, memfd, TCP, UDP and unix
// sockets, in its own PID and network namespaces), the iterator's records
// are exactly what reading /proc gives, and sockets shared from an
// iterator scan still know their owners.
func TestOpenFilesBPFMatchesProcfs(t *testing.T) {
	testenv.NeedRoot(t)
	if _, err := procbpf.OpenFiles("/proc"); err != nil {
		testenv.Skip(t, "BPF iterator unavailable: %v", err)
	}
	dir := t.TempDir()
	report, cmd := startHelper(t, os.Args[0], "netns", dir, &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWPID | syscall.CLONE_NEWNET})
	pid := cmd.Process.Pid
	helperRecords := func(method string) []openFileRecord {
		out, res := collect(t, "open_files", Env{}, Params{"method": method})
		if got := res.Details["method"]; got != map[string]string{"bpf": "bpf_iter", "procfs": "procfs"}[method] {
			t.Fatalf("method %s ran as %q", method, got)
		}
		var recs []openFileRecord
		for _, r := range decodeLines[openFileRecord](t, out) {
			if r.PID == pid {
				recs = append(recs, r)
			}
		}
		return recs
	}
	viaBPF, viaProc := helperRecords("bpf"), helperRecords("procfs")
	if len(viaProc) < 8 {
		t.Fatalf("procfs saw only %d descriptors of the helper", len(viaProc))
	}
	if diff := cmp.Diff(viaProc, viaBPF); diff != "" {
		t.Errorf("open_files via bpf differs from procfs (-procfs +bpf):\n%s", diff)
	}

	env := Env{Shared: NewShared([]string{"open_files", "sockets"})}
	collect(t, "open_files", env, Params{"method": "bpf"})
	out, res := collect(t, "sockets", env, nil)
	if !strings.HasPrefix(res.Details["owners_from"], "open_files") {
		t.Fatalf("sockets did not take its owners from open_files: %v", res.Details)
	}
	comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, r := range decodeLines[socketRecord](t, out) {
		if r.Table == "tcp" && r.FD != nil && *r.FD == report["tcp_fd"] && r.PID != nil && *r.PID == pid {
			found = true
			if want := strings.TrimSuffix(string(comm), "\n"); r.Name != want {
				t.Errorf("owner name %q from the bpf scan, /proc/%d/comm says %q", r.Name, pid, want)
			}
		}
	}
	if !found {
		t.Errorf("the helper's TCP socket (fd %d) has no owner pid %d after a bpf open_files scan", report["tcp_fd"], pid)
	}
}

func filePID(f procbpf.File) int { return f.PID }

// TestProcessesBPFMatchesProcfs: for a process in its own PID and network
// namespaces, the record built from the task iterator (exe, cwd, root,
// namespaces, loginuid) is byte for byte the one built from /proc alone.
func TestProcessesBPFMatchesProcfs(t *testing.T) {
	testenv.NeedRoot(t)
	it, err := procbpf.OpenTasks("/proc")
	if err != nil {
		testenv.Skip(t, "BPF iterator unavailable: %v", err)
	}
	it.Close()
	dir := t.TempDir()
	_, cmd := startHelper(t, os.Args[0], "netns", dir, &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWPID | syscall.CLONE_NEWNET})
	pid := cmd.Process.Pid

	it, err = procbpf.OpenTasks("/proc")
	if err != nil {
		t.Fatal(err)
	}
	var task *procbpf.Task
	for {
		tk, err := it.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if tk.PID == pid {
			task = &tk
		}
	}
	it.Close()
	if task == nil || !task.Has(procbpf.HaveExe) || !task.Has(procbpf.NSNet) {
		t.Fatalf("task iterator record for the helper = %+v", task)
	}
	env := Env{}.withDefaults()
	selfMnt, _ := newSnapProc(env.ProcRoot, 0).selfNamespace("mnt")
	sc := &processScanner{env: env, hashes: newExeHasher(), names: newNameResolver(env, selfMnt)}
	viaProc := sc.read(newScratch(), pid, nil)
	viaBPF := sc.read(newScratch(), pid, task)
	if viaProc.gone || viaBPF.gone || !bytes.Equal(viaProc.data, viaBPF.data) {
		t.Errorf("processes record via bpf differs from procfs:\nprocfs %s\nbpf    %s", viaProc.data, viaBPF.data)
	}

	_, res := collect(t, "processes", Env{}, Params{"method": "bpf"})
	if res.Details["method"] != "bpf_iter" {
		t.Errorf("processes method=bpf ran as %q", res.Details["method"])
	}
	k, _ := Lookup("processes")
	if _, err := k.Collect(context.Background(), fakeEnv(), Params{"method": "bpf"}, io.Discard); err == nil || !strings.Contains(err.Error(), "not the live /proc") {
		t.Errorf("processes method=bpf on a fake /proc: %v", err)
	}
}
