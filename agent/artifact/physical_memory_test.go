package artifact

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"

	"github.com/custodyhq/custody/internal/lime"
)

func TestParseIomem(t *testing.T) {
	top := func(a, b uint64) ramRange { return ramRange{Range: lime.Range{First: a, Last: b}, TopLevel: true} }
	nested := func(a, b uint64) ramRange { return ramRange{Range: lime.Range{First: a, Last: b}} }
	tests := []struct {
		file string
		want []ramRange
		err  error
	}{
		{"iomem-qemu", []ramRange{top(0x1000, 0x9fbff), top(0x100000, 0xffdffff), top(0x100000000, 0x13fffffff)}, nil},
		{"iomem-nested", []ramRange{
			top(0x1000, 0x9ffff), nested(0x100000, 0xfffffff), nested(0x20000000, 0x3fffffff), top(0x40000000, 0x7fffffff),
		}, nil},
		{"iomem-hidden", nil, ErrIomemHidden},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			f, err := os.Open(filepath.Join("testdata/physmem", tt.file))
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			got, err := parseIomem(f)
			if !errors.Is(err, tt.err) {
				t.Fatalf("parseIomem error = %v, want %v", err, tt.err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("ranges (-want +got):\n%s", diff)
			}
		})
	}
}

func TestParseIomemRejects(t *testing.T) {
	for name, in := range map[string]string{
		"empty":    "",
		"no ram":   "00000000-00000fff : Reserved\n",
		"overlap":  "00001000-00002fff : System RAM\n00002000-00003fff : System RAM\n",
		"inverted": "00002000-00001000 : System RAM\n",
		"garbage":  "System RAM\n",
		"bad hex":  "0000x000-00001000 : System RAM\n",
	} {
		if _, err := parseIomem(strings.NewReader(in)); err == nil {
			t.Errorf("%s: parseIomem accepted %q", name, in)
		}
	}
}

// machine is a fake host: a proc root with iomem, kcore, osrelease and
// modules, a sys root, and a lime.ko for its release.
type machine struct {
	env     Env
	limeDir string
	ranges  []lime.Range // all System RAM
	top     []lime.Range // top-level System RAM (what LiME dumps)
}

const testRelease = "6.1.0-test-amd64"

const testIomem = `00000000-00000fff : Reserved
00001000-0009fbff : System RAM
0009fc00-0009ffff : Reserved
00100000-003fffff : System RAM
  00200000-002fffff : Kernel code
00400000-004fffff : Reserved
00500000-005fffff : reserved
  00500000-0057ffff : System RAM
`

// kcoreHoles are what the fake kcore does not map: the partial page at the
// end of the first range, and a gap in the direct map that nothing covers.
// (0x250000-0x260000 is missing from the direct map too, but the kernel
// text segment covers it.)
var kcoreHoles = []Range{{Start: 0x9f000, End: 0x9fc00}, {Start: 0x380000, End: 0x390000}}

