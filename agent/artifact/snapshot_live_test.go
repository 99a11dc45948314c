package artifact

// Live tests: the snapshots against the running kernel, with processes set
// up the way a container would be (their own PID and network namespaces),
// and cross-checked against independent tools (ss, ls). They need root,
// which CI has; elsewhere they skip with the reason.

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/custodyhq/custody/internal/testenv"
)

// The helper process is this test binary run again with helperMode set; it
// sets up what the test asks for, prints "READY <json>" and holds it all
// until its stdin closes.
const (
	helperMode = "CUSTODY_SNAPSHOT_HELPER"
	helperDir  = "CUSTODY_SNAPSHOT_HELPER_DIR"
)

func TestSnapshotHelperProcess(t *testing.T) {
	mode := os.Getenv(helperMode)
	if mode == "" {
		return // not a helper: nothing to do
	}
	report, err := runHelper(mode, os.Getenv(helperDir))
	if err != nil {
		fmt.Printf("FAILED %v\n", err)
		os.Exit(1)
	}
	b, _ := json.Marshal(report)
	fmt.Printf("READY %s\n", b)
	io.Copy(io.Discard, os.Stdin)
	os.Exit(0)
}

func runHelper(mode, dir string) (map[string]int, error) {
	report := map[string]int{"pid": os.Getpid()}
	switch mode {
	case "wait":
		return report, nil
	case "chroot":
		if err := syscall.Chroot(dir); err != nil {
			return nil, err
		}
		return report, os.Chdir("/")
	case "netns":
	default:
		return nil, fmt.Errorf("unknown helper mode %q", mode)
	}
	// A fresh network namespace has only a loopback interface, down.
	if err := loopbackUp(); err != nil {
		return nil, fmt.Errorf("loopback up: %w", err)
	}
	fdOf := func(c syscall.Conn) int {
		rc, err := c.SyscallConn()
		if err != nil {
			return -1
		}
		fd := -1
		rc.Control(func(f uintptr) { fd = int(f) })
		return fd
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	report["tcp_fd"], report["tcp_port"] = fdOf(ln.(*net.TCPListener)), ln.Addr().(*net.TCPAddr).Port
	udp, err := net.DialUDP("udp", nil, &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 9})
	if err != nil {
		return nil, err
	}
	report["udp_fd"], report["udp_port"] = fdOf(udp), udp.LocalAddr().(*net.UDPAddr).Port
	ul, err := net.Listen("unix", filepath.Join(dir, "helper.sock"))
	if err != nil {
		return nil, err
	}
	report["unix_fd"] = fdOf(ul.(*net.UnixListener))
	path := filepath.Join(dir, "evidence.bin")
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	if _, err := f.WriteString("deleted evidence"); err != nil {
		return nil, err
	}
	if err := os.Remove(path); err != nil {
		return nil, err
	}
	report["file_fd"] = int(f.Fd())
	mfd, err := unix.MemfdCreate("custody-test", 0)
	if err != nil {
		return nil, err
	}
	if _, err := unix.Write(mfd, []byte("fileless")); err != nil {
		return nil, err
	}
	report["memfd"] = mfd
	// Keep them reachable until exit.
	helperKeep = []any{ln, udp, ul, f}
	return report, nil
}

var helperKeep []any

func loopbackUp() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return err
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	return unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr)
}

// startHelper runs the helper in mode and waits for its report. The helper
// is killed when the test ends, whatever happens.
func startHelper(t *testing.T, bin, mode, dir string, attr *syscall.SysProcAttr) (map[string]int, *exec.Cmd) {
	t.Helper()
	cmd := exec.Command(bin, "-test.run=^TestSnapshotHelperProcess$", "-test.count=1")
	cmd.Env = append(os.Environ(), helperMode+"="+mode, helperDir+"="+dir)
	if attr == nil {
		attr = &syscall.SysProcAttr{}
	}
	attr.Pdeathsig = syscall.SIGKILL
	cmd.SysProcAttr = attr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		if mode == "netns" {
			testenv.Skip(t, "cannot create PID and network namespaces: %v", err)
		}
		t.Fatal(err)
	}
	t.Cleanup(func() {
		stdin.Close()
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			cmd.Process.Kill()
			<-done
		}
	})
	lines := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if l := sc.Text(); strings.HasPrefix(l, "READY ") || strings.HasPrefix(l, "FAILED ") {
				lines <- l
				io.Copy(io.Discard, stdout)
				return
			}
		}
		close(lines)
	}()
	select {
	case l, ok := <-lines:
		if !ok || strings.HasPrefix(l, "FAILED ") {
			t.Fatalf("helper %s did not start: %q", mode, l)
		}
		var report map[string]int
		if err := json.Unmarshal([]byte(strings.TrimPrefix(l, "READY ")), &report); err != nil {
			t.Fatal(err)
		}
		return report, cmd
	case <-time.After(30 * time.Second):
		t.Fatalf("helper %s: no report in 30s", mode)
	}
	return nil, nil
}

