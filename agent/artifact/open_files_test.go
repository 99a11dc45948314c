package artifact

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// volatileDevice matches the device of a file the fixture's links resolve
// to in this checkout, which depends on the machine running the test.
var volatileDevice = regexp.MustCompile(`"device":"[0-9a-f]+:[0-9a-f]+"`)

func TestOpenFilesGolden(t *testing.T) {
	out, res := collect(t, "open_files", fakeEnv(), nil)
	// Only regular files and directories resolve to this checkout (and so
	// this machine's device); pipes, sockets and the like do not resolve at
	// all in a fake tree and keep an empty device.
	golden(t, "open_files.golden", volatileDevice.ReplaceAll(out, []byte(`"device":"<checkout>"`)))
	if res.Records != 17 || res.Details["descriptors"] != "17" {
		t.Errorf("Result = %+v", res)
	}
	// pid 4242's fd 0 points nowhere on this machine: the one error.
	if res.Details["errors"] != "1" || len(res.Warnings) != 1 || !strings.Contains(res.Warnings[0], "pid 4242: stat:") {
		t.Errorf("errors %s, warnings %q", res.Details["errors"], res.Warnings)
	}
}

func TestOpenFilesFields(t *testing.T) {
	out, _ := collect(t, "open_files", fakeEnv(), nil)
	got := map[[2]int]openFileRecord{}
	for _, r := range decodeLines[openFileRecord](t, out) {
		got[[2]int{r.PID, *r.FD}] = r
	}
	i64 := func(v int64) *int64 { return &v }
	u64 := func(v uint64) *uint64 { return &v }
	tests := []struct {
		pid, fd int
		want    openFileRecord
	}{
		{1, 3, openFileRecord{Path: "socket:[1001]", Type: "socket", Flags: "02", Access: "rw", FlagNames: []string{}, Pos: i64(0), Inode: u64(1001), MntID: i64(15)}},
		{1, 5, openFileRecord{Path: "socket:[1002]", Type: "socket", Flags: "02004002", Access: "rw", FlagNames: []string{"O_NONBLOCK", "O_CLOEXEC"}, Pos: i64(0), Inode: u64(1002), MntID: i64(15)}},
		{1, 6, openFileRecord{Path: "anon_inode:[eventfd]", Type: "anon_inode", Flags: "02004002", Access: "rw", FlagNames: []string{"O_NONBLOCK", "O_CLOEXEC"}, Pos: i64(0), MntID: i64(15)}},
		{1, 7, openFileRecord{Path: "pipe:[2001]", Type: "pipe", Flags: "02000000", Access: "r", FlagNames: []string{"O_CLOEXEC"}, Pos: i64(0), Inode: u64(2001), MntID: i64(15)}},
		{4242, 4, openFileRecord{Path: "/memfd:payload", Type: "memfd", Deleted: true, Flags: "02", Access: "rw", FlagNames: []string{}, Pos: i64(123), Inode: u64(4321), MntID: i64(27)}},
		{4242, 6, openFileRecord{Path: "socket:[1004]", Type: "socket", Flags: "02004002", Access: "rw", FlagNames: []string{"O_NONBLOCK", "O_CLOEXEC"}, Pos: i64(0), Inode: u64(1004), MntID: i64(27)}},
	}
	for _, tt := range tests {
		r, ok := got[[2]int{tt.pid, tt.fd}]
		if !ok {
			t.Errorf("no record for pid %d fd %d", tt.pid, tt.fd)
			continue
		}
		want := tt.want
		want.PID, want.FD = tt.pid, &tt.fd
		if diff := cmp.Diff(want, r); diff != "" {
			t.Errorf("pid %d fd %d (-want +got):\n%s", tt.pid, tt.fd, diff)
		}
	}

	// A regular file, deleted after it was opened, still stats through the
	// link: type, size and the marker come off.
	hidden := got[[2]int{4242, 5}]
	if hidden.Type != "regular" || !hidden.Deleted || hidden.Path != "../../../tmp/.hidden" || hidden.Size == nil || *hidden.Size != 15 || *hidden.Pos != 7 {
		t.Errorf("deleted file = %+v", hidden)
	}
	journal := got[[2]int{1, 8}]
	if journal.Type != "regular" || journal.Access != "w" || *journal.Size != 4096 ||
		!cmp.Equal(journal.FlagNames, []string{"O_APPEND", "O_LARGEFILE", "O_CLOEXEC"}) {
		t.Errorf("append-only log = %+v", journal)
	}
	if etc := got[[2]int{1, 9}]; etc.Type != "dir" || !strings.Contains(strings.Join(etc.FlagNames, ","), "O_DIRECTORY") {
		t.Errorf("directory = %+v", etc)
	}
	// Control characters and invalid UTF-8 in a path are escaped, not
	// passed through to break the line.
	if evil := got[[2]int{4242, 0}]; evil.Path != "/tmp/.x\n\ufffd" || evil.Type != "unknown" || evil.Access != "rw" || evil.Error == "" {
		t.Errorf("hostile path = %+v", evil)
	}
	// A kernel thread has an empty table: no records, no error.
	for k := range got {
		if k[0] == 2 || k[0] == 31337 {
			t.Errorf("record for pid %d, which has no descriptors", k[0])
		}
	}
}

