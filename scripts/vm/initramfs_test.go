package vm

import (
	"bytes"
	"compress/gzip"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/google/go-cmp/cmp"
)

type cpioEntryRead struct {
	Name string
	Mode uint64
	Data string
}

// readNewc decodes a newc archive, as the kernel's initramfs unpacker does.
func readNewc(t *testing.T, b []byte) []cpioEntryRead {
	t.Helper()
	var out []cpioEntryRead
	for off := 0; ; {
		h := b[off : off+110]
		if string(h[:6]) != "070701" {
			t.Fatalf("bad magic at %d: %q", off, h[:6])
		}
		field := func(i int) uint64 {
			v, err := strconv.ParseUint(string(h[6+8*i:14+8*i]), 16, 32)
			if err != nil {
				t.Fatal(err)
			}
			return v
		}
		mode, size, namesize := field(1), int(field(6)), int(field(11))
		name := string(b[off+110 : off+110+namesize-1])
		off += 110 + namesize
		off += (4 - off%4) % 4
		if name == "TRAILER!!!" {
			return out
		}
		out = append(out, cpioEntryRead{name, mode, string(b[off : off+size])})
		off += size
		off += (4 - off%4) % 4
	}
}

func TestInitramfs(t *testing.T) {
	var buf bytes.Buffer
	err := Initramfs{
		"/init":            {Mode: 0o755, Data: []byte("#!/bin/sh\n")},
		"/etc/custody/env": {Mode: 0o600, Data: []byte("A=1\n")},
		"/bin/sh":          {Link: "busybox"},
	}.Write(&buf)
	if err != nil {
		t.Fatal(err)
	}
	zr, err := gzip.NewReader(&buf)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	want := []cpioEntryRead{
		{"bin", 0o040755, ""},
		{"etc", 0o040755, ""},
		{"etc/custody", 0o040755, ""},
		{"bin/sh", 0o120777, "busybox"},
		{"etc/custody/env", 0o100600, "A=1\n"},
		{"init", 0o100755, "#!/bin/sh\n"},
	}
	if diff := cmp.Diff(want, readNewc(t, raw)); diff != "" {
		t.Errorf("archive (-want +got):\n%s", diff)
	}
}

// ci-deps.sh records the kernel it fell back to when the pinned one left
// Debian's archive; the test boots that one, but only for the pin it
// replaced.
func TestKernelABIFallback(t *testing.T) {
	pin := envValue(kernelEnv, "KERNEL_ABI")
	dir := t.TempDir()
	t.Setenv("CUSTODY_VM_CACHE", dir)
	if got := KernelABI(); got != pin {
		t.Fatalf("no abi file: KernelABI() = %q, want the pin %q", got, pin)
	}
	os.WriteFile(filepath.Join(dir, "abi"), []byte("PIN="+pin+"\nABI=6.1.0-99-amd64\n"), 0o644)
	if got := KernelABI(); got != "6.1.0-99-amd64" {
		t.Errorf("fallback recorded for this pin: KernelABI() = %q", got)
	}
	if got := DefaultCache().Dir; got != filepath.Join(dir, "6.1.0-99-amd64") {
		t.Errorf("DefaultCache().Dir = %q", got)
	}
	os.WriteFile(filepath.Join(dir, "abi"), []byte("PIN=5.10.0-1-amd64\nABI=6.1.0-99-amd64\n"), 0o644)
	if got := KernelABI(); got != pin {
		t.Errorf("fallback recorded for another pin: KernelABI() = %q, want %q", got, pin)
	}
}