// TestSnapshotLiveNamespaces starts a process in its own PID and network
// namespaces, as a container runtime would, holding a listening TCP socket,
// a connected UDP socket, a unix socket, a deleted file and a memfd, and
// checks that each snapshot reports each with the right pid, namespace, fd
// and flags.
func TestSnapshotLiveNamespaces(t *testing.T) {
	testenv.NeedRoot(t)
	dir := t.TempDir()
	report, cmd := startHelper(t, os.Args[0], "netns", dir, &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWPID | syscall.CLONE_NEWNET})
	pid := cmd.Process.Pid
	if report["pid"] != 1 {
		t.Errorf("helper sees itself as pid %d, want 1 in its own PID namespace", report["pid"])
	}
	self := newSnapProc("/proc", os.Getpid())
	childNet, err := newSnapProc("/proc", pid).namespace("net")
	if err != nil {
		t.Fatal(err)
	}
	ownNet, _ := self.namespace("net")
	if childNet == ownNet {
		t.Fatal("helper shares the test's network namespace")
	}

	// One process, not the whole host: a full scan hashes every binary
	// running, which TestProcessesRealProc already covers.
	proc := liveProcess(t, pid)
	ownPID, _ := self.namespace("pid")
	if proc == nil || proc.NSPid == nil || *proc.NSPid != 1 || proc.NetNamespace == nil || *proc.NetNamespace != childNet ||
		proc.PIDNamespace == nil || *proc.PIDNamespace == ownPID {
		t.Fatalf("helper's process record = %+v", proc)
	}

	out, res := collect(t, "sockets", Env{}, nil)
	var tcp, udp, unixSock *socketRecord
	for _, r := range decodeLines[socketRecord](t, out) {
		if r.PID == nil || *r.PID != pid {
			continue
		}
		switch {
		case r.Table == "tcp" && *r.FD == report["tcp_fd"]:
			tcp = &r
		case r.Table == "udp" && *r.FD == report["udp_fd"]:
			udp = &r
		case r.Table == "unix" && *r.FD == report["unix_fd"]:
			unixSock = &r
		}
	}
	if tcp == nil || !tcp.Listening || tcp.State != "LISTEN" || tcp.LocalAddress != "127.0.0.1" || tcp.LocalPort != report["tcp_port"] || tcp.NetNamespace != childNet {
		t.Errorf("listening TCP socket = %+v (warnings %q)", tcp, res.Warnings)
	}
	if udp == nil || udp.Listening || udp.State != "ESTABLISHED" || udp.RemotePort != 9 || udp.LocalPort != report["udp_port"] || udp.NetNamespace != childNet {
		t.Errorf("connected UDP socket = %+v", udp)
	}
	if unixSock == nil || !unixSock.Listening || unixSock.Path != filepath.Join(dir, "helper.sock") || unixSock.NetNamespace != childNet {
		t.Errorf("unix socket = %+v", unixSock)
	}
	if n, _ := strconv.Atoi(res.Details["net_namespaces"]); n < 2 {
		t.Errorf("Details[net_namespaces] = %q, want the helper's and the host's", res.Details["net_namespaces"])
	}

	var file, memfd *openFileRecord
	for _, r := range decodeLines[openFileRecord](t, readOpenFiles(newSnapProc("/proc", pid), newScratch(), newOpenFileCache(), false).data) {
		if r.FD != nil {
			switch *r.FD {
			case report["file_fd"]:
				file = &r
			case report["memfd"]:
				memfd = &r
			}
		}
	}
	if file == nil || file.Type != "regular" || !file.Deleted || file.Path != filepath.Join(dir, "evidence.bin") || file.Access != "rw" ||
		!slices.Contains(file.FlagNames, "O_APPEND") || !slices.Contains(file.FlagNames, "O_CLOEXEC") || *file.Pos != 16 || *file.Size != 16 {
		t.Errorf("deleted file = %+v", file)
	}
	if memfd == nil || memfd.Type != "memfd" || !memfd.Deleted || memfd.Path != "/memfd:custody-test" || *memfd.Pos != 8 {
		t.Errorf("memfd = %+v", memfd)
	}

	var mapped int
	for _, r := range decodeLines[memoryMapRecord](t, readMemoryMaps(newSnapProc("/proc", pid), newScratch()).data) {
		if r.Error == "" {
			mapped++
		}
	}
	if mapped == 0 {
		t.Error("no memory maps for the helper")
	}
}

