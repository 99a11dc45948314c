package artifact

import (
	"bytes"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestSocketsGolden(t *testing.T) {
	out, res := collect(t, "sockets", fakeEnv(), nil)
	golden(t, "sockets.golden", out)
	if res.Source != "procfs:"+filepath.Join("testdata", "proc") || res.Records != len(lines(t, out)) {
		t.Errorf("Result = %+v", res)
	}
	for k, want := range map[string]string{"net_namespaces": "2", "processes_scanned": "6", "errors": "0", "sockets_unowned": "7"} {
		if res.Details[k] != want {
			t.Errorf("Details[%s] = %q, want %q (all: %v)", k, res.Details[k], want, res.Details)
		}
	}
	// The one malformed line of the host's udp table is skipped and said.
	if len(res.Warnings) != 1 || !strings.Contains(res.Warnings[0], `udp: skipped malformed line "    9: ZZZ not a socket"`) {
		t.Errorf("warnings = %q", res.Warnings)
	}
}

// With open_files run first in the same collection, sockets takes the
// owners from its scan and writes exactly what its own scan would have.
func TestSocketsOwnersFromOpenFiles(t *testing.T) {
	alone, aloneRes := collect(t, "sockets", fakeEnv(), nil)
	env := fakeEnv()
	env.Shared = NewShared([]string{"sockets", "open_files"})
	collect(t, "open_files", env, nil)
	shared, res := collect(t, "sockets", env, nil)
	if !bytes.Equal(shared, alone) {
		t.Errorf("sockets with owners from open_files differ from its own scan:\n%s\nvs\n%s", shared, alone)
	}
	if !strings.HasPrefix(res.Details["owners_from"], "open_files scan started ") {
		t.Errorf("Details[owners_from] = %q", res.Details["owners_from"])
	}
	for _, k := range []string{"processes_scanned", "processes_vanished", "errors", "net_namespaces", "sockets_unowned"} {
		if res.Details[k] != aloneRes.Details[k] {
			t.Errorf("Details[%s] = %q, own scan says %q", k, res.Details[k], aloneRes.Details[k])
		}
	}
	if !slices.Equal(res.Warnings, aloneRes.Warnings) {
		t.Errorf("warnings %q, own scan %q", res.Warnings, aloneRes.Warnings)
	}
}

func TestRunOrder(t *testing.T) {
	for _, tc := range []struct {
		names []string
		want  []int
	}{
		{[]string{"processes", "sockets", "open_files", "memory_maps"}, []int{0, 2, 1, 3}},
		{[]string{"open_files", "sockets"}, []int{0, 1}},
		{[]string{"sockets", "memory_maps"}, []int{0, 1}},
		{[]string{"sockets", "x", "open_files"}, []int{2, 0, 1}},
		{nil, []int{}},
	} {
		if got := RunOrder(tc.names); !slices.Equal(got, tc.want) {
			t.Errorf("RunOrder(%q) = %v, want %v", tc.names, got, tc.want)
		}
	}
	if NewShared([]string{"sockets", "processes"}) != nil || NewShared([]string{"open_files"}) != nil {
		t.Error("NewShared without both open_files and sockets should be nil")
	}
}

func TestStages(t *testing.T) {
	for _, tc := range []struct {
		names []string
		want  [][]int
		after map[int]int
	}{
		{[]string{"processes", "sockets", "open_files", "memory_maps"}, [][]int{{0, 2, 1, 3}}, map[int]int{1: 2}},
		{[]string{"host", "processes", "memory_maps"}, [][]int{{0, 1, 2}}, map[int]int{}},
		{[]string{"open_files", "sockets", "physical_memory"}, [][]int{{0, 1}, {2}}, map[int]int{1: 0}},
		{[]string{"sockets", "processes"}, [][]int{{0, 1}}, map[int]int{}},
		{[]string{"processes", "process_memory", "open_files", "file", "sockets"}, [][]int{{0}, {1}, {2}, {3}, {4}}, map[int]int{}},
		{[]string{"host", "physical_memory", "processes", "memory_maps"}, [][]int{{0}, {1}, {2, 3}}, map[int]int{}},
		{nil, nil, map[int]int{}},
	} {
		got, after := Stages(tc.names)
		if !slices.EqualFunc(got, tc.want, slices.Equal) || !maps.Equal(after, tc.after) {
			t.Errorf("Stages(%q) = %v, %v; want %v, %v", tc.names, got, after, tc.want, tc.after)
		}
	}
}

func TestRunStages(t *testing.T) {
	names := []string{"processes", "sockets", "open_files", "physical_memory", "host"}
	run := func(stopAt string) []string {
		var mu sync.Mutex
		var order []string
		RunStages(names, func(i int) bool {
			if names[i] == "open_files" {
				time.Sleep(20 * time.Millisecond) // sockets must still wait for it
			}
			mu.Lock()
			defer mu.Unlock()
			order = append(order, names[i])
			return names[i] != stopAt
		})
		return order
	}
	order := run("")
	pos := func(name string) int { return slices.Index(order, name) }
	if len(order) != len(names) || pos("sockets") < pos("open_files") || pos("physical_memory") < pos("processes") ||
		pos("physical_memory") < pos("sockets") || pos("host") < pos("physical_memory") {
		t.Errorf("ran %q", order)
	}
	if order := run("physical_memory"); slices.Contains(order, "host") || len(order) != 4 {
		t.Errorf("after a run returned false: ran %q, want host not started", order)
	}
}

// socketKey is what identifies a socket record in these tests.
type socketKey struct {
	Table string
	Inode uint64
	PID   int // 0: unowned
	FD    int
	Port  int // local port: unowned TIME_WAIT sockets all have inode 0
}

func socketsByKey(t *testing.T, out []byte) map[socketKey]socketRecord {
	t.Helper()
	m := map[socketKey]socketRecord{}
	for _, r := range decodeLines[socketRecord](t, out) {
		k := socketKey{Table: r.Table, Inode: r.Socket, Port: r.LocalPort}
		if r.PID != nil {
			k.PID, k.FD = *r.PID, *r.FD
		}
		if _, dup := m[k]; dup {
			t.Errorf("duplicate record %+v", k)
		}
		m[k] = r
	}
	return m
}

func TestSocketsFields(t *testing.T) {
	out, _ := collect(t, "sockets", fakeEnv(), nil)
	got := socketsByKey(t, out)
	const hostNS, ctrNS = 4026531992, 4026532305
	cid := "3f4e5d6c7b8a99887766554433221100ffeeddccbbaa00998877665544332211"
	uid := func(u uint32) *uint32 { return &u }
	zero := 0

	tests := []struct {
		key  socketKey
		want socketRecord
	}{
		{socketKey{"tcp", 1001, 1, 3, 22}, socketRecord{Name: "systemd", Family: afInet, Protocol: ipTCP, LocalAddress: "0.0.0.0", LocalPort: 22,
			RemoteAddress: "0.0.0.0", State: "LISTEN", Listening: true, UID: uid(0), NetNamespace: hostNS}},
		{socketKey{"tcp6", 1003, 1, 4, 22}, socketRecord{Name: "systemd", Family: afInet6, Protocol: ipTCP, LocalAddress: "::", LocalPort: 22,
			RemoteAddress: "::", State: "LISTEN", Listening: true, UID: uid(0), NetNamespace: hostNS}},
		// IPv4-mapped addresses decode word by word.
		{socketKey{"tcp6", 1011, 0, 0, 631}, socketRecord{Family: afInet6, Protocol: ipTCP, LocalAddress: "::ffff:127.0.0.1", LocalPort: 631,
			RemoteAddress: "::ffff:127.0.0.2", RemotePort: 54321, State: "ESTABLISHED", UID: uid(33), NetNamespace: hostNS}},
		{socketKey{"tcp", 0, 0, 0, 8080}, socketRecord{Family: afInet, Protocol: ipTCP, LocalAddress: "127.0.0.1", LocalPort: 8080,
			RemoteAddress: "127.0.0.1", RemotePort: 50000, State: "TIME_WAIT", UID: uid(0), NetNamespace: hostNS}},
		// A connected UDP socket is not listening; an unconnected bound one is.
		{socketKey{"udp", 1004, 4242, 6, 5353}, socketRecord{Name: "ev)il\n\x00\ufffd\ufffd", Family: afInet, Protocol: ipUDP, LocalAddress: "127.0.0.1",
			LocalPort: 5353, RemoteAddress: "10.0.0.5", RemotePort: 4444, State: "ESTABLISHED", UID: uid(1000), NetNamespace: hostNS}},
		{socketKey{"udp", 1008, 0, 0, 68}, socketRecord{Family: afInet, Protocol: ipUDP, LocalAddress: "0.0.0.0", LocalPort: 68,
			RemoteAddress: "0.0.0.0", State: "CLOSE", Listening: true, UID: uid(0), NetNamespace: hostNS}},
		// A raw socket's protocol is printed where a port would be.
		{socketKey{"raw", 1006, 4242, 7, 0}, socketRecord{Name: "ev)il\n\x00\ufffd\ufffd", Family: afInet, Protocol: ipICMP, LocalAddress: "0.0.0.0",
			RemoteAddress: "0.0.0.0", State: "CLOSE", Listening: true, UID: uid(1000), NetNamespace: hostNS}},
		{socketKey{"packet", 1007, 4242, 8, 0}, socketRecord{Name: "ev)il\n\x00\ufffd\ufffd", Family: afPacket, Protocol: 3, Type: "raw",
			Listening: true, Interface: &zero, UID: uid(1000), NetNamespace: hostNS}},
		{socketKey{"unix", 1002, 1, 5, 0}, socketRecord{Name: "systemd", Family: afUnix, Type: "stream", Path: "/run/systemd/private",
			State: "LISTEN", Listening: true, NetNamespace: hostNS}},
		{socketKey{"unix", 1009, 0, 0, 0}, socketRecord{Family: afUnix, Type: "dgram", Path: "@/tmp/.X11-unix/X0",
			State: "UNCONNECTED", NetNamespace: hostNS}},
		// A path with two spaces and a newline survives as written.
		{socketKey{"unix", 1005, 0, 0, 0}, socketRecord{Family: afUnix, Type: "stream", Path: "/tmp/a  b\nc",
			State: "UNCONNECTED", NetNamespace: hostNS}},
		{socketKey{"unix", 1010, 0, 0, 0}, socketRecord{Family: afUnix, Type: "stream", State: "CONNECTED", NetNamespace: hostNS}},
		// The container's namespace, read through its first member: the
		// shared listening socket appears once per owner.
		{socketKey{"tcp", 2001, 777, 3, 80}, socketRecord{Name: "nginx", Family: afInet, Protocol: ipTCP, LocalAddress: "0.0.0.0", LocalPort: 80,
			RemoteAddress: "0.0.0.0", State: "LISTEN", Listening: true, UID: uid(0), NetNamespace: ctrNS, ContainerID: cid}},
		{socketKey{"tcp", 2001, 778, 3, 80}, socketRecord{Name: "nginx", Family: afInet, Protocol: ipTCP, LocalAddress: "0.0.0.0", LocalPort: 80,
			RemoteAddress: "0.0.0.0", State: "LISTEN", Listening: true, UID: uid(0), NetNamespace: ctrNS, ContainerID: cid}},
		{socketKey{"tcp", 2002, 777, 4, 80}, socketRecord{Name: "nginx", Family: afInet, Protocol: ipTCP, LocalAddress: "172.17.0.2", LocalPort: 80,
			RemoteAddress: "172.17.0.1", RemotePort: 50000, State: "ESTABLISHED", UID: uid(101), NetNamespace: ctrNS, ContainerID: cid}},
		{socketKey{"unix", 2003, 777, 5, 0}, socketRecord{Name: "nginx", Family: afUnix, Type: "stream", Path: "/run/nginx.sock",
			State: "LISTEN", Listening: true, NetNamespace: ctrNS, ContainerID: cid}},
	}
	for _, tt := range tests {
		r, ok := got[tt.key]
		if !ok {
			t.Errorf("no record %+v", tt.key)
			continue
		}
		want := tt.want
		want.Table, want.Socket = tt.key.Table, tt.key.Inode
		if tt.key.PID != 0 {
			want.PID, want.FD = &tt.key.PID, &tt.key.FD
		}
		if diff := cmp.Diff(want, r); diff != "" {
			t.Errorf("%+v (-want +got):\n%s", tt.key, diff)
		}
	}
	if len(got) != 17 {
		t.Errorf("%d records, want 17", len(got))
	}
}

// TestSocketsMemberGone: a namespace is read through any member, and a
// member that has exited (or moved) by the time its tables are read is
// passed over for the next.
func TestSocketsMemberGone(t *testing.T) {
	env := copyFixture(t, t.TempDir())
	copyTree(t, filepath.Join(env.ProcRoot, "777", "net"), filepath.Join(env.ProcRoot, "778", "net"))
	if err := os.RemoveAll(filepath.Join(env.ProcRoot, "777")); err != nil {
		t.Fatal(err)
	}
	var warn warnings
	warn.log = env.withDefaults().Logger
	ok, err := readNetNamespace(newSnapProc(env.ProcRoot, 777), 4026532305, func(socketRecord) error { return nil }, &warn)
	if ok || err != nil {
		t.Errorf("readNetNamespace through an exited member = %v, %v; want false, nil", ok, err)
	}

	out, res := collect(t, "sockets", env, nil)
	got := socketsByKey(t, out)
	if _, ok := got[socketKey{"tcp", 2001, 778, 3, 80}]; !ok {
		t.Errorf("container sockets missing when read through the second member; warnings %q", res.Warnings)
	}
}

func TestParseNetIPLine(t *testing.T) {
	tests := []struct {
		line    string
		want    string // local remote state inode uid
		wantErr bool
	}{
		{"   0: 0100007F:0CEA 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000 0 123456 1 0000000000000000 100",
			"127.0.0.1:3306 0.0.0.0:0 10 123456 1000", false},
		{"   0: 00000000000000000000000001000000:0016 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000 0 0 7 1",
			"[::1]:22 [::]:0 10 7 0", false},
		{"   0: 0100007F:0CEA 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000 0", "", true},
		{"   0: 0100007:0CEA 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000 0 1", "", true},
		{"   0: 0100007F:10000 00000000:0000 0A 00000000:00000000 00:00000000 00000000 1000 0 1", "", true},
		{"   0: 0100007F:0CEA 00000000:0000 0A 0000000000000000 00:00000000 00000000 1000 0 1", "", true},
		{"garbage", "", true},
	}
	for _, tt := range tests {
		l, err := parseNetIPLine(tt.line)
		if (err != nil) != tt.wantErr {
			t.Errorf("parseNetIPLine(%q) error = %v, want error %v", tt.line, err, tt.wantErr)
			continue
		}
		if err != nil {
			continue
		}
		got := strings.Join([]string{l.Local.String(), l.Remote.String(), strconv.Itoa(int(l.State)), strconv.Itoa(int(l.Inode)), strconv.Itoa(int(l.UID))}, " ")
		if got != tt.want {
			t.Errorf("parseNetIPLine(%q) = %s, want %s", tt.line, got, tt.want)
		}
	}
}

func TestParseNetUnix(t *testing.T) {
	in := "Num       RefCount Protocol Flags    Type St Inode Path\n" +
		"0000000000000000: 00000002 00000000 00010000 0001 01  1002 /run/a\n" +
		"0000000000000000: 00000002 00000000 00000000 0005 03 99999999 /weird path\n" +
		"with newline\n" +
		"0000000000000000: 00000003 00000000 00000000 0001 03  1010\n" +
		"not a line and no path before\n"
	var got []netUnixLine
	var bad []string
	err := parseNetUnix(strings.NewReader(in), func(l netUnixLine) error {
		got = append(got, l)
		return nil
	}, func(line string) { bad = append(bad, line) })
	if err != nil {
		t.Fatal(err)
	}
	want := []netUnixLine{
		{Flags: unixAcceptCon, Type: 1, State: 1, Inode: 1002, Path: "/run/a"},
		{Type: 5, State: 3, Inode: 99999999, Path: "/weird path\nwith newline"},
		{Type: 1, State: 3, Inode: 1010},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"not a line and no path before"}, bad); diff != "" {
		t.Errorf("bad lines (-want +got):\n%s", diff)
	}
}

func TestParseNetPacketLine(t *testing.T) {
	l, err := parseNetPacketLine("ffff8880049e2000 3      3    88cc   2     1 0      0      23456")
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(netPacketLine{Type: 3, Proto: 0x88cc, Interface: 2, UID: 0, Inode: 23456}, l); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
	for _, bad := range []string{"", "a b c d e f g h", "ffff 3 3 zzzz 2 1 0 0 1"} {
		if _, err := parseNetPacketLine(bad); err == nil {
			t.Errorf("parseNetPacketLine(%q) succeeded", bad)
		}
	}
}

func TestTCPStateName(t *testing.T) {
	for st, want := range map[uint8]string{1: "ESTABLISHED", 10: "LISTEN", 12: "NEW_SYN_RECV", 0: "UNKNOWN_0", 200: "UNKNOWN_200"} {
		if got := tcpStateName(st); got != want {
			t.Errorf("tcpStateName(%d) = %q, want %q", st, got, want)
		}
	}
}
