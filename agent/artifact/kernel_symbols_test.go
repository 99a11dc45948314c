package artifact

import (
	"archive/zip"
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestKernelSymbols(t *testing.T) {
	dir := t.TempDir()
	files := map[string]string{
		"proc/version":                   "Linux version 6.1.0-test-amd64 (debian-kernel@lists.debian.org) #1 SMP PREEMPT_DYNAMIC Debian 6.1.192-2\n",
		"proc/sys/kernel/osrelease":      testRelease + "\n",
		"proc/kallsyms":                  "0000000000000000 A fixed_percpu_data\nffffffff81000000 T _text\nffffffff81000040 T startup_64\n",
		"proc/modules":                   "e1000 159744 0 - Live 0xffffffffc0000000\n",
		"sys/kernel/btf/vmlinux":         "\x9f\xeb\x01\x00btf-bytes",
		"etc/os-release":                 "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nID=debian\n",
		"boot/System.map-" + testRelease: "ffffffff81000000 T _text\n",
	}
	for p, s := range files {
		path := filepath.Join(dir, p)
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	kind, err := Lookup("kernel_symbols")
	if err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 11, 22, 8, 0, 0, 0, time.UTC)
	env := Env{ProcRoot: filepath.Join(dir, "proc"), SysRoot: filepath.Join(dir, "sys"), HostRoot: dir, Now: func() time.Time { return now }}
	var out bytes.Buffer
	res, err := kind.Collect(context.Background(), env, nil, &out)
	if err != nil {
		t.Fatal(err)
	}
	zr, err := zip.NewReader(bytes.NewReader(out.Bytes()), int64(out.Len()))
	if err != nil {
		t.Fatalf("not a ZIP archive: %v", err)
	}
	got := map[string]string{}
	for _, f := range zr.File {
		if f.Method != zip.Store {
			t.Errorf("%s: method %d, want stored", f.Name, f.Method)
		}
		rc, err := f.Open()
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(rc) // checks the CRC-32 too
		rc.Close()
		if err != nil {
			t.Fatalf("%s: %v", f.Name, err)
		}
		got[f.Name] = string(b)
	}
	want := map[string]string{
		"banner":                         files["proc/version"],
		"osrelease":                      files["proc/sys/kernel/osrelease"],
		"kallsyms":                       files["proc/kallsyms"],
		"modules":                        files["proc/modules"],
		"btf/vmlinux":                    files["sys/kernel/btf/vmlinux"],
		"os-release":                     files["etc/os-release"],
		"boot/System.map-" + testRelease: files["boot/System.map-"+testRelease],
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("archive (-want +got):\n%s", diff)
	}
	if res.Details["kallsyms_addresses"] != "visible" || !strings.HasPrefix(res.Details["banner"], "Linux version 6.1.0-test-amd64") {
		t.Errorf("Details = %v", res.Details)
	}
	if len(res.Warnings) != 0 {
		t.Errorf("Warnings = %v", res.Warnings)
	}

	// Without BTF and with hidden addresses, the archive is still made and
	// the warnings say what is missing.
	os.Remove(filepath.Join(dir, "sys/kernel/btf/vmlinux"))
	os.WriteFile(filepath.Join(dir, "proc/kallsyms"), []byte("0000000000000000 T _text\n0000000000000000 T startup_64\n"), 0o644)
	out.Reset()
	res, err = kind.Collect(context.Background(), env, nil, &out)
	if err != nil {
		t.Fatal(err)
	}
	w := strings.Join(res.Warnings, "\n")
	if !strings.Contains(w, "btf/vmlinux") || !strings.Contains(w, "kallsyms: addresses are hidden") {
		t.Errorf("Warnings = %q, want the missing BTF and hidden kallsyms", w)
	}
	if _, err := zip.NewReader(bytes.NewReader(out.Bytes()), int64(out.Len())); err != nil {
		t.Errorf("archive without BTF: %v", err)
	}
}
