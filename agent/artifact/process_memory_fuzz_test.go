package artifact

import (
	"debug/elf"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/custodyhq/custody/internal/elfcore"
)

// FuzzProcessMemoryRegions feeds arbitrary text to the maps/smaps parser:
// /proc/PID/maps holds paths the target process chose. Whatever it accepts
// must be a well-formed region the planner can use.
func FuzzProcessMemoryRegions(f *testing.F) {
	for _, name := range []string{"smaps", "maps"} {
		b, err := os.ReadFile(filepath.Join("testdata", "procmem", "proc", "100", name))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(string(b))
	}
	f.Add("7f00-7f01 rw-s 0 00:05 7 /SYSV00000000 (deleted)\nVmFlags: rd wr sh\n")
	f.Add("1000-2000 r--p 0 fe:00 1 \n")
	f.Add("ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]\n")
	f.Fuzz(func(t *testing.T, s string) {
		regions, err := parseRegions(strings.NewReader(s))
		if err != nil {
			return
		}
		for _, r := range regions {
			if r.Start >= r.End {
				t.Fatalf("accepted an empty or inverted region %#x-%#x", r.Start, r.End)
			}
			if strings.ContainsRune(r.Path, '\n') {
				t.Fatalf("path %q holds a newline", r.Path)
			}
		}
		for _, f := range []regionFilter{{classes: []string{"all"}, skipFileRO: true}, {classes: []string{"anon", "exec"}}} {
			p := planRegions(regions, f, 1<<20, 4096)
			for i, s := range p.segments {
				if s.Start >= s.End || i > 0 && p.segments[i-1].Start > s.Start {
					t.Fatalf("plan segment %d %#x-%#x out of order or empty", i, s.Start, s.End)
				}
			}
		}
	})
}

// FuzzProcessMemorySyscallRegs covers /proc/PID/task/TID/syscall.
func FuzzProcessMemorySyscallRegs(f *testing.F) {
	f.Add("7 0x7ffc1000 0x1 0x3e8 0x0 0x0 0x0 0xe800 0x3010\n")
	f.Add("-1 0x7ffe0010 0x401000")
	f.Add("running")
	a, err := elfcore.ArchOf(elf.EM_X86_64)
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if regs, ok := parseSyscallRegs(s, a); ok && len(regs) != a.RegsSize {
			t.Fatalf("%d bytes of registers, want %d", len(regs), a.RegsSize)
		}
	})
}
