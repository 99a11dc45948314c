package artifact

import (
	"bytes"
	"encoding/json"
	"testing"
)

// encodingJSON is what the records' JSON must equal: encoding/json as the
// snapshots configure it.
func encodingJSON(t testing.TB, rec any) []byte {
	t.Helper()
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(rec); err != nil {
		t.Fatal(err)
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n"))
}

var jsonEdgeStrings = []string{
	"", "/usr/lib/x y.so (deleted)", `quote " and \ backslash`, "tab\tnew\nline\rcr\bbs\fff",
	"\x00\x01\x1f\x7f", "<html> & 'single'", "é ü 日本", "\u2028\u2029", "bad \xff\xfe utf8 \xc3", "\xe2\x80",
	"socket:[12345]", "anon_inode:[eventfd]",
}

func recordSamples(s string) []any {
	fd, pos, mnt, size := 7, int64(-1), int64(31), int64(1<<62)
	ino := uint64(1<<64 - 1)
	uid := uint32(1<<32 - 1)
	return []any{
		openFileRecord{},
		openFileRecord{PID: 1, FlagNames: []string{}},
		openFileRecord{PID: 1 << 30, FD: &fd, Path: s, Type: s, Deleted: true, Flags: "0102002", Access: "rw",
			FlagNames: []string{"O_APPEND", s}, Pos: &pos, Inode: &ino, Device: s, MntID: &mnt, Size: &size, Error: s},
		memoryMapRecord{},
		memoryMapRecord{PID: 42, Start: "0x7f0000000000", End: s, Size: &ino, Permissions: "r-xp", Offset: &ino,
			Device: "fe:01", Inode: &ino, Path: s, Pseudo: true, Deleted: true, Error: s},
		socketRecord{},
		socketRecord{PID: &fd, FD: &fd, Name: s, Socket: ino, Table: "tcp6", Family: 10, Protocol: -6, Type: s,
			LocalAddress: s, LocalPort: 65535, RemoteAddress: "::1", RemotePort: -1, Path: s, State: s, Listening: true,
			Interface: &fd, UID: &uid, NetNamespace: 4026531840, ContainerID: s},
	}
}

func TestRecordJSONMatchesEncodingJSON(t *testing.T) {
	for _, s := range jsonEdgeStrings {
		for _, rec := range recordSamples(s) {
			got := rec.(jsonAppender).appendJSON(nil)
			if want := encodingJSON(t, rec); !bytes.Equal(got, want) {
				t.Errorf("%T with %q:\n got %s\nwant %s", rec, s, got, want)
			}
		}
	}
}

func FuzzRecordJSON(f *testing.F) {
	for _, s := range jsonEdgeStrings {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		for _, rec := range recordSamples(s) {
			got := rec.(jsonAppender).appendJSON(nil)
			if want := encodingJSON(t, rec); !bytes.Equal(got, want) {
				t.Fatalf("%T with %q:\n got %s\nwant %s", rec, s, got, want)
			}
		}
	})
}
