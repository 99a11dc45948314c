package artifact

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"debug/elf"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/custodyhq/custody/internal/elfcore"
	"github.com/custodyhq/custody/internal/testenv"
)

// procMemFakeEnv is a fake host whose pid 100 has maps, threads, an
// auxiliary vector and a "mem" file whose byte at offset A stands for the
// memory at address A.
func procMemFakeEnv() Env {
	return Env{ProcRoot: filepath.Join("testdata", "procmem", "proc"), Now: fixedNow}
}

func TestProcessMemoryParams(t *testing.T) {
	for _, tc := range []struct {
		p       Params
		want    procMemOptions
		wantErr string
	}{
		{p: Params{"pid": "42"}, want: procMemOptions{pids: []int{42},
			filter: regionFilter{classes: []string{"all"}, skipFileRO: true}, maxProcess: 8 << 30, maxTotal: 32 << 30}},
		{p: Params{"pid": "1, 2,2", "regions": "anon,exec", "skip_file_ro": "false", "freeze": "true",
			"max_process_bytes": "512MiB", "max_total_bytes": "0"},
			want: procMemOptions{pids: []int{1, 2}, filter: regionFilter{classes: []string{"anon", "exec"}},
				maxProcess: 512 << 20, freeze: true}},
		{p: Params{"container": "4f2a8c1e9b7d"}, want: procMemOptions{container: "4f2a8c1e9b7d",
			filter: regionFilter{classes: []string{"all"}, skipFileRO: true}, maxProcess: 8 << 30, maxTotal: 32 << 30}},
		{p: Params{}, wantErr: "name the processes"},
		{p: Params{"pid": "0"}, wantErr: `pid "0"`},
		{p: Params{"pid": "1;2"}, wantErr: `pid "1;2"`},
		{p: Params{"process_name": "("}, wantErr: "process_name"},
		{p: Params{"container": "abc"}, wantErr: "at least 12"},
		{p: Params{"container": "../../etc/passwd"}, wantErr: "container"},
		{p: Params{"pid": "1", "regions": "anon,bogus"}, wantErr: `unknown class "bogus"`},
		{p: Params{"pid": "1", "freeze": "yes please"}, wantErr: "freeze"},
		{p: Params{"pid": "1", "max_total_bytes": "10PB"}, wantErr: "unknown unit"},
	} {
		got, err := parseProcMemParams(tc.p)
		if tc.wantErr != "" {
			if err == nil || !errors.Is(err, ErrBadParam) || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("%v: err = %v, want ErrBadParam mentioning %q", tc.p, err, tc.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("%v: %v", tc.p, err)
			continue
		}
		if diff := cmp.Diff(tc.want, got, cmp.AllowUnexported(procMemOptions{}, regionFilter{})); diff != "" {
			t.Errorf("%v (-want +got):\n%s", tc.p, diff)
		}
	}
	if o, err := parseProcMemParams(Params{"process_name": "^ngin."}); err != nil || !o.name.MatchString("nginx") {
		t.Errorf("process_name: %v, %v", o.name, err)
	}
}

func TestProcessMemorySize(t *testing.T) {
	for in, want := range map[string]uint64{"0": 0, "4096": 4096, "1K": 1 << 10, "3MiB": 3 << 20, "8g": 8 << 30, "2TiB": 2 << 40} {
		if got, err := parseProcMemSize(in); err != nil || got != want {
			t.Errorf("parseProcMemSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "G", "-1", "1.5G", "99999999999T", "1 GB"} {
		if _, err := parseProcMemSize(in); err == nil {
			t.Errorf("parseProcMemSize(%q) succeeded", in)
		}
	}
}

func TestProcessMemorySelect(t *testing.T) {
	env := procMemFakeEnv().withDefaults()
	for _, tc := range []struct {
		p           Params
		want        []int
		wantRefused map[int]string
	}{
		{p: Params{"pid": "100"}, want: []int{100}},
		{p: Params{"process_name": "^nginx$"}, want: []int{100, 101}},
		{p: Params{"container": "4f2a8c1e9b7d"}, want: []int{100, 101}},
		{p: Params{"container": "0123456789abcdef0123456789abcdef-2531612879"}, want: []int{200}},
		// Everything but the kernel thread, the zombie and the agent itself.
		{p: Params{"process_name": "."}, want: []int{1, 100, 101, 200}},
		{p: Params{"container": "4f2a8c1e9b7d", "process_name": "app"}},
		{p: Params{"pid": "100,200", "process_name": "nginx"}, want: []int{100},
			wantRefused: map[int]string{200: "does not match process_name"}},
		{p: Params{"pid": "2,300,400,999"}, wantRefused: map[int]string{
			2: "kernel thread", 300: "zombie", 400: "agent itself", 999: ErrProcessGone.Error()}},
	} {
		o, err := parseProcMemParams(tc.p)
		if err != nil {
			t.Fatal(err)
		}
		targets, refused, err := selectProcesses(env, o)
		if err != nil {
			t.Fatal(err)
		}
		var got []int
		for _, tg := range targets {
			got = append(got, tg.pid)
		}
		if diff := cmp.Diff(tc.want, got); diff != "" {
			t.Errorf("%v: pids (-want +got):\n%s", tc.p, diff)
		}
		gotRefused := map[int]string{}
		for pid, err := range refused {
			gotRefused[pid] = err.Error()
		}
		if len(gotRefused) != len(tc.wantRefused) {
			t.Errorf("%v: refused %v, want %v", tc.p, gotRefused, tc.wantRefused)
		}
		for pid, want := range tc.wantRefused {
			if !strings.Contains(gotRefused[pid], want) {
				t.Errorf("%v: pid %d refused with %q, want it to mention %q", tc.p, pid, gotRefused[pid], want)
			}
		}
	}
}

func readFakeRegions(t *testing.T, name string) []procRegion {
	t.Helper()
	f, err := os.Open(filepath.Join("testdata", "procmem", "proc", "100", name))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	regions, err := parseRegions(f)
	if err != nil {
		t.Fatal(err)
	}
	return regions
}

func TestProcessMemoryParseRegions(t *testing.T) {
	smaps := readFakeRegions(t, "smaps")
	maps := readFakeRegions(t, "maps")
	if len(smaps) != 12 || len(maps) != 12 {
		t.Fatalf("parsed %d smaps and %d maps regions, want 12 each", len(smaps), len(maps))
	}
	want := []procRegion{
		{Start: 0x4000, End: 0x5000, Read: true, Offset: 0x3000, Dev: "fe:00", Inode: 1234, Path: "/usr/sbin/nginx",
			Rss: 4 << 10, Anonymous: 4 << 10},
		{Start: 0x9000, End: 0xa000, Dev: "00:00"},
		{Start: 0xa000, End: 0xb000, Read: true, Write: true, Shared: true, Dev: "00:05", Inode: 77, Path: "/dev/dri/card0",
			Rss: 4 << 10, Flags: vmIO | vmPFNMap | vmDontDump},
		// Two spaces inside the name survive; procfs.ProcMaps would fold them.
		{Start: 0x10000, End: 0x11000, Read: true, Write: true, Dev: "fe:00", Inode: 99, Path: "/tmp/odd  name (deleted)",
			Rss: 4 << 10, Anonymous: 4 << 10},
	}
	got := []procRegion{smaps[2], smaps[6], smaps[7], smaps[11]}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("smaps regions (-want +got):\n%s", diff)
	}
	for i := range smaps {
		s, m := smaps[i], maps[i]
		s.Rss, s.Anonymous, s.Flags = 0, 0, 0
		if diff := cmp.Diff(s, m); diff != "" {
			t.Errorf("maps and smaps disagree on region %d (-smaps +maps):\n%s", i, diff)
		}
	}

	for _, bad := range []string{
		"Rss: 4 kB\n",                 // a field before any mapping
		"1000-0fff r--p 0 fe:00 1\n",  // ends before it starts
		"1000-2000 rwxx 0 fe:00 1\n",  // permissions
		"1000-2000 r--p zz fe:00 1\n", // offset
		"1000-2000 r--p 0 fe00 1\n",   // device
		"1000-2000 r--p 0 fe:00 -1\n", // inode
		"1000-2000 r--p 0\n",          // too few fields
		"1000-2000 r--p 0 fe:00 1\nRss: lots\n",
		"1000-2000 r--p 0 fe:00 1 /" + strings.Repeat("a", maxRegionLine) + "\n",
	} {
		if _, err := parseRegions(strings.NewReader(bad)); err == nil {
			t.Errorf("parseRegions(%.60q) succeeded", bad)
		}
	}
}

func TestProcessMemoryPlan(t *testing.T) {
	regions := readFakeRegions(t, "smaps")
	all := regionFilter{classes: []string{"all"}, skipFileRO: true}
	seg := func(start, end uint64, flags elf.ProgFlag) plannedSegment {
		return plannedSegment{Start: start, End: end, Flags: flags}
	}
	const r, w, x = elf.PF_R, elf.PF_W, elf.PF_X
	for _, tc := range []struct {
		name  string
		f     regionFilter
		limit uint64
		want  []plannedSegment
	}{
		{"defaults", all, 0, []plannedSegment{
			seg(0x1000, 0x2000, r), // ELF header page only
			// 0x3000 r-x of nginx: on disk, unmodified
			seg(0x4000, 0x5000, r),                             // read-only but relocated
			seg(0x5000, 0x6000, r|w), seg(0x6000, 0x8000, r|w), // data, heap
			seg(0x8000, 0x9000, r|x),                            // memfd code
			seg(0xc000, 0xe000, r|x), seg(0xe000, 0x10000, r|w), // vdso, stack
			seg(0x10000, 0x11000, r|w), // deleted file
		}},
		{"everything readable", regionFilter{classes: []string{"all"}}, 0, []plannedSegment{
			seg(0x1000, 0x3000, r), seg(0x3000, 0x4000, r|x), seg(0x4000, 0x5000, r),
			seg(0x5000, 0x6000, r|w), seg(0x6000, 0x8000, r|w), seg(0x8000, 0x9000, r|x),
			seg(0xc000, 0xe000, r|x), seg(0xe000, 0x10000, r|w), seg(0x10000, 0x11000, r|w),
		}},
		{"anon", regionFilter{classes: []string{"anon"}, skipFileRO: true}, 0, []plannedSegment{
			seg(0x6000, 0x8000, r|w), seg(0xe000, 0x10000, r|w),
		}},
		{"exec", regionFilter{classes: []string{"exec"}}, 0, []plannedSegment{
			seg(0x3000, 0x4000, r|x), seg(0x8000, 0x9000, r|x), seg(0xc000, 0xe000, r|x),
		}},
		{"heap,stack", regionFilter{classes: []string{"heap", "stack"}}, 0, []plannedSegment{
			seg(0x6000, 0x8000, r|w), seg(0xe000, 0x10000, r|w),
		}},
		// Code found nowhere on disk first, then heap and stack (in address
		// order); the stack is cut at the cap.
		{"cap of 4 pages", all, 0x4000, []plannedSegment{
			seg(0x6000, 0x8000, r|w), seg(0x8000, 0x9000, r|x), seg(0xe000, 0xf000, r|w),
		}},
	} {
		p := planRegions(regions, tc.f, tc.limit, 4096)
		if diff := cmp.Diff(tc.want, p.segments); diff != "" {
			t.Errorf("%s (-want +got):\n%s", tc.name, diff)
		}
		var sum uint64
		for _, s := range p.segments {
			sum += s.End - s.Start
		}
		if sum != p.bytes || (tc.limit > 0 && sum > tc.limit) {
			t.Errorf("%s: plan claims %d bytes, segments hold %d, limit %d", tc.name, p.bytes, sum, tc.limit)
		}
	}
}

func TestProcessMemoryPtraceError(t *testing.T) {
	eperm := &os.PathError{Op: "open", Path: "/proc/7/mem", Err: syscall.EPERM}
	for _, tc := range []struct {
		err    error
		scope  int
		hasCap bool
		want   error
		says   string
	}{
		{eperm, -1, false, ErrPtraceDenied, "lacks CAP_SYS_PTRACE"},
		{eperm, 0, false, ErrPtraceDenied, "lacks CAP_SYS_PTRACE"},
		{syscall.EACCES, 0, false, ErrPtraceDenied, "lacks CAP_SYS_PTRACE"},
		{eperm, 0, true, ErrPtraceDenied, "despite CAP_SYS_PTRACE"},
		{eperm, 1, false, ErrPtraceScope, "ptrace_scope=1"},
		{eperm, 2, false, ErrPtraceScope, "ptrace_scope=2"},
		{eperm, 1, true, ErrPtraceDenied, "despite CAP_SYS_PTRACE"},
		{eperm, 3, true, ErrPtraceScope, "until reboot"},
	} {
		err := ptraceError(7, "open memory", tc.err, tc.scope, tc.hasCap)
		if !errors.Is(err, tc.want) || !errors.Is(err, syscall.EPERM) && !errors.Is(err, syscall.EACCES) ||
			!strings.Contains(err.Error(), tc.says) || !strings.Contains(err.Error(), "pid 7") {
			t.Errorf("scope %d, cap %v: %v; want %v saying %q", tc.scope, tc.hasCap, err, tc.want, tc.says)
		}
	}
	if err := ptraceError(7, "x", syscall.ESRCH, 3, false); errors.Is(err, ErrPtraceScope) || errors.Is(err, ErrPtraceDenied) {
		t.Errorf("ESRCH classified as a permission problem: %v", err)
	}
}

func TestProcessMemorySyscallRegs(t *testing.T) {
	a, _ := elfcore.ArchOf(elf.EM_X86_64)
	regs, ok := parseSyscallRegs("7 0x7ffc1000 0x1 0x3e8 0x0 0x0 0x0 0x7ffe0010 0x7f0000001234\n", a)
	if !ok || elfcore.Reg(regs, a.PC) != 0x7f0000001234 || elfcore.Reg(regs, a.SP) != 0x7ffe0010 ||
		elfcore.Reg(regs, a.Syscall) != 7 || elfcore.Reg(regs, a.Args[0]) != 0x7ffc1000 || elfcore.Reg(regs, a.Args[2]) != 0x3e8 {
		t.Errorf("in a syscall: %x, %v", regs, ok)
	}
	regs, ok = parseSyscallRegs("-1 0x7ffe0010 0x401000", a)
	if !ok || elfcore.Reg(regs, a.PC) != 0x401000 || elfcore.Reg(regs, a.Syscall) != 0 {
		t.Errorf("blocked: %x, %v", regs, ok)
	}
	for _, bad := range []string{"running", "", "-1 0x1", "7 0x1 0x2", "-2 0x1 0x2", "1 2 3 4 5 6 7 8 zz"} {
		if _, ok := parseSyscallRegs(bad, a); ok {
			t.Errorf("parseSyscallRegs(%q) accepted", bad)
		}
	}
}

func TestProcessMemorySkipLog(t *testing.T) {
	l := &procSkipLog{max: 3}
	l.add(0x1000, 0x2000, "a")
	l.add(0x2000, 0x3000, "a") // merges
	l.add(0x3000, 0x4000, "b")
	l.add(0x8000, 0x9000, "b")
	l.add(0xa000, 0xb000, "c") // past max: folded into the last
	l.add(0xc000, 0xd000, "c")
	want := []Range{
		{Start: 0x1000, End: 0x3000, Reason: "a"},
		{Start: 0x3000, End: 0x4000, Reason: "b"},
		{Start: 0x8000, End: 0xd000, Reason: "b (and further unreadable ranges up to End: the list is capped)"},
	}
	if diff := cmp.Diff(want, l.ranges); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
}

// holeySource is memory with unreadable pages, which exits at exitAt.
type holeySource struct {
	holes  map[uint64]bool // page addresses
	exitAt uint64
}

func (h holeySource) ReadAt(p []byte, addr uint64) (int, error) {
	for i := range p {
		a := addr + uint64(i)
		if a >= h.exitAt {
			if i == 0 {
				return 0, errProcExited
			}
			return i, errProcExited
		}
		if h.holes[a&^0xfff] {
			return i, syscall.EFAULT
		}
		p[i] = byte(a >> 8)
	}
	return len(p), nil
}

func TestProcessMemoryStreamer(t *testing.T) {
	var out bytes.Buffer
	skips := &procSkipLog{max: 100}
	s := &coreStreamer{
		src: holeySource{holes: map[uint64]bool{0x3000: true, 0x4000: true, 0x9000: true}, exitAt: 0xc800},
		w:   &out, buf: make([]byte, 0x1800), zeros: make([]byte, 0x700), pageSize: 0x1000,
		skips: skips, label: "pid 9 (x)",
	}
	for _, r := range [][2]uint64{{0x1000, 0x6000}, {0x8000, 0xa000}, {0xb000, 0xd000}, {0xe000, 0xf000}} {
		if err := s.stream(context.Background(), r[0], r[1]); err != nil {
			t.Fatal(err)
		}
	}
	want := []Range{
		{Start: 0x3000, End: 0x5000, Reason: "pid 9 (x): unreadable: bad address"},
		{Start: 0x9000, End: 0xa000, Reason: "pid 9 (x): unreadable: bad address"},
		{Start: 0xc800, End: 0xd000, Reason: "pid 9 (x): process exited during capture"},
		{Start: 0xe000, End: 0xf000, Reason: "pid 9 (x): process exited during capture"},
	}
	if diff := cmp.Diff(want, skips.ranges); diff != "" {
		t.Errorf("skipped (-want +got):\n%s", diff)
	}
	// Every byte has its place: data where readable, zeros elsewhere.
	var wantOut []byte
	for _, r := range [][2]uint64{{0x1000, 0x6000}, {0x8000, 0xa000}, {0xb000, 0xd000}, {0xe000, 0xf000}} {
		for a := r[0]; a < r[1]; a++ {
			v := byte(a >> 8)
			if a >= 0x3000 && a < 0x5000 || a >= 0x9000 && a < 0xa000 || a >= 0xc800 {
				v = 0
			}
			wantOut = append(wantOut, v)
		}
	}
	if !bytes.Equal(wantOut, out.Bytes()) {
		t.Errorf("streamed %d bytes that differ from the expected %d", out.Len(), len(wantOut))
	}
	if want := uint64(0x5000 + 0x2000 + 0x2000 + 0x1000 - 0x2000 - 0x1000 - 0x800 - 0x1000); s.read != want {
		t.Errorf("read %#x bytes, want %#x", s.read, want)
	}
}

// TestProcessMemoryCancel stops between reads, not after the capture.
func TestProcessMemoryStreamerCancel(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	s := &coreStreamer{src: holeySource{exitAt: ^uint64(0)}, w: io.Discard, buf: make([]byte, 4096), pageSize: 4096, skips: &procSkipLog{max: 1}}
	if err := s.stream(ctx, 0, 1<<30); !errors.Is(err, context.Canceled) {
		t.Errorf("stream after cancel: %v", err)
	}
}

// TestProcessMemoryFakeGolden runs the whole artifact on the fake host and
// diffs a description of its tar and core against a committed file.
func TestProcessMemoryFakeGolden(t *testing.T) {
	if runtime.GOARCH != "amd64" || os.Getpagesize() != 4096 {
		testenv.Skip(t, "the golden core is x86-64 with 4 KiB pages; this is %s with %d", runtime.GOARCH, os.Getpagesize())
	}
	k, err := Lookup("process_memory")
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	res, err := k.Collect(context.Background(), procMemFakeEnv(), Params{"pid": "100"}, &out)
	if err != nil {
		t.Fatal(err)
	}
	golden(t, filepath.Join("procmem", "fake.golden"), []byte(describeProcMemArchive(t, out.Bytes(), res)))
}

// describeProcMemArchive renders a process_memory tar as text: members,
// each core's segments and notes, and the Result.
func describeProcMemArchive(t *testing.T, archive []byte, res Result) string {
	t.Helper()
	var b strings.Builder
	fmt.Fprintf(&b, "sha256 %x\n", sha256.Sum256(archive))
	tr := tar.NewReader(bytes.NewReader(archive))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		data, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&b, "member %s size %d mode %o mtime %s\n", h.Name, h.Size, h.Mode, h.ModTime.UTC().Format("2006-01-02T15:04:05.999999999Z"))
		c, err := elfcore.Read(bytes.NewReader(data), int64(len(data)))
		if err != nil {
			t.Fatal(err)
		}
		a, err := elfcore.ArchOf(c.Machine)
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range c.Loads {
			fmt.Fprintf(&b, "  load %#x-%#x %v offset %#x align %d\n", l.Vaddr, l.Vaddr+l.Memsz, l.Flags, l.Offset, l.Align)
		}
		for _, n := range c.Notes {
			fmt.Fprintf(&b, "  note %s %#x (%d bytes)", n.Name, uint32(n.Type), len(n.Desc))
			switch {
			case n.Type == elf.NT_PRSTATUS:
				s, err := elfcore.DecodePRStatus(a, n.Desc)
				if err != nil {
					t.Fatal(err)
				}
				fmt.Fprintf(&b, " prstatus pid %d ppid %d pgrp %d sid %d signal %d sigpend %#x sighold %#x utime %v stime %v pc %#x sp %#x syscall %d arg0 %#x",
					s.PID, s.PPID, s.PGRP, s.SID, s.Signal, s.SigPend, s.SigHold, s.UTime, s.STime,
					elfcore.Reg(s.Regs, a.PC), elfcore.Reg(s.Regs, a.SP), elfcore.Reg(s.Regs, a.Syscall), elfcore.Reg(s.Regs, a.Args[0]))
			case n.Type == elf.NT_PRPSINFO:
				p, err := elfcore.DecodePRPSInfo(n.Desc)
				if err != nil {
					t.Fatal(err)
				}
				fmt.Fprintf(&b, " prpsinfo %+v", p)
			case n.Type == elfcore.NTFile:
				ps, maps, err := elfcore.DecodeFileNote(n.Desc)
				if err != nil {
					t.Fatal(err)
				}
				fmt.Fprintf(&b, " file page size %d", ps)
				for _, m := range maps {
					fmt.Fprintf(&b, "\n    %#x-%#x at %#x %q", m.Start, m.End, m.Offset, m.Name)
				}
			case n.Type == elfcore.NTAuxv:
				av, err := c.Auxv()
				if err != nil {
					t.Fatal(err)
				}
				fmt.Fprintf(&b, " auxv %#x", av)
			}
			b.WriteString("\n")
		}
		for _, probe := range []uint64{0x1000, 0x5010, 0x6100, 0x8000, 0xc000, 0xefff, 0xf000, 0x10000} {
			p := make([]byte, 16)
			_, err := c.ReadMemory(p, probe)
			fmt.Fprintf(&b, "  memory %#x: %q %v\n", probe, p, err)
		}
	}
	r, err := json.MarshalIndent(struct {
		Source   string
		Warnings []string
		Skipped  []Range
		Details  map[string]string
	}{res.Source, res.Warnings, res.Skipped, res.Details}, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	b.Write(r)
	b.WriteString("\n")
	return b.String()
}

func TestProcessMemoryCoreName(t *testing.T) {
	for comm, want := range map[string]string{
		"nginx":          "core.7.nginx",
		"kworker/0:1":    "core.7.kworker_0_1",
		"":               "core.7.unknown",
		"a b\nc\x00..":   "core.7.a_b_c_..",
		"évil":           "core.7.__vil",
		"..":             "core.7...",
		"python3.12-dev": "core.7.python3.12-dev",
	} {
		if got := coreName(7, comm); got != want {
			t.Errorf("coreName(%q) = %q, want %q", comm, got, want)
		}
		if strings.Contains(coreName(7, comm), "/") {
			t.Errorf("coreName(%q) holds a slash", comm)
		}
	}
}

func TestProcessMemoryRegistered(t *testing.T) {
	k, err := Lookup("process_memory")
	if err != nil {
		t.Fatal(err)
	}
	if k.Ext != "tar" || !slices.Contains(k.Params, "freeze") || !slices.Contains(k.Params, "max_total_bytes") {
		t.Errorf("registered as %+v", k)
	}
	if _, err := k.Collect(context.Background(), procMemFakeEnv(), Params{"pid": "1", "path": "/"}, io.Discard); !errors.Is(err, ErrBadParam) {
		t.Errorf("unknown parameter: %v, want ErrBadParam", err)
	}
	_, err = k.Collect(context.Background(), procMemFakeEnv(), Params{"process_name": "^nothing-matches$"}, io.Discard)
	if !errors.Is(err, ErrNoProcess) {
		t.Errorf("empty selection: %v, want ErrNoProcess", err)
	}
}

// TestIsProcMemContainerID holds the hand-written check to the regular
// expression it replaced.
func TestIsProcMemContainerID(t *testing.T) {
	re := regexp.MustCompile(`^[0-9A-Za-z][0-9A-Za-z_.-]{11,127}$`)
	cases := []string{"", "abc", "0123456789ab", "_123456789ab", "a123456789a_", "a12345678.-_", "a1234567890", "9f86d081884c7d65",
		"3f1b2c4d5e6f-1234567890", "a" + strings.Repeat("b", 127), "a" + strings.Repeat("b", 128), "abcdefghijk/", "abcdefghijkl\n", "ábcdefghijkl"}
	for _, s := range cases {
		if got, want := isProcMemContainerID(s), re.MatchString(s); got != want {
			t.Errorf("isProcMemContainerID(%q) = %v, the expression says %v", s, got, want)
		}
	}
}
