package artifact

// Fuzz targets for every parser of /proc (and /etc) text that is ours. The
// text comes from the host under investigation, so a parser must never
// panic, and whatever it returns must encode as one valid JSON line.

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"unicode/utf8"
)

// oneJSONLine fails unless v encodes as exactly one line of valid JSON: a
// newline or invalid UTF-8 from the input must come out escaped.
func oneJSONLine(t *testing.T, v any) {
	t.Helper()
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		t.Fatalf("encode %#v: %v", v, err)
	}
	b := buf.Bytes()
	if bytes.Count(b, []byte("\n")) != 1 || !json.Valid(b) || !utf8.Valid(b) {
		t.Fatalf("%#v encodes as %q, not one JSON line", v, b)
	}
}

func FuzzParseNetIPLine(f *testing.F) {
	f.Add("   0: 0100007F:0CEA 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000 0 123456 1 0000000000000000 100")
	f.Add("   1: 0000000000000000FFFF00000100007F:0277 0000000000000000FFFF00000200007F:D431 01 00000010:00000020 00:00000000 00000000    33        0 1011 1")
	f.Add("    9: ZZZ not a socket")
	f.Fuzz(func(t *testing.T, line string) {
		l, err := parseNetIPLine(line)
		if err != nil {
			return
		}
		if !l.Local.IsValid() || !l.Remote.IsValid() {
			t.Fatalf("%q parsed to invalid addresses %v %v", line, l.Local, l.Remote)
		}
		oneJSONLine(t, socketRecord{LocalAddress: l.Local.Addr().String(), State: tcpStateName(l.State)})
	})
}

func FuzzParseNetUnix(f *testing.F) {
	f.Add("Num       RefCount Protocol Flags    Type St Inode Path\n0000000000000000: 00000002 00000000 00010000 0001 01  1002 /run/a\n")
	f.Add("0000000000000000: 00000002 00000000 00000000 0001 01  1005 /tmp/a  b\nc\n0000000000000000: 00000003 00000000 00000000 0001 03  1010\n")
	f.Add("garbage\n\x00\xff\n")
	f.Fuzz(func(t *testing.T, in string) {
		n := 0
		err := parseNetUnix(strings.NewReader(in), func(l netUnixLine) error {
			n++
			oneJSONLine(t, socketRecord{Path: l.Path, Type: unixTypes[l.Type], State: unixStates[l.State]})
			return nil
		}, func(string) {})
		if err != nil {
			t.Fatalf("parseNetUnix returned %v for an in-memory reader", err)
		}
		if n > strings.Count(in, "\n")+1 {
			t.Fatalf("%d sockets from %d lines", n, strings.Count(in, "\n")+1)
		}
	})
}

func FuzzParseNetPacketLine(f *testing.F) {
	f.Add("ffff8880049e2000 3      3    88cc   2     1 0      0      23456")
	f.Add("0000000000000000 3      3    0003   0     1 0      1000   1007  ")
	f.Fuzz(func(t *testing.T, line string) {
		if l, err := parseNetPacketLine(line); err == nil {
			oneJSONLine(t, l)
		}
	})
}

func FuzzParseMemoryMapLine(f *testing.F) {
	f.Add("55d0c0a00000-55d0c0a26000 r--p 00000000 fe:01 1234                       /usr/lib/systemd/systemd")
	f.Add("7f0000000000-7f0000001000 r-xp 00000000 fe:01 5678      /usr/lib/lib  two  spaces.so (deleted)")
	f.Add("ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]")
	f.Add("00400000-00401000 r-xp 00000000 fe:01 999 /tmp/.x\\012\xff")
	f.Fuzz(func(t *testing.T, line string) {
		m, err := parseMemoryMapLine(line)
		if err != nil {
			return
		}
		if m.End < m.Start || len(m.Perms) != 4 {
			t.Fatalf("%q parsed to %+v", line, m)
		}
		oneJSONLine(t, memoryMapRecord{Path: m.Path, Permissions: m.Perms, Device: m.Device})
	})
}