func newMachine(t *testing.T) *machine {
	t.Helper()
	dir := t.TempDir()
	proc, sys := filepath.Join(dir, "proc"), filepath.Join(dir, "sys")
	for _, d := range []string{proc + "/sys/kernel", sys + "/module/module/parameters", sys + "/kernel/security"} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	write := func(path, s string) {
		if err := os.WriteFile(path, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(proc+"/iomem", testIomem)
	write(proc+"/sys/kernel/osrelease", testRelease+"\n")
	write(proc+"/modules", "e1000 159744 0 - Live 0x0000000000000000\n")
	write(sys+"/module/module/parameters/sig_enforce", "N\n")
	write(sys+"/kernel/security/lockdown", "[none] integrity confidentiality\n")
	writeKcore(t, proc+"/kcore", []kcoreSeg{
		{directMap + 0x1000, 0x1000, 0x9e000},
		{directMap + 0x100000, 0x100000, 0x150000},
		{directMap + 0x260000, 0x260000, 0x120000},
		{directMap + 0x390000, 0x390000, 0x70000},
		{directMap + 0x500000, 0x500000, 0x80000},
		{0xffffffff81000000, 0x200000, 0x100000},  // kernel text
		{0xffffc90000000000, noPhysAddr, 0x10000}, // vmalloc
	})
	limeDir := filepath.Join(dir, "lime")
	writeModule(t, filepath.Join(limeDir, testRelease, "lime.ko"), testRelease+" SMP preempt mod_unload modversions", false)
	return &machine{
		env:     Env{ProcRoot: proc, SysRoot: sys, HostRoot: dir}.withDefaults(),
		limeDir: limeDir,
		ranges:  []lime.Range{{First: 0x1000, Last: 0x9fbff}, {First: 0x100000, Last: 0x3fffff}, {First: 0x500000, Last: 0x57ffff}},
		top:     []lime.Range{{First: 0x1000, Last: 0x9fbff}, {First: 0x100000, Last: 0x3fffff}},
	}
}

func testPhysmem(loader moduleLoader) *physmem {
	return &physmem{modules: loader, readSize: 64 << 10, inFlight: 3, pageSize: 4096, unloadWait: 10 * time.Second}
}

func TestPhysicalMemoryFromKcore(t *testing.T) {
	m := newMachine(t)
	kind, err := Lookup("physical_memory")
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	res, err := kind.Collect(context.Background(), m.env, Params{"source": "kcore"}, &out)
	if err != nil {
		t.Fatal(err)
	}
	got, err := lime.Validate(bytes.NewReader(out.Bytes()))
	if err != nil {
		t.Fatalf("image breaks the LiME rules: %v", err)
	}
	if diff := cmp.Diff(m.ranges, got); diff != "" {
		t.Errorf("ranges (-want +got):\n%s", diff)
	}
	if !bytes.Equal(out.Bytes(), wantImage(m.ranges, kcoreHoles)) {
		t.Error("image bytes differ from the machine's memory")
	}
	kcore := m.env.ProcRoot + "/kcore"
	wantSkipped := []Range{
		{Start: 0x9f000, End: 0x9fc00, Reason: "not mapped by " + kcore},
		{Start: 0x380000, End: 0x390000, Reason: "not mapped by " + kcore},
	}
	if diff := cmp.Diff(wantSkipped, res.Skipped); diff != "" {
		t.Errorf("skipped (-want +got):\n%s", diff)
	}
	for k, want := range map[string]string{
		"source": "kcore", "ranges": "0x1000-0x9fbff,0x100000-0x3fffff,0x500000-0x57ffff", "range_count": "3",
		"image_bytes": fmt.Sprint(out.Len()), "skipped_bytes": fmt.Sprint(0xc00 + 0x10000),
	} {
		if res.Details[k] != want {
			t.Errorf("Details[%q] = %q, want %q", k, res.Details[k], want)
		}
	}
	if res.Source != "kcore:"+kcore {
		t.Errorf("Source = %q", res.Source)
	}
}

// faultyAt fails every read that touches [bad, bad+n) of the file.
type faultyAt struct {
	r      io.ReaderAt
	bad, n int64
	mu     sync.Mutex
	reads  int
}

func (f *faultyAt) ReadAt(p []byte, off int64) (int, error) {
	f.mu.Lock()
	f.reads++
	f.mu.Unlock()
	if off < f.bad+f.n && off+int64(len(p)) > f.bad {
		n := max(0, f.bad-off)
		k, _ := f.r.ReadAt(p[:n], off)
		return k, &os.PathError{Op: "read", Path: "/proc/kcore", Err: syscall.EIO}
	}
	return f.r.ReadAt(p, off)
}

func TestKcoreUnreadablePages(t *testing.T) {
	m := newMachine(t)
	f, err := os.Open(m.env.ProcRoot + "/kcore")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	segs, err := parseKcore(f)
	if err != nil {
		t.Fatal(err)
	}
	plan := planKcore(m.ranges, segs)
	// Two pages at 0x121000 fail, the middle of a 64 KiB read.
	var off int64 = -1
	for _, p := range plan[1] {
		if p.Offset >= 0 && p.Phys <= 0x121000 && 0x121000 < p.Phys+p.Len {
			off = p.Offset + int64(0x121000-p.Phys)
		}
	}
	bad := &faultyAt{r: f, bad: off, n: 0x2000}
	var out bytes.Buffer
	w := lime.NewWriter(&out)
	var res Result
	kr := &kcoreReader{File: bad, Name: "/proc/kcore", ReadSize: 64 << 10, InFlight: 3, PageSize: 4096}
	if err := kr.copy(context.Background(), w, m.ranges, plan, res.skip); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	holes := append([]Range{{Start: 0x121000, End: 0x123000}}, kcoreHoles...)
	if !bytes.Equal(out.Bytes(), wantImage(m.ranges, holes)) {
		t.Error("image bytes differ: unreadable pages must be zeros, every other page memory")
	}
	want := []Range{
		{Start: 0x9f000, End: 0x9fc00, Reason: "not mapped by /proc/kcore"},
		{Start: 0x121000, End: 0x123000, Reason: "read /proc/kcore: input/output error"},
		{Start: 0x380000, End: 0x390000, Reason: "not mapped by /proc/kcore"},
	}
	if diff := cmp.Diff(want, res.Skipped); diff != "" {
		t.Errorf("skipped (-want +got):\n%s", diff)
	}
}

func TestKcoreCancel(t *testing.T) {
	m := newMachine(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := testPhysmem(nil).collect(ctx, m.env, Params{"source": "kcore"}, io.Discard)
	if !errors.Is(err, context.Canceled) {
		t.Errorf("collect with a cancelled context = %v, want context.Canceled", err)
	}
}

// fakeLime stands in for the kernel: Load behaves like LiME's init with
// path=FILE — open FILE for writing (for the agent's FIFO, that waits for
// a reader), write the stream, close it, and return 0 whatever happened to
// the writes.
type fakeLime struct {
	t       *testing.T
	stream  func(w io.Writer) error
	loadErr error         // returned at once, as the kernel refuses a module
	delay   time.Duration // before opening the output
	mu      sync.Mutex
	params  []string
	unloads []string
}

var pathParam = regexp.MustCompile(`^path=(/\S+/custody-lime-\d+/lime\.fifo) format=lime timeout=0$`)

func (f *fakeLime) Load(file *os.File, params string) error {
	f.mu.Lock()
	f.params = append(f.params, params)
	f.mu.Unlock()
	if f.loadErr != nil {
		return f.loadErr
	}
	m := pathParam.FindStringSubmatch(params)
	if m == nil {
		f.t.Errorf("LiME parameters %q", params)
		return unix.EINVAL
	}
	if fi, err := os.Stat(m[1]); err != nil || fi.Mode()&os.ModeNamedPipe == 0 || fi.Mode().Perm() != 0o600 {
		f.t.Errorf("LiME output %s: %v, %v; want a FIFO only the agent can open", m[1], fi.Mode(), err)
	}
	if fi, err := os.Stat(filepath.Dir(m[1])); err != nil || fi.Mode().Perm() != 0o700 {
		f.t.Errorf("LiME output directory: %v, %v; want 0700", fi.Mode(), err)
	}
	time.Sleep(f.delay)
	out, err := os.OpenFile(m[1], os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer out.Close()
	f.stream(out) // LiME ignores its write errors
	return nil
}

func (f *fakeLime) Unload(name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.unloads = append(f.unloads, name)
	return nil
}

func (f *fakeLime) unloaded() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.unloads
}

// limeStream writes what LiME writes for ranges: memory, with the tail of
// a partial page as zeros.
func limeStream(ranges []lime.Range) func(io.Writer) error {
	return func(w io.Writer) error {
		_, err := w.Write(wantImage(ranges, []Range{{Start: 0x9f000, End: 0x9fc00}}))
		return err
	}
}

func TestPhysicalMemoryFromLime(t *testing.T) {
	m := newMachine(t)
	fake := &fakeLime{t: t, stream: limeStream(m.top)}
	var out bytes.Buffer
	pm := testPhysmem(fake)
	pm.fifoDir = t.TempDir()
	res, err := pm.collect(context.Background(), m.env, Params{"source": "lime", "lime_dir": m.limeDir}, &out)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(out.Bytes(), wantImage(m.top, []Range{{Start: 0x9f000, End: 0x9fc00}})) {
		t.Error("image differs from LiME's stream")
	}
	if left, _ := os.ReadDir(pm.fifoDir); len(left) != 0 {
		t.Errorf("LiME's FIFO directory left behind: %v", left)
	}
	if !strings.HasPrefix(res.Details["module_params"], "path="+pm.fifoDir+"/custody-lime-") {
		t.Errorf("module_params = %q, want LiME writing to a FIFO under %s", res.Details["module_params"], pm.fifoDir)
	}
	want := []Range{
		{Start: 0x500000, End: 0x580000, Reason: "nested System RAM, which the LiME module does not dump"},
		{Start: 0x9f000, End: 0x9fc00, Reason: "partial page, written as zeros by the LiME module"},
	}
	if diff := cmp.Diff(want, res.Skipped); diff != "" {
		t.Errorf("skipped (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"lime"}, fake.unloaded()); diff != "" {
		t.Errorf("unloads (-want +got):\n%s", diff)
	}
	for k, want := range map[string]string{"source": "lime", "module_load": "ok", "module_unload": "ok",
		"module": filepath.Join(m.limeDir, testRelease, "lime.ko")} {
		if res.Details[k] != want {
			t.Errorf("Details[%q] = %q, want %q", k, res.Details[k], want)
		}
	}
}

func TestPhysicalMemoryLimeFailures(t *testing.T) {
	tests := []struct {
		name       string
		fake       func(m *machine) *fakeLime
		setup      func(t *testing.T, m *machine)
		wantErr    string
		wantUnload bool
	}{
		{
			name:       "stream cut short, init reports success",
			fake:       func(m *machine) *fakeLime { return &fakeLime{stream: cut(limeStream(m.top), 100000)} },
			wantErr:    "ends",
			wantUnload: true,
		},
		{
			name:       "a range is missing",
			fake:       func(m *machine) *fakeLime { return &fakeLime{stream: limeStream(m.top[:1])} },
			wantErr:    "ended after 1 of 2 ranges",
			wantUnload: true,
		},
		{
			name: "a range iomem does not list",
			fake: func(m *machine) *fakeLime {
				return &fakeLime{stream: limeStream([]lime.Range{m.top[0], {First: 0x100000, Last: 0x1fffff}})}
			},
			wantErr:    "/proc/iomem has 0x100000-0x3fffff",
			wantUnload: true,
		},
		{
			name: "bad magic",
			fake: func(m *machine) *fakeLime {
				return &fakeLime{stream: func(w io.Writer) error { _, err := w.Write(make([]byte, 64)); return err }}
			},
			wantErr:    "bad magic",
			wantUnload: true,
		},
		{
			name: "signature enforcement",
			fake: func(m *machine) *fakeLime { return &fakeLime{loadErr: unix.EKEYREJECTED} },
			setup: func(t *testing.T, m *machine) {
				os.WriteFile(m.env.SysRoot+"/module/module/parameters/sig_enforce", []byte("Y\n"), 0o644)
			},
			wantErr: "module signature enforcement",
		},
		{
			name: "lockdown",
			fake: func(m *machine) *fakeLime { return &fakeLime{loadErr: unix.EPERM} },
			setup: func(t *testing.T, m *machine) {
				os.WriteFile(m.env.SysRoot+"/kernel/security/lockdown", []byte("none [integrity] confidentiality\n"), 0o644)
			},
			wantErr: "kernel lockdown (integrity) forbids unsigned modules",
		},
		{
			name: "already loaded",
			fake: func(m *machine) *fakeLime { return &fakeLime{} },
			setup: func(t *testing.T, m *machine) {
				os.WriteFile(m.env.ProcRoot+"/modules", []byte("lime 16384 0 - Live 0x0\n"), 0o644)
			},
			wantErr: "already loaded",
		},
		{
			name: "module for another kernel",
			fake: func(m *machine) *fakeLime { return &fakeLime{} },
			setup: func(t *testing.T, m *machine) {
				writeModule(t, filepath.Join(m.limeDir, testRelease, "lime.ko"), "5.10.0-old SMP", false)
			},
			wantErr: `built for kernel "5.10.0-old"`,
		},
		{
			name: "no module",
			fake: func(m *machine) *fakeLime { return &fakeLime{} },
			setup: func(t *testing.T, m *machine) {
				os.RemoveAll(m.limeDir)
			},
			wantErr: "no LiME module for this kernel",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := newMachine(t)
			if tt.setup != nil {
				tt.setup(t, m)
			}
			fake := tt.fake(m)
			fake.t = t
			_, err := testPhysmem(fake).collect(context.Background(), m.env, Params{"source": "lime", "lime_dir": m.limeDir}, io.Discard)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("collect = %v, want an error containing %q", err, tt.wantErr)
			}
			var want []string
			if tt.wantUnload {
				want = []string{"lime"}
			}
			if diff := cmp.Diff(want, fake.unloaded()); diff != "" {
				t.Errorf("unloads (-want +got):\n%s", diff)
			}
		})
	}
}

func cut(stream func(io.Writer) error, n int64) func(io.Writer) error {
	return func(w io.Writer) error {
		var b bytes.Buffer
		stream(&b)
		_, err := w.Write(b.Bytes()[:n])
		return err
	}
}

// A cancelled capture still waits for LiME's init and unloads the module:
// before LiME opens its output (the agent keeps the FIFO open until it
// does, or LiME would wait for a reader for good) and mid-stream.
func TestPhysicalMemoryLimeCancel(t *testing.T) {
	for _, tt := range []struct {
		name  string
		delay time.Duration
	}{{"before LiME opens its output", 300 * time.Millisecond}, {"mid-stream", 0}} {
		t.Run(tt.name, func(t *testing.T) {
			m := newMachine(t)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			slow := func(w io.Writer) error {
				w.Write(lime.AppendHeader(nil, m.top[0]))
				for {
					if _, err := w.Write(make([]byte, 4096)); err != nil {
						return err
					}
					time.Sleep(time.Millisecond)
				}
			}
			fake := &fakeLime{t: t, stream: slow, delay: tt.delay}
			time.AfterFunc(100*time.Millisecond, cancel)
			_, err := testPhysmem(fake).collect(ctx, m.env, Params{"source": "lime", "lime_dir": m.limeDir}, io.Discard)
			if !errors.Is(err, context.Canceled) {
				t.Errorf("collect = %v, want context.Canceled", err)
			}
			if diff := cmp.Diff([]string{"lime"}, fake.unloaded()); diff != "" {
				t.Errorf("unloads (-want +got):\n%s", diff)
			}
		})
	}
}

func TestPhysicalMemoryAutoFallsBackToLime(t *testing.T) {
	m := newMachine(t)
	os.Remove(m.env.ProcRoot + "/kcore")
	fake := &fakeLime{t: t, stream: limeStream(m.top)}
	var out bytes.Buffer
	res, err := testPhysmem(fake).collect(context.Background(), m.env, Params{"lime_dir": m.limeDir}, &out)
	if err != nil {
		t.Fatal(err)
	}
	if res.Details["source"] != "lime" || !strings.Contains(res.Details["kcore_error"], "kcore") {
		t.Errorf("Details = %v, want source lime and the kcore error", res.Details)
	}
	if _, err := lime.Validate(&out); err != nil {
		t.Error(err)
	}
}

func TestPhysicalMemoryAutoPrefersKcore(t *testing.T) {
	m := newMachine(t)
	fake := &fakeLime{t: t}
	res, err := testPhysmem(fake).collect(context.Background(), m.env, Params{"lime_dir": m.limeDir}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if res.Details["source"] != "kcore" || len(fake.params) != 0 {
		t.Errorf("source %q, LiME loads %v: auto must not load a module when kcore works", res.Details["source"], fake.params)
	}
}

func TestPhysicalMemoryBadSource(t *testing.T) {
	kind, _ := Lookup("physical_memory")
	_, err := kind.Collect(context.Background(), Env{}, Params{"source": "dev-mem"}, io.Discard)
	if !errors.Is(err, ErrBadParam) {
		t.Errorf("source=dev-mem: %v, want ErrBadParam", err)
	}
}

func TestLimePadding(t *testing.T) {
	tests := []struct {
		r    lime.Range
		want []Range
	}{
		{lime.Range{First: 0x1000, Last: 0x1fff}, nil},
		{lime.Range{First: 0x1000, Last: 0x9fbff}, []Range{{Start: 0x9f000, End: 0x9fc00, Reason: "partial page, written as zeros by the LiME module"}}},
		{lime.Range{First: 0x1000, Last: 0x10ff}, []Range{{Start: 0x1000, End: 0x1100, Reason: "partial page, written as zeros by the LiME module"}}},
		{lime.Range{First: 0x1800, Last: 0x2fff}, []Range{{Start: 0x1800, End: 0x3000, Reason: "range starts mid-page; the LiME module reads whole pages, so its bytes are displaced"}}},
	}
	for _, tt := range tests {
		if diff := cmp.Diff(tt.want, limePadding(tt.r, 4096)); diff != "" {
			t.Errorf("limePadding(%v) (-want +got):\n%s", tt.r, diff)
		}
	}
}

func TestFindLimeModule(t *testing.T) {
	dir := t.TempDir()
	if _, err := FindLimeModule(dir, testRelease); !errors.Is(err, ErrNoLimeModule) {
		t.Errorf("empty dir: %v", err)
	}
	// A lime.ko directly in the directory is accepted if it is for this
	// kernel.
	writeModule(t, filepath.Join(dir, "lime.ko"), testRelease+" SMP", true)
	m, err := FindLimeModule(dir, testRelease)
	if err != nil {
		t.Fatal(err)
	}
	if m.Path != filepath.Join(dir, "lime.ko") || !m.Signed || m.Name != "lime" || m.Vermagic != testRelease+" SMP" {
		t.Errorf("FindLimeModule = %+v", m)
	}
	// The per-release directory wins.
	writeModule(t, filepath.Join(dir, testRelease, "lime.ko"), testRelease+" SMP", false)
	if m, _ := FindLimeModule(dir, testRelease); m.Path != filepath.Join(dir, testRelease, "lime.ko") || m.Signed {
		t.Errorf("FindLimeModule = %+v, want the per-release unsigned module", m)
	}
	// Writable by others: refused.
	os.Chmod(filepath.Join(dir, testRelease, "lime.ko"), 0o666)
	os.Chmod(filepath.Join(dir, "lime.ko"), 0o666)
	if _, err := FindLimeModule(dir, testRelease); err == nil || !strings.Contains(err.Error(), "writable by root only") {
		t.Errorf("world-writable module: %v", err)
	}
	if _, err := FindLimeModule("relative/dir", testRelease); !errors.Is(err, ErrBadParam) {
		t.Errorf("relative lime_dir: %v", err)
	}
}
