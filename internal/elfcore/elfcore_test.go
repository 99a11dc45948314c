package elfcore

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/custodyhq/custody/internal/testenv"
)

// build writes c with each segment filled by fill and returns the file.
func build(t testing.TB, c *Core, fill func(i int, s Segment) []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	n, err := c.WriteHeader(&buf)
	if err != nil {
		t.Fatal(err)
	}
	if n != c.HeaderSize() || int64(buf.Len()) != n {
		t.Fatalf("WriteHeader wrote %d (buffer %d), HeaderSize says %d", n, buf.Len(), c.HeaderSize())
	}
	for i, s := range c.Segments {
		b := fill(i, s)
		if uint64(len(b)) != s.Size {
			t.Fatalf("fill of segment %d gave %d bytes, want %d", i, len(b), s.Size)
		}
		buf.Write(b)
	}
	if int64(buf.Len()) != c.Size() {
		t.Fatalf("core is %d bytes, Size says %d", buf.Len(), c.Size())
	}
	return buf.Bytes()
}

// pattern fills a segment with bytes that identify their own address.
func pattern(_ int, s Segment) []byte {
	b := make([]byte, s.Size)
	for i := range b {
		b[i] = byte((s.Vaddr + uint64(i)) >> 4)
	}
	return b
}

func sampleCore(t testing.TB, m elf.Machine) *Core {
	t.Helper()
	a, err := ArchOf(m)
	if err != nil {
		t.Fatal(err)
	}
	regs := make([]byte, a.RegsSize)
	PutReg(regs, a.PC, 0x401000)
	PutReg(regs, a.SP, 0x7ffd0000)
	main, err := PRStatus{PID: 100, PPID: 1, PGRP: 100, SID: 100, UTime: 1500 * time.Millisecond, Regs: regs}.Encode(a)
	if err != nil {
		t.Fatal(err)
	}
	second, err := PRStatus{PID: 101, PPID: 1, PGRP: 100, SID: 100, Signal: 19}.Encode(a)
	if err != nil {
		t.Fatal(err)
	}
	files, err := EncodeFileNote(4096, []FileMapping{
		{Start: 0x400000, End: 0x402000, Offset: 0, Name: "/usr/bin/x"},
		{Start: 0x402000, End: 0x403000, Offset: 0x2000, Name: "/usr/lib/name with  spaces (deleted)"},
	})
	if err != nil {
		t.Fatal(err)
	}
	return &Core{
		Machine: m,
		Notes: []Note{
			{Name: "CORE", Type: elf.NT_PRSTATUS, Desc: main},
			{Name: "CORE", Type: elf.NT_PRPSINFO, Desc: PRPSInfo{SName: 'S', State: 1, PID: 100, PPID: 1, UID: 1000, Fname: "x", Args: "x --flag"}.Encode()},
			{Name: "CORE", Type: NTAuxv, Desc: []byte{9, 0, 0, 0, 0, 0, 0, 0, 0x10, 0x10, 0x40, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}},
			{Name: "CORE", Type: NTFile, Desc: files},
			{Name: "CORE", Type: elf.NT_PRSTATUS, Desc: second},
			{Name: "LINUX", Type: NTX86XState, Desc: []byte{1, 2, 3}}, // odd length: padding
		},
		Segments: []Segment{
			{Vaddr: 0x400000, Size: 0x2000, Flags: elf.PF_R | elf.PF_X},
			{Vaddr: 0x402000, Size: 0x1000, Flags: elf.PF_R | elf.PF_W},
			{Vaddr: 0x7ffd0000, Size: 0x3000, Flags: elf.PF_R | elf.PF_W},
		},
	}
}