// TestSnapshotLiveDeletedExe: a process whose binary was deleted after it
// started is reported with exe_deleted and the hash of the binary it runs.
func TestSnapshotLiveDeletedExe(t *testing.T) {
	testenv.NeedRoot(t)
	dir := t.TempDir()
	implant := filepath.Join(dir, "kworker")
	copyFile(t, os.Args[0], implant, 0o755)
	b, err := os.ReadFile(implant)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(b)
	_, cmd := startHelper(t, implant, "wait", dir, nil)
	if err := os.Remove(implant); err != nil {
		t.Fatal(err)
	}
	r := liveProcess(t, cmd.Process.Pid)
	if r == nil || r.Path != implant || r.ExeDeleted == nil || !*r.ExeDeleted || r.ExeSHA256 == nil || *r.ExeSHA256 != hex.EncodeToString(sum[:]) {
		t.Errorf("deleted implant = %+v; want path %q, exe_deleted, exe_sha256 %x", r, implant, sum)
	}
}

// liveProcess reads one process of the live host as the processes
// artifact does.
func liveProcess(t *testing.T, pid int) *processRecord {
	t.Helper()
	env := Env{}.withDefaults()
	selfMnt, _ := newSnapProc(env.ProcRoot, 0).selfNamespace("mnt")
	sc := &processScanner{env: env, hashes: newExeHasher(), names: newNameResolver(env, selfMnt)}
	l := sc.read(newScratch(), pid, nil)
	if l.gone {
		return nil
	}
	var r processRecord
	if err := json.Unmarshal(l.data, &r); err != nil {
		t.Fatal(err)
	}
	return &r
}

// TestFilesLiveContainer collects files from another process's root, the
// way a sidecar collects from the container beside it, and checks that an
// absolute symlink inside it is recorded, not resolved against the host.
func TestFilesLiveContainer(t *testing.T) {
	testenv.NeedRoot(t)
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(root, "var/log"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "etc/passwd"), []byte("app:x:1000:1000::/app:/bin/sh\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	// On the host, /etc/hostname exists; through the container it must
	// stay a link.
	if err := os.Symlink("/etc/hostname", filepath.Join(root, "var/log/app.log")); err != nil {
		t.Fatal(err)
	}
	_, cmd := startHelper(t, os.Args[0], "chroot", root, nil)
	out, res := collect(t, "files", Env{}, Params{"container": strconv.Itoa(cmd.Process.Pid), "globs": "/etc/passwd,/var/log/**"})
	members, index, _ := readTriage(t, out)
	if got := string(members["fs/etc/passwd"].data); got != "app:x:1000:1000::/app:/bin/sh\n" {
		t.Errorf("/etc/passwd = %q, want the container's", got)
	}
	var link *triageIndexRecord
	for _, r := range index {
		if r.Path == "/var/log/app.log" {
			link = &r
		}
	}
	if link == nil || link.Type != "symlink" || link.LinkTarget != "/etc/hostname" || len(members["fs/var/log/app.log"].data) != 0 {
		t.Errorf("absolute symlink in the container = %+v", link)
	}
	if res.Details["root"] != filepath.Join("/proc", strconv.Itoa(cmd.Process.Pid), "root") {
		t.Errorf("Details = %v", res.Details)
	}
}

// ssUser matches one owner in ss -p output: ("name",pid=1,fd=3).
var ssUser = regexp.MustCompile(`pid=(\d+),fd=(\d+)`)

type ssListener struct {
	proto    string // tcp or udp
	port     int
	pid, fd  int
	localRaw string
}

// ssListeners runs ss -Htulpn and returns every listening TCP and UDP
// socket with an owner, as ss sees them from the test's namespace.
func ssListeners(t *testing.T, ss string) map[ssListener]bool {
	t.Helper()
	out, err := exec.Command(ss, "-H", "-tulpn").Output()
	if err != nil {
		t.Fatalf("ss -Htulpn: %v", err)
	}
	m := map[ssListener]bool{}
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) < 7 {
			continue
		}
		i := strings.LastIndexByte(f[4], ':')
		port, err := strconv.Atoi(f[4][i+1:])
		if err != nil {
			continue
		}
		for _, u := range ssUser.FindAllStringSubmatch(strings.Join(f[6:], " "), -1) {
			pid, _ := strconv.Atoi(u[1])
			fd, _ := strconv.Atoi(u[2])
			m[ssListener{proto: f[0], port: port, pid: pid, fd: fd, localRaw: f[4]}] = true
		}
	}
	return m
}

