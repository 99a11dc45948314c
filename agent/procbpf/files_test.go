package procbpf

import (
	"bytes"
	"errors"
	"io"
	"os"
	"strings"
	"syscall"
	"testing"

	"github.com/custodyhq/custody/internal/testenv"
)

var sample = []File{
	{PID: 1, FD: 0, Flags: 0o2, MntID: 25, Pos: 0, Inode: 7, NetNS: 4026531833, Path: "/dev/null", Comm: "systemd"},
	{PID: 1, FD: 3, Flags: 0o2102001, MntID: 31, Pos: 1 << 40, Inode: 1 << 50, NetNS: 4026531833, Path: "/var/log/x (deleted)"},
	{PID: 42, FD: 7, Flags: 0o2, MntID: 9, Inode: 99, NetNS: 4026532000, Path: "socket:[99]", Comm: "fifteen-bytes.."},
	{PID: 42, FD: 8, PathErr: syscall.ENAMETOOLONG},
	{PID: 43, FD: 1, Path: ""},
}

func TestReaderRoundTrip(t *testing.T) {
	var b []byte
	for _, f := range sample {
		b = AppendRecord(b, f)
	}
	r := NewReader(bytes.NewReader(b))
	for i, want := range sample {
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
}

func TestReaderRejects(t *testing.T) {
	whole := AppendRecord(nil, sample[1])
	long := AppendRecord(nil, File{PID: 1})
	long[36], long[37] = 0x01, 0x20 // path length 8193
	unterminated := AppendRecord(nil, File{PID: 1, Comm: "sixteen-bytes..!"})
	trailing := AppendRecord(nil, File{PID: 1, Comm: "a"})
	trailing[42] = 'x'
	wide := AppendRecord(nil, File{PID: 1})
	wide[36], wide[37], wide[38], wide[39] = 0, 0, 0, 0x80
	for name, tc := range map[string]struct {
		data []byte
		want string
	}{
		"header cut":     {whole[:20], "truncated record"},
		"path cut":       {whole[:len(whole)-3], "truncated record"},
		"path too long":  {long, "path length 8193"},
		"error too wide": {wide, "out of range"},
		"nul in path":    {AppendRecord(nil, File{PID: 1, Path: "/a\x00b"}), "NUL in path"},
		"comm unended":   {unterminated, "not NUL-terminated"},
		"comm trailing":  {trailing, "bytes after its end"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := NewReader(bytes.NewReader(tc.data)).Next()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error = %v, want one saying %q", err, tc.want)
			}
			if tc.want == "truncated record" && !errors.Is(err, ErrTruncated) {
				t.Errorf("error %v is not ErrTruncated", err)
			}
		})
	}
}

// FuzzReader: any bytes give records that re-encode to the same bytes, or
// an error; never a panic or a record past the input.
func FuzzReader(f *testing.F) {
	var b []byte
	for _, s := range sample {
		b = AppendRecord(b, s)
	}
	f.Add(b)
	f.Add(b[:50])
	f.Fuzz(func(t *testing.T, data []byte) {
		roundTrip(t, data, NewReader(bytes.NewReader(data)).Next, AppendRecord)
	})
}

// roundTrip parses data with next until it fails and re-encodes every
// record with enc: at io.EOF the bytes must come back whole, and no record
// may reach past the input.
func roundTrip[T any](t *testing.T, data []byte, next func() (T, error), enc func([]byte, T) []byte) {
	t.Helper()
	var again []byte
	for {
		rec, err := next()
		if err != nil {
			if err == io.EOF && !bytes.Equal(again, data) {
				t.Fatalf("records re-encode to %x, input was %x", again, data)
			}
			return
		}
		again = enc(again, rec)
		if len(again) > len(data) {
			t.Fatalf("parsed more bytes (%d) than given (%d)", len(again), len(data))
		}
	}
}

// drainFind reads a live iterator to its end and returns the last record
// match accepts (nil if none did) and how many records there were.
func drainFind[T any](t *testing.T, next func() (T, error), match func(T) bool) (*T, int) {
	t.Helper()
	var found *T
	n := 0
	for {
		rec, err := next()
		if err == io.EOF {
			return found, n
		}
		if err != nil {
			t.Fatal(err)
		}
		n++
		if match(rec) {
			found = &rec
		}
	}
}

// TestOpenFilesLive loads the iterator and finds this process's own
// descriptors in it, as /proc shows them.
func TestOpenFilesLive(t *testing.T) {
	testenv.NeedRoot(t)
	f, err := os.CreateTemp(t.TempDir(), "held")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString("twelve bytes"); err != nil {
		t.Fatal(err)
	}
	it, err := OpenFiles("/proc")
	if err != nil {
		testenv.Skip(t, "BPF iterator unavailable: %v", err)
	}
	defer it.Close()
	found, n := drainFind(t, it.Next, func(rec File) bool { return rec.PID == os.Getpid() && rec.FD == int(f.Fd()) })
	var st syscall.Stat_t
	if err := syscall.Fstat(int(f.Fd()), &st); err != nil {
		t.Fatal(err)
	}
	if found == nil {
		t.Fatalf("descriptor %d of pid %d not among %d records", f.Fd(), os.Getpid(), n)
	}
	comm, err := os.ReadFile("/proc/self/comm")
	if err != nil {
		t.Fatal(err)
	}
	if found.Comm != strings.TrimSuffix(string(comm), "\n") {
		t.Errorf("comm %q, /proc/self/comm says %q", found.Comm, comm)
	}
	if found.Path != f.Name() || found.Pos != 12 || found.Inode != st.Ino || found.Flags&0o3 != 2 || found.Flags&syscall.O_CLOEXEC == 0 {
		t.Errorf("record = %+v, want path %s, pos 12, inode %d, O_RDWR|O_CLOEXEC", *found, f.Name(), st.Ino)
	}
}