// TestOpenFilesClosedDuringScan: a descriptor listed and closed before its
// fdinfo is read is churn, not an error.
func TestOpenFilesClosedDuringScan(t *testing.T) {
	env := copyFixture(t, t.TempDir())
	if err := os.Remove(filepath.Join(env.ProcRoot, "1", "fdinfo", "6")); err != nil {
		t.Fatal(err)
	}
	p := newSnapProc(env.ProcRoot, 1)
	if _, skip := readOpenFile(p, 6); !skip {
		t.Error("fd with no fdinfo was not skipped")
	}
	if _, skip := readOpenFile(p, 99); !skip {
		t.Error("fd that does not exist was not skipped")
	}
}

func TestParseFDInfo(t *testing.T) {
	tests := []struct {
		in      string
		want    fdInfo
		wantErr bool
	}{
		{"pos:\t42\nflags:\t02100002\nmnt_id:\t15\nino:\t77\n", fdInfo{Pos: 42, Flags: 0o2100002, MntID: 15, Inode: 77, HasIno: true}, false},
		// Older kernels have no ino; type-specific lines are ignored.
		{"pos:\t0\nflags:\t02\nmnt_id:\t9\neventfd-count:\t5\n", fdInfo{Flags: 2, MntID: 9}, false},
		{"pos:\t0\nflags:\t02\nmnt_id:\t9\ninotify wd:1 ino:2 sdev:3 mask:4\n", fdInfo{Flags: 2, MntID: 9}, false},
		{"flags:\t02\n", fdInfo{}, true},
		{"pos:\t0\n", fdInfo{}, true},
		{"pos:\tx\nflags:\t02\n", fdInfo{}, true},
		{"pos:\t0\nflags:\t09\n", fdInfo{}, true}, // not octal
		{"", fdInfo{}, true},
	}
	for _, tt := range tests {
		got, err := parseFDInfo([]byte(tt.in))
		if (err != nil) != tt.wantErr {
			t.Errorf("parseFDInfo(%q) error = %v, want error %v", tt.in, err, tt.wantErr)
			continue
		}
		if err == nil && got != tt.want {
			t.Errorf("parseFDInfo(%q) = %+v, want %+v", tt.in, got, tt.want)
		}
	}
}

func TestDescribeOpenFlags(t *testing.T) {
	access, names := describeOpenFlags(0o2004002 | largeFileFlag())
	if access != "rw" || !cmp.Equal(names, []string{"O_NONBLOCK", "O_LARGEFILE", "O_CLOEXEC"}) {
		t.Errorf("got %q %q", access, names)
	}
	if access, names := describeOpenFlags(0); access != "r" || names == nil || len(names) != 0 {
		t.Errorf("got %q %q, want r and an empty (not null) list", access, names)
	}
	if access, _ := describeOpenFlags(3); access != "invalid" {
		t.Errorf("access mode 3 = %q", access)
	}
}

func TestFDKind(t *testing.T) {
	for target, want := range map[string]string{
		"socket:[1]": "socket", "pipe:[2]": "pipe", "anon_inode:[eventfd]": "anon_inode", "anon_inode:bpf-map": "anon_inode",
		"/memfd:x (deleted)": "memfd", "/memfd:": "memfd", "/etc/passwd": "", "socket": "", "": "",
	} {
		if got := fdKind(target); got != want {
			t.Errorf("fdKind(%q) = %q, want %q", target, got, want)
		}
	}
}