// TestSnapshotCrossCheckSS: every listening TCP and UDP socket that ss
// shows in the root namespace is in the snapshot with the same pid and fd.
func TestSnapshotCrossCheckSS(t *testing.T) {
	testenv.NeedRoot(t)
	ss := testenv.NeedTool(t, "ss")
	tcp, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer tcp.Close()
	udp, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer udp.Close()

	before := ssListeners(t, ss)
	out, _ := collect(t, "sockets", Env{}, nil)
	after := ssListeners(t, ss)
	ownNet, err := newSnapProc("/proc", os.Getpid()).namespace("net")
	if err != nil {
		t.Fatal(err)
	}
	type key struct {
		proto         string
		port, pid, fd int
	}
	got := map[key]bool{}
	for _, r := range decodeLines[socketRecord](t, out) {
		if r.PID == nil || !r.Listening || r.NetNamespace != ownNet {
			continue
		}
		proto := strings.TrimSuffix(r.Table, "6")
		if proto == "tcp" || proto == "udp" {
			got[key{proto, r.LocalPort, *r.PID, *r.FD}] = true
		}
	}
	checked, own := 0, 0
	for l := range before {
		if !after[l] {
			continue // came or went during the snapshot
		}
		checked++
		if l.pid == os.Getpid() {
			own++
		}
		if !got[key{l.proto, l.port, l.pid, l.fd}] {
			t.Errorf("ss shows %s %s pid %d fd %d listening; the snapshot does not", l.proto, l.localRaw, l.pid, l.fd)
		}
	}
	if own != 2 {
		t.Errorf("ss saw %d of the test's own 2 listeners (checked %d sockets)", own, checked)
	}
	t.Logf("%d listening sockets seen by both ss and the snapshot", checked)
}

// TestSnapshotCrossCheckFDCount: for every process whose descriptor count
// ls reports the same before and after the snapshot, open_files has that
// many records.
func TestSnapshotCrossCheckFDCount(t *testing.T) {
	testenv.NeedRoot(t)
	ls := testenv.NeedTool(t, "ls")
	// A few processes of our own with known descriptors, so the check
	// never runs on nothing.
	for range 3 {
		startHelper(t, os.Args[0], "wait", t.TempDir(), nil)
	}
	pids, err := snapshotPIDs("/proc")
	if err != nil {
		t.Fatal(err)
	}
	// One ls for every process: it prints a "/proc/N/fd:" heading and the
	// names under it, and carries on past directories it cannot read.
	args := []string{"-1", "-A"}
	for _, pid := range pids {
		if pid != os.Getpid() { // the test's own table changes as it runs ls
			args = append(args, fmt.Sprintf("/proc/%d/fd", pid))
		}
	}
	heading := regexp.MustCompile(`^/proc/(\d+)/fd:$`)
	count := func() map[int]int {
		out, _ := exec.Command(ls, args...).Output()
		m := map[int]int{}
		cur := -1
		for _, line := range strings.Split(string(out), "\n") {
			if h := heading.FindStringSubmatch(line); h != nil {
				cur, _ = strconv.Atoi(h[1])
				m[cur] = 0
			} else if line != "" && cur >= 0 {
				m[cur]++
			}
		}
		return m
	}
	before := count()
	out, _ := collect(t, "open_files", Env{}, nil)
	after := count()
	got := map[int]int{}
	denied := map[int]bool{}
	for _, r := range decodeLines[openFileRecord](t, out) {
		if r.FD == nil {
			denied[r.PID] = true
			continue
		}
		got[r.PID]++
	}
	checked := 0
	for pid, n := range before {
		if m, ok := after[pid]; !ok || m != n || denied[pid] {
			continue
		}
		checked++
		if got[pid] != n {
			t.Errorf("pid %d: ls /proc/%d/fd shows %d descriptors, open_files has %d", pid, pid, n, got[pid])
		}
	}
	if checked < 3 {
		t.Errorf("only %d processes had a stable descriptor count", checked)
	}
	t.Logf("descriptor counts of %d processes agree with ls", checked)
}