func TestCoreRoundTrip(t *testing.T) {
	for _, m := range []elf.Machine{elf.EM_X86_64, elf.EM_AARCH64} {
		t.Run(m.String(), func(t *testing.T) {
			c := sampleCore(t, m)
			data := build(t, c, pattern)
			f, err := Read(bytes.NewReader(data), int64(len(data)))
			if err != nil {
				t.Fatal(err)
			}
			if f.Machine != m {
				t.Errorf("machine %v, want %v", f.Machine, m)
			}
			if diff := cmp.Diff(c.Notes, f.Notes); diff != "" {
				t.Errorf("notes (-want +got):\n%s", diff)
			}
			var got []Segment
			for _, l := range f.Loads {
				if l.Filesz != l.Memsz {
					t.Errorf("segment %#x: filesz %#x != memsz %#x", l.Vaddr, l.Filesz, l.Memsz)
				}
				if l.Offset%4096 != 0 || l.Align != 4096 {
					t.Errorf("segment %#x: offset %#x, align %d: want page-aligned", l.Vaddr, l.Offset, l.Align)
				}
				got = append(got, Segment{Vaddr: l.Vaddr, Size: l.Memsz, Flags: l.Flags})
			}
			if diff := cmp.Diff(c.Segments, got); diff != "" {
				t.Errorf("segments (-want +got):\n%s", diff)
			}

			// A read spanning two adjacent segments.
			p := make([]byte, 0x20)
			if _, err := f.ReadMemory(p, 0x401ff0); err != nil {
				t.Fatal(err)
			}
			want := pattern(0, Segment{Vaddr: 0x401ff0, Size: 0x20})
			if !bytes.Equal(p, want) {
				t.Errorf("ReadMemory(0x401ff0) = %x, want %x", p, want)
			}
			if _, err := f.ReadMemory(p, 0x500000); !errors.Is(err, ErrNotMapped) {
				t.Errorf("ReadMemory of an unmapped address: %v, want ErrNotMapped", err)
			}

			ts, err := f.Threads()
			if err != nil {
				t.Fatal(err)
			}
			a, _ := ArchOf(m)
			if len(ts) != 2 || ts[0].PID != 100 || ts[1].PID != 101 || ts[1].Signal != 19 ||
				Reg(ts[0].Regs, a.PC) != 0x401000 || Reg(ts[0].Regs, a.SP) != 0x7ffd0000 || ts[0].UTime != 1500*time.Millisecond {
				t.Errorf("threads = %+v", ts)
			}
			ps, err := f.PRPSInfo()
			if err != nil {
				t.Fatal(err)
			}
			if ps.PID != 100 || ps.Fname != "x" || ps.Args != "x --flag" || ps.SName != 'S' || ps.UID != 1000 {
				t.Errorf("prpsinfo = %+v", ps)
			}
			fm, err := f.FileMappings()
			if err != nil {
				t.Fatal(err)
			}
			if fm[1].Name != "/usr/lib/name with  spaces (deleted)" || fm[1].Offset != 0x2000 {
				t.Errorf("file mappings = %+v", fm)
			}
			av, err := f.Auxv()
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff([][2]uint64{{9, 0x401010}}, av); diff != "" {
				t.Errorf("auxv (-want +got):\n%s", diff)
			}
		})
	}
}