func FuzzParseFDInfo(f *testing.F) {
	f.Add([]byte("pos:\t42\nflags:\t02100002\nmnt_id:\t15\nino:\t77\n"))
	f.Add([]byte("pos:\t0\nflags:\t02\nmnt_id:\t9\ninotify wd:1 ino:2 sdev:3 mask:4\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		fi, err := parseFDInfo(b)
		if err != nil {
			return
		}
		access, names := describeOpenFlags(fi.Flags)
		oneJSONLine(t, openFileRecord{Access: access, FlagNames: names})
	})
}

func FuzzParseCgroup(f *testing.F) {
	f.Add([]byte("0::/system.slice/docker-3f4e5d6c7b8a99887766554433221100ffeeddccbbaa00998877665544332211.scope\n"))
	f.Add([]byte("12:pids:/ecs/8ac6a5a8c1f24e1c9c85b3a4e6e7c5c1/8ac6a5a8c1f24e1c9c85b3a4e6e7c5c1-3677734812\n0::/\n"))
	f.Add([]byte("0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1234_5678.slice/cri-containerd-abcdefabcdef0123.scope\n"))
	f.Add([]byte("::\n:::\n0\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		info := parseCgroup(b)
		oneJSONLine(t, processRecord{CgroupPath: info.Path, ContainerID: info.Container.ID, ContainerRuntime: info.Container.Runtime})
		if info.Container.ID != "" && strings.Contains(info.Container.ID, "/") {
			t.Fatalf("container id %q spans path segments", info.Container.ID)
		}
	})
}

func FuzzParseEnviron(f *testing.F) {
	f.Add([]byte("AWS_SECRET_ACCESS_KEY=abc\x00DATABASE_URL=postgres://app:hunter2@db:5432/x\x00PWD=/tmp\x00"), false)
	f.Add([]byte("A=b=c\x00\x00=\x00noequals"), true)
	f.Fuzz(func(t *testing.T, b []byte, unredacted bool) {
		env := parseEnviron(b, unredacted)
		oneJSONLine(t, env)
		if unredacted {
			return
		}
		for _, kv := range env {
			key, val, ok := strings.Cut(kv, "=")
			if ok && secretKey(key) && val != "" && val != redacted {
				t.Fatalf("secret-looking %q kept its value %q", key, val)
			}
		}
	})
}

func FuzzParseIDFile(f *testing.F) {
	f.Add([]byte("root:x:0:0:root:/root:/bin/bash\n# c\n+nis\nbad\nalice:x:1000:1000::/home/alice:/bin/sh\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		oneJSONLine(t, parseIDFile(b))
	})
}

func FuzzParseNSLink(f *testing.F) {
	f.Add("net", "net:[4026531840]")
	f.Add("pid", "pid:[]")
	f.Fuzz(func(t *testing.T, kind, target string) {
		_, _ = parseNSLink(kind, target)
	})
}

func FuzzParseProcStat(f *testing.F) {
	f.Add([]byte("4242 (ev)il\n) R 1 4242 4242 0 -1 4194560 36434 9357543 0 409 84 198 23968 10133 20 -5 3 0 8640000 42688512 3060"))
	f.Add([]byte("1 () S"))
	f.Fuzz(func(t *testing.T, b []byte) {
		if s, err := parseProcStat(b); err == nil {
			oneJSONLine(t, processRecord{Name: s.Comm, State: s.State})
		}
	})
}

func FuzzParseProcStatus(f *testing.F) {
	f.Add([]byte("Name:\tx\nUid:\t1000\t0\t1000\t1000\nGid:\t1\t1\t1\t1\nNSpid:\t7\t1\nVmRSS:\t 12 kB\nCapEff:\t000001ffffffffff\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := parseProcStatus(b)
		if err == nil && !s.HaveIDs {
			t.Fatalf("%q: no error but no ids", b)
		}
		oneJSONLine(t, processRecord{CapEffNames: capList(s.CapEff)})
	})
}