// TestSnapshotRealProcSelf checks the test's own descriptors and maps on the
// live kernel, the one place where the formats are not ours to choose.
func TestSnapshotRealProcSelf(t *testing.T) {
	if _, err := os.Stat("/proc/self/fdinfo"); err != nil {
		testenv.Skip(t, "no procfs mounted at /proc: %v", err)
	}
	f, err := os.CreateTemp(t.TempDir(), "pos")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString("0123456789"); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Seek(5, io.SeekStart); err != nil {
		t.Fatal(err)
	}
	p := newSnapProc("/proc", os.Getpid())
	rec, skip := readOpenFile(p, int(f.Fd()))
	if skip || rec.Path != f.Name() || rec.Type != "regular" || rec.Deleted || *rec.Pos != 5 || *rec.Size != 10 || rec.Access != "rw" || rec.Error != "" {
		t.Errorf("own temp file = %+v", rec)
	}
	var st syscall.Stat_t
	if err := syscall.Fstat(int(f.Fd()), &st); err != nil {
		t.Fatal(err)
	}
	if *rec.Inode != st.Ino || rec.Device != devString(st.Dev) {
		t.Errorf("inode %d device %s, want %d %s", *rec.Inode, rec.Device, st.Ino, devString(st.Dev))
	}

	exe, _ := os.Executable()
	b := readMemoryMaps(p, newScratch())
	var sawExe bool
	for _, r := range decodeLines[memoryMapRecord](t, b.data) {
		if r.Error != "" {
			t.Errorf("own maps: %s", r.Error)
		}
		if r.Path == exe && strings.Contains(r.Permissions, "x") {
			sawExe = true
		}
	}
	if !sawExe {
		t.Errorf("own executable %s not mapped executable in %d records", exe, b.records)
	}
}

// Descriptors of one file share a stat through the scan's cache, keyed by
// fdinfo's mount id and inode: the second descriptor reports what the
// cache holds, and files that differ keep their own entries.
func TestOpenFilesStatCache(t *testing.T) {
	if _, err := os.Stat("/proc/self/fdinfo"); err != nil {
		testenv.Skip(t, "no procfs mounted at /proc: %v", err)
	}
	dir := t.TempDir()
	f, err := os.Create(filepath.Join(dir, "shared"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	f.WriteString("ten bytes!")
	dup, err := syscall.Dup(int(f.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(dup)
	d, err := os.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()

	p := newSnapProc("/proc", os.Getpid())
	h, err := openProc(p)
	if err != nil {
		t.Fatal(err)
	}
	defer h.close()
	tab, err := openFDTable(h)
	if err != nil {
		t.Fatal(err)
	}
	defer tab.close()
	files := newOpenFileCache()
	s := newScratch()
	first, _ := tab.readOpenFile(s, int(f.Fd()), files)
	dirRec, _ := tab.readOpenFile(s, int(d.Fd()), files)
	if first.MntID == nil || first.Inode == nil {
		testenv.Skip(t, "fdinfo has no mnt_id/ino on this kernel: the cache is never used")
	}
	if first.Type != "regular" || *first.Size != 10 || dirRec.Type != "dir" {
		t.Fatalf("first stats: file %+v, dir %+v", first, dirRec)
	}
	if len(files.stats) != 2 {
		t.Fatalf("cache holds %d files, want 2 (the file and the directory)", len(files.stats))
	}
	// Plant a size only the cache could report: the dup must take it.
	key := openFileKey{mnt: *first.MntID, ino: *first.Inode}
	planted := files.stats[key]
	planted.size = 12345
	files.put(key, planted)
	second, _ := tab.readOpenFile(s, dup, files)
	if *second.Size != 12345 || second.Type != "regular" || second.Device != first.Device || *second.Inode != *first.Inode {
		t.Fatalf("dup did not come from the cache: %+v", second)
	}
	// Without a cache every descriptor is stat'ed.
	fresh, _ := tab.readOpenFile(s, dup, nil)
	if *fresh.Size != 10 {
		t.Fatalf("uncached dup size %d, want 10", *fresh.Size)
	}
}
