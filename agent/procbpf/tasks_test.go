package procbpf

import (
	"bytes"
	"io"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/custodyhq/custody/internal/testenv"
)

var taskSample = []Task{
	{PID: 1, Present: 1<<(HaveRoot+1) - 1, NS: [nsCount]uint64{1, 2, 3, 4, 5, 6, 7}, LoginUID: 4294967295,
		Exe: "/usr/sbin/init", Cwd: "/", Root: "/"},
	{PID: 2, Present: 1 << NSNet, NS: [nsCount]uint64{3: 4026531840}},
	{PID: 7, Present: 1<<HaveExe | 1<<HaveCwd | 1<<HaveRoot, Exe: "/tmp/x (deleted)", CwdErr: syscall.ENAMETOOLONG, Root: "/"},
}

func TestTaskReaderRoundTrip(t *testing.T) {
	var b []byte
	for _, task := range taskSample {
		b = AppendTask(b, task)
	}
	r := NewTaskReader(bytes.NewReader(b))
	for i, want := range taskSample {
		got, err := r.Next()
		if err != nil {
			t.Fatalf("record %d: %v", i, err)
		}
		if got != want {
			t.Errorf("record %d = %+v, want %+v", i, got, want)
		}
	}
	if _, err := r.Next(); err != io.EOF {
		t.Errorf("after the last record: %v, want io.EOF", err)
	}
	for name, tc := range map[string]struct {
		data []byte
		want string
	}{
		"header cut":   {b[:10], "truncated record"},
		"path cut":     {AppendTask(nil, taskSample[0])[:taskRecordSize+3], "truncated record"},
		"unknown bits": {AppendTask(nil, Task{Present: 1 << 20}), "unknown present bits"},
		"nul in path":  {AppendTask(nil, Task{Exe: "/a\x00"}), "NUL in path"},
	} {
		if _, err := NewTaskReader(bytes.NewReader(tc.data)).Next(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want one saying %q", name, err, tc.want)
		}
	}
}

// FuzzTaskReader: any bytes give records that re-encode to the same bytes,
// or an error.
func FuzzTaskReader(f *testing.F) {
	var b []byte
	for _, task := range taskSample {
		b = AppendTask(b, task)
	}
	f.Add(b)
	f.Add(b[:40])
	f.Fuzz(func(t *testing.T, data []byte) {
		roundTrip(t, data, NewTaskReader(bytes.NewReader(data)).Next, AppendTask)
	})
}

// TestTasksLive loads the iterator and finds this process in it, as its
// /proc links show it.
func TestTasksLive(t *testing.T) {
	testenv.NeedRoot(t)
	it, err := OpenTasks("/proc")
	if err != nil {
		testenv.Skip(t, "BPF iterator unavailable: %v", err)
	}
	defer it.Close()
	self, n := drainFind(t, it.Next, func(task Task) bool { return task.PID == os.Getpid() })
	if self == nil {
		t.Fatalf("pid %d not among %d processes", os.Getpid(), n)
	}
	dir := "/proc/" + strconv.Itoa(os.Getpid())
	link := func(name string) string {
		s, err := os.Readlink(dir + "/" + name)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	if self.Exe != link("exe") || self.Cwd != link("cwd") || self.Root != link("root") {
		t.Errorf("paths %q %q %q, want %q %q %q", self.Exe, self.Cwd, self.Root, link("exe"), link("cwd"), link("root"))
	}
	for kind, name := range []string{"cgroup", "ipc", "mnt", "net", "pid", "user", "uts"} {
		want := link("ns/" + name)
		if !self.Has(kind) || want != name+":["+strconv.FormatUint(self.NS[kind], 10)+"]" {
			t.Errorf("ns %s: %d (present %v), /proc says %s", name, self.NS[kind], self.Has(kind), want)
		}
	}
	login, _ := os.ReadFile(dir + "/loginuid")
	if !self.Has(HaveLoginUID) || strconv.FormatUint(self.LoginUID, 10) != strings.TrimSpace(string(login)) {
		t.Errorf("loginuid %d (present %v), /proc says %s", self.LoginUID, self.Has(HaveLoginUID), login)
	}
}
