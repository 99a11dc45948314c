package artifact

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestMemoryMapsGolden(t *testing.T) {
	out, res := collect(t, "memory_maps", fakeEnv(), nil)
	golden(t, "memory_maps.golden", out)
	if res.Records != 16 || res.Details["mappings"] != "16" || res.Details["errors"] != "1" {
		t.Errorf("Result = %+v", res)
	}
	if len(res.Warnings) != 1 || !strings.Contains(res.Warnings[0], `pid 4242: malformed maps line: "garbage"`) {
		t.Errorf("warnings = %q", res.Warnings)
	}
}

func TestMemoryMapsFields(t *testing.T) {
	out, _ := collect(t, "memory_maps", fakeEnv(), nil)
	var got []memoryMapRecord
	for _, r := range decodeLines[memoryMapRecord](t, out) {
		if r.PID == 1 || r.PID == 4242 {
			got = append(got, r)
		}
	}
	u := func(v uint64) *uint64 { return &v }
	rec := func(pid int, start, end string, size uint64, perms string, off uint64, dev string, ino uint64, path string, pseudo, deleted bool) memoryMapRecord {
		return memoryMapRecord{PID: pid, Start: start, End: end, Size: u(size), Permissions: perms, Offset: u(off), Device: dev,
			Inode: u(ino), Path: path, Pseudo: pseudo, Deleted: deleted}
	}
	want := []memoryMapRecord{
		rec(1, "0x55d0c0a00000", "0x55d0c0a26000", 0x26000, "r--p", 0, "fe:01", 1234, "/usr/lib/systemd/systemd", false, false),
		rec(1, "0x55d0c0a26000", "0x55d0c0b00000", 0xda000, "r-xp", 0x26000, "fe:01", 1234, "/usr/lib/systemd/systemd", false, false),
		rec(1, "0x55d0c1000000", "0x55d0c1021000", 0x21000, "rw-p", 0, "00:00", 0, "[heap]", true, false),
		// Two spaces in a row inside a path are kept.
		rec(1, "0x7f0000000000", "0x7f0000001000", 0x1000, "r-xp", 0, "fe:01", 5678, "/usr/lib/lib  two  spaces.so", false, false),
		rec(1, "0x7f0000001000", "0x7f0000002000", 0x1000, "rw-s", 0, "00:01", 2049, "/dev/zero", false, true),
		rec(1, "0x7ffd00000000", "0x7ffd00021000", 0x21000, "rw-p", 0, "00:00", 0, "[stack]", true, false),
		rec(1, "0x7ffd00100000", "0x7ffd00102000", 0x2000, "r-xp", 0, "00:00", 0, "[vdso]", true, false),
		rec(1, "0xffffffffff600000", "0xffffffffff601000", 0x1000, "--xp", 0, "00:00", 0, "[vsyscall]", true, false),
		// The kernel escapes a newline in a path as \012; the rest is raw.
		rec(4242, "0x400000", "0x401000", 0x1000, "r-xp", 0, "fe:01", 999, "/tmp/.x\\012\ufffd", false, false),
		rec(4242, "0x7f1000000000", "0x7f1000100000", 0x100000, "rwxp", 0, "00:01", 4321, "/memfd:payload", false, true),
		rec(4242, "0x7f2000000000", "0x7f2000001000", 0x1000, "r-xp", 0, "fe:01", 4322, "/tmp/libevil.so", false, true),
		rec(4242, "0x7f3000000000", "0x7f3000010000", 0x10000, "rw-p", 0, "00:00", 0, "", false, false),
		{PID: 4242, Error: `malformed maps line: "garbage"`},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
}

func TestParseMemoryMapLine(t *testing.T) {
	tests := []struct {
		line    string
		want    memoryMapLine
		wantErr bool
	}{
		{"00400000-0040b000 r-xp 00000000 08:02 173521      /usr/bin/dbus-daemon",
			memoryMapLine{Start: 0x400000, End: 0x40b000, Perms: "r-xp", Device: "08:02", Inode: 173521, Path: "/usr/bin/dbus-daemon"}, false},
		{"7fff0000-7fff1000 rw-p 00000000 00:00 0", memoryMapLine{Start: 0x7fff0000, End: 0x7fff1000, Perms: "rw-p", Device: "00:00"}, false},
		{"7fff0000-7fff1000 rw-p 00000000 00:00 0 ", memoryMapLine{Start: 0x7fff0000, End: 0x7fff1000, Perms: "rw-p", Device: "00:00"}, false},
		{"7fff0000-7fff1000 rw-p 00001000 103:02 5 [anon:java heap]",
			memoryMapLine{Start: 0x7fff0000, End: 0x7fff1000, Perms: "rw-p", Offset: 0x1000, Device: "103:02", Inode: 5, Path: "[anon:java heap]"}, false},
		{"7fff1000-7fff0000 rw-p 00000000 00:00 0", memoryMapLine{}, true}, // end before start
		{"7fff0000 rw-p 00000000 00:00 0", memoryMapLine{}, true},
		{"7fff0000-7fff1000 rw-pq 00000000 00:00 0", memoryMapLine{}, true},
		{"7fff0000-7fff1000 rw-p 00000000 0000 0", memoryMapLine{}, true},
		{"7fff0000-7fff1000 rw-p 00000000 00:00 x", memoryMapLine{}, true},
		{"7fff0000-7fff1000 rw-p", memoryMapLine{}, true},
		{"", memoryMapLine{}, true},
	}
	for _, tt := range tests {
		got, err := parseMemoryMapLine(tt.line)
		if (err != nil) != tt.wantErr {
			t.Errorf("parseMemoryMapLine(%q) error = %v, want error %v", tt.line, err, tt.wantErr)
			continue
		}
		if err == nil && got != tt.want {
			t.Errorf("parseMemoryMapLine(%q) = %+v, want %+v", tt.line, got, tt.want)
		}
	}
}