// TestCoreStdlib checks the writer against an independent reader.
func TestCoreStdlib(t *testing.T) {
	c := sampleCore(t, elf.EM_X86_64)
	data := build(t, c, pattern)
	f, err := elf.NewFile(bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	if f.Type != elf.ET_CORE || f.Machine != elf.EM_X86_64 || len(f.Progs) != 1+len(c.Segments) {
		t.Fatalf("debug/elf sees type %v machine %v with %d program headers", f.Type, f.Machine, len(f.Progs))
	}
	if f.Progs[0].Type != elf.PT_NOTE {
		t.Errorf("first program header is %v, want PT_NOTE", f.Progs[0].Type)
	}
	for i, s := range c.Segments {
		p := f.Progs[i+1]
		got := make([]byte, p.Filesz)
		if _, err := p.ReadAt(got, 0); err != nil {
			t.Fatal(err)
		}
		if p.Vaddr != s.Vaddr || p.Flags != s.Flags || !bytes.Equal(got, pattern(i, s)) {
			t.Errorf("segment %d: vaddr %#x flags %v, contents match %v", i, p.Vaddr, p.Flags, bytes.Equal(got, pattern(i, s)))
		}
	}
}

// TestCoreManySegments needs PN_XNUM: more program headers than e_phnum holds.
func TestCoreManySegments(t *testing.T) {
	c := &Core{Machine: elf.EM_X86_64, Align: 1}
	for i := range 70000 {
		c.Segments = append(c.Segments, Segment{Vaddr: uint64(i) * 0x2000, Size: 1, Flags: elf.PF_R})
	}
	data := build(t, c, func(i int, _ Segment) []byte { return []byte{byte(i)} })
	f, err := Read(bytes.NewReader(data), int64(len(data)))
	if err != nil {
		t.Fatal(err)
	}
	if len(f.Loads) != 70000 {
		t.Fatalf("read %d segments, want 70000", len(f.Loads))
	}
	b := make([]byte, 1)
	if _, err := f.ReadMemory(b, 69999*0x2000); err != nil || b[0] != byte(69999%256) {
		t.Errorf("last segment reads %x, %v", b, err)
	}
}

func TestCoreReadRejects(t *testing.T) {
	good := build(t, sampleCore(t, elf.EM_X86_64), pattern)
	mutate := func(f func(b []byte) []byte) []byte { return f(bytes.Clone(good)) }
	for name, data := range map[string][]byte{
		"empty":         nil,
		"no magic":      mutate(func(b []byte) []byte { b[0] = 0; return b }),
		"32-bit":        mutate(func(b []byte) []byte { b[elf.EI_CLASS] = byte(elf.ELFCLASS32); return b }),
		"executable":    mutate(func(b []byte) []byte { b[16] = byte(elf.ET_EXEC); return b }),
		"truncated":     good[:len(good)-1],
		"phnum too big": mutate(func(b []byte) []byte { b[56], b[57] = 0xfe, 0xff; return b }),
		"note overruns": mutate(func(b []byte) []byte { b[ehdrSize+4*phdrSize+7] = 0xff; return b }),
	} {
		if _, err := Read(bytes.NewReader(data), int64(len(data))); !errors.Is(err, ErrFormat) {
			t.Errorf("%s: err = %v, want ErrFormat", name, err)
		}
	}
}

func TestCoreEncodeRejects(t *testing.T) {
	a, _ := ArchOf(elf.EM_X86_64)
	if _, err := (PRStatus{Regs: make([]byte, 8)}).Encode(a); err == nil {
		t.Error("PRStatus with 8 bytes of registers encoded")
	}
	if _, err := EncodeFileNote(4096, []FileMapping{{Offset: 100, Name: "x"}}); err == nil {
		t.Error("NT_FILE with an unaligned offset encoded")
	}
	if _, err := (&Core{Machine: elf.EM_386}).WriteHeader(&bytes.Buffer{}); !errors.Is(err, ErrUnsupportedMachine) {
		t.Errorf("EM_386: %v, want ErrUnsupportedMachine", err)
	}
	if a.PRStatusSize() != 336 {
		t.Errorf("x86-64 NT_PRSTATUS is %d bytes; BFD wants 336", a.PRStatusSize())
	}
	if a, _ := ArchOf(elf.EM_AARCH64); a.PRStatusSize() != 392 {
		t.Errorf("AArch64 NT_PRSTATUS is %d bytes; BFD wants 392", a.PRStatusSize())
	}
}

// TestCoreGDB loads a synthetic core in gdb: the notes must be the sizes BFD
// expects, or gdb shows no thread and no registers.
func TestCoreGDB(t *testing.T) {
	gdb := testenv.NeedTool(t, "gdb")
	m, err := MachineOf(runtime.GOARCH)
	if err != nil {
		testenv.Skip(t, "gdb test for this architecture: %v", err)
	}
	c := sampleCore(t, m)
	c.Notes = c.Notes[:5] // the x86 xstate stub is not a valid register set
	const marker = "CUSTODY-ELFCORE-MARKER"
	data := build(t, c, func(i int, s Segment) []byte {
		b := make([]byte, s.Size)
		if i == 2 {
			copy(b[0x100:], marker)
		}
		return b
	})
	path := filepath.Join(t.TempDir(), "core")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(gdb, "-nx", "-batch", "-c", path,
		"-ex", "x/s 0x7ffd0100", "-ex", "info threads", "-ex", "print/x $pc").CombinedOutput()
	if err != nil {
		t.Fatalf("gdb: %v\n%s", err, out)
	}
	for _, want := range []string{`"` + marker + `"`, "LWP 100", "LWP 101", "= 0x401000"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("gdb output lacks %q:\n%s", want, out)
		}
	}
}

func TestCoreX86XStateStandard(t *testing.T) {
	area := func(size int, xcr0 uint64) []byte {
		b := make([]byte, size)
		binary.LittleEndian.PutUint64(b[xcr0Offset:], xcr0)
		return b
	}
	for _, tc := range []struct {
		name string
		b    []byte
		want bool
	}{
		{"SSE only", area(576, 0x3), true},
		{"AVX", area(832, 0x7), true},
		{"AVX truncated", area(800, 0x7), false},
		{"AVX-512, Intel", area(2688, 0xe7), true},
		{"AVX-512 with PKRU, Intel", area(2696, 0x2e7), true},
		{"AVX-512, AMD Zen 4 packed", area(0x980, 0xe7), false},
		{"too short for XCR0", make([]byte, 100), false},
	} {
		if got := X86XStateStandard(tc.b); got != tc.want {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
}
