package artifact

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/custodyhq/custody/internal/lime"
)

// physical_memory writes RAM as a LiME v1 image (internal/lime) whose ranges
// are exactly the "System RAM" ranges of /proc/iomem, from one of two
// sources:
//
//   - kcore: /proc/kcore, read in large aligned pieces, a few at once. Needs
//     CAP_SYS_RAWIO and a kernel not locked down for confidentiality; no
//     module is loaded and nothing on the host changes.
//   - lime: the LiME kernel module, loaded with finit_module, writing to a
//     FIFO only the agent can open, and unloaded afterwards. Needs
//     CAP_SYS_MODULE, a lime.ko built for this exact kernel (see
//     FindLimeModule) and, where signatures are enforced, a signed one.
//
// auto (the default) tries kcore, then LiME if kcore could not start.
//
// Unreadable memory: a range stays in the image with its full length, so
// that every byte sits at its physical address for Volatility, and what
// could not be read is written as zeros and listed in Result.Skipped with
// the reason (a page kcore does not map or cannot read; a partial page LiME
// pads). Splitting ranges instead would make the image disagree with
// /proc/iomem and lose the fact that the address is RAM.
func init() {
	register(Kind{
		Name:   "physical_memory",
		Bulk:   true,
		Ext:    "lime",
		Doc:    "physical memory as a LiME v1 image (source=auto|kcore|lime, lime_dir=" + DefaultLimeDir + ")",
		Params: []string{"source", "lime_dir"},
		Collect: func(ctx context.Context, env Env, p Params, w io.Writer) (Result, error) {
			return newPhysmem().collect(ctx, env, p, w)
		},
	})
}

// moduleLoader loads and unloads kernel modules: the kernel itself, or a
// stand-in in tests.
type moduleLoader interface {
	// Load returns when the module's init function has returned; for
	// LiME, that is when the dump is over.
	Load(f *os.File, params string) error
	Unload(name string) error
}

type kernelModules struct{}

func (kernelModules) Load(f *os.File, params string) error {
	return unix.FinitModule(int(f.Fd()), params, 0)
}

func (kernelModules) Unload(name string) error {
	return unix.DeleteModule(name, unix.O_NONBLOCK)
}

type physmem struct {
	modules  moduleLoader
	readSize int // bytes per kcore read
	inFlight int // kcore reads outstanding
	pageSize int
	// unloadWait bounds the wait for LiME's init to return once the
	// agent has given up on its stream.
	unloadWait time.Duration
	// fifoDir is where LiME's output FIFO is made, in a fresh 0700
	// directory ("": os.TempDir()).
	fifoDir string
}

func newPhysmem() *physmem {
	return &physmem{modules: kernelModules{}, readSize: 1 << 20, inFlight: 4, pageSize: os.Getpagesize(), unloadWait: 2 * time.Minute}
}

// maxSkipped bounds Result.Skipped; adjacent pages with the same reason
// merge, so only memory that fails page after page, alternately, gets
// near it.
const maxSkipped = 1 << 16

var errTooManySkipped = errors.New("physical_memory: more than 65536 separate unreadable ranges; giving up")

func (pm *physmem) collect(ctx context.Context, env Env, p Params, w io.Writer) (Result, error) {
	res := Result{Details: map[string]string{}}
	source := p["source"]
	if source == "" {
		source = "auto"
	}
	if source != "auto" && source != "kcore" && source != "lime" {
		return res, fmt.Errorf("%w: source %q (want auto, kcore or lime)", ErrBadParam, source)
	}
	log := env.Logger.With("component", "physical_memory")
	ram, err := readIomem(env.ProcRoot)
	if err != nil {
		return res, fmt.Errorf("physical_memory: %w", err)
	}
	ranges := limeRanges(ram)
	var total uint64
	var list []string
	for _, r := range ranges {
		total += r.Len()
		list = append(list, r.String())
	}
	res.Details["ranges"] = strings.Join(list, ",")
	res.Details["range_count"] = strconv.Itoa(len(ranges))
	res.Details["ram_bytes"] = strconv.FormatUint(total, 10)
	res.Details["page_size"] = strconv.Itoa(pm.pageSize)

	cw := &imageCounter{w: w}
	lw := lime.NewWriter(cw)
	start := time.Now()
	switch source {
	case "kcore":
		err = pm.fromKcore(ctx, env, ranges, lw, &res)
	case "lime":
		err = pm.fromLime(ctx, env, p["lime_dir"], ram, lw, &res)
	default:
		err = pm.fromKcore(ctx, env, ranges, lw, &res)
		if err != nil && cw.n == 0 && ctx.Err() == nil {
			log.Info("kcore unavailable; trying the LiME module", "err", err)
			res.Details["kcore_error"] = err.Error()
			res.Skipped = nil
			for _, k := range []string{"kcore_segments", "read_size", "reads_in_flight"} {
				delete(res.Details, k)
			}
			if lerr := pm.fromLime(ctx, env, p["lime_dir"], ram, lw, &res); lerr != nil {
				err = fmt.Errorf("physical_memory: kcore: %w; lime: %w", err, lerr)
			} else {
				err = nil
			}
		}
	}
	if err == nil {
		err = lw.Close()
	}
	took := time.Since(start)
	res.Details["image_bytes"] = strconv.FormatInt(cw.n, 10)
	res.Details["seconds"] = strconv.FormatFloat(took.Seconds(), 'f', 3, 64)
	var skipped uint64
	for _, s := range res.Skipped {
		skipped += s.End - s.Start
	}
	res.Details["skipped_bytes"] = strconv.FormatUint(skipped, 10)
	log.Info("physical memory captured", "source", res.Details["source"], "bytes", cw.n, "skipped_bytes", skipped,
		"took", took.Round(time.Millisecond), "mib_per_s", fmt.Sprintf("%.1f", float64(cw.n)/(1<<20)/max(took.Seconds(), 1e-9)), "err", err)
	return res, err
}

func (pm *physmem) fromKcore(ctx context.Context, env Env, ranges []lime.Range, w *lime.Writer, res *Result) error {
	path := filepath.Join(env.ProcRoot, "kcore")
	f, err := os.Open(path)
	if err != nil {
		if errors.Is(err, os.ErrPermission) {
			if m := LockdownMode(env.SysRoot); m == "confidentiality" {
				return fmt.Errorf("%w: kernel lockdown (confidentiality) forbids it", err)
			}
			return fmt.Errorf("%w: reading it needs CAP_SYS_RAWIO", err)
		}
		return err
	}
	defer f.Close()
	segs, err := parseKcore(f)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	plan := planKcore(ranges, segs)
	var mapped uint64
	for _, ps := range plan {
		for _, p := range ps {
			if p.Offset >= 0 {
				mapped += p.Len
			}
		}
	}
	if mapped == 0 {
		return fmt.Errorf("%s: none of System RAM is mapped by its %d segments", path, len(segs))
	}
	res.Source = "kcore:" + path
	res.Details["source"] = "kcore"
	res.Details["kcore_segments"] = strconv.Itoa(len(segs))
	res.Details["read_size"] = strconv.Itoa(pm.readSize)
	res.Details["reads_in_flight"] = strconv.Itoa(pm.inFlight)
	kr := &kcoreReader{File: f, Name: path, ReadSize: pm.readSize, InFlight: pm.inFlight, PageSize: pm.pageSize}
	return kr.copy(ctx, w, ranges, plan, res.skip)
}

func (r *Result) skip(s Range) error {
	r.Skipped = mergeSkipped(r.Skipped, s)
	if len(r.Skipped) > maxSkipped {
		return errTooManySkipped
	}
	return nil
}

// fromLime loads LiME, reads its stream and unloads it. Every header must
// be the next top-level System RAM range of iomem (LiME walks only the top
// level of the resource tree), and the stream must hold them all: LiME's
// init returns success even when its writes fail, so its exit status
// proves nothing about the image.
func (pm *physmem) fromLime(ctx context.Context, env Env, dir string, ram []ramRange, w *lime.Writer, res *Result) error {
	release, err := kernelRelease(env.ProcRoot)
	if err != nil {
		return err
	}
	mod, err := FindLimeModule(dir, release)
	if err != nil {
		return err
	}
	res.Source = "lime:" + mod.Path
	res.Details["source"] = "lime"
	res.Details["module"] = mod.Path
	res.Details["module_sha256"] = mod.SHA256
	res.Details["module_vermagic"] = mod.Vermagic
	if loaded, err := moduleLoaded(env.ProcRoot, mod.Name); err == nil && loaded {
		return fmt.Errorf("a module named %q is already loaded (another capture, or one left behind): unload it with rmmod %s", mod.Name, mod.Name)
	}
	f, err := os.Open(mod.Path)
	if err != nil {
		return err
	}
	defer f.Close()
	// What is loaded is what was checked: the descriptor handed to the
	// kernel is hashed again.
	if again, err := readModinfo(f, mod.Path); err != nil || again.SHA256 != mod.SHA256 {
		return fmt.Errorf("%s changed while it was being checked", mod.Path)
	}

	var expect []lime.Range
	for _, r := range ram {
		if r.TopLevel {
			expect = append(expect, r.Range)
			continue
		}
		if err := res.skip(Range{Start: r.First, End: r.Last + 1, Reason: "nested System RAM, which the LiME module does not dump"}); err != nil {
			return err
		}
	}
	return pm.limeOnce(ctx, env, f, mod, expect, w, res)
}

// limeOnce loads LiME with its output on a FIFO in a fresh directory only
// the agent's user can enter, reads the image from it, and unloads the
// module. Not LiME's tcp: mode: a loopback port is open to every local
// process, LiME serves the first connection, and on a compromised host
// that could be the intruder's — who would be handed physical memory.
func (pm *physmem) limeOnce(ctx context.Context, env Env, f *os.File, mod LimeModule, expect []lime.Range, w *lime.Writer, res *Result) (err error) {
	dir, err := os.MkdirTemp(pm.fifoDir, "custody-lime-")
	if err != nil {
		return fmt.Errorf("LiME output FIFO: %w", err)
	}
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "lime.fifo")
	if !plainModuleParam(path) {
		return fmt.Errorf("LiME output FIFO %q: a module parameter cannot carry that path; set TMPDIR to a plain one", path)
	}
	if err := unix.Mkfifo(path, 0o600); err != nil {
		return fmt.Errorf("LiME output FIFO: %w", err)
	}
	// Opened non-blocking so that the open does not wait for LiME; reads
	// then wait in the poller once LiME has its end open, and return EOF
	// at once before it does.
	r, err := os.OpenFile(path, os.O_RDONLY|unix.O_NONBLOCK, 0)
	if err != nil {
		return fmt.Errorf("LiME output FIFO: %w", err)
	}
	if rc, err := r.SyscallConn(); err == nil {
		rc.Control(func(fd uintptr) { unix.FcntlInt(fd, unix.F_SETPIPE_SZ, 1<<20) }) // fewer, larger reads; best effort
	}
	params := fmt.Sprintf("path=%s format=lime timeout=0", path)
	res.Details["module_params"] = params

	loaded := make(chan error, 1)
	go func() { loaded <- pm.modules.Load(f, params) }()
	src := &limeFIFO{f: r, loaded: loaded}

	// Whatever happens, LiME's init must return and the module must go.
	defer func() {
		returned := src.finish(pm.unloadWait)
		r.Close()
		if !returned {
			returned = src.wait(pm.unloadWait)
		}
		if !returned {
			res.Details["module_load"] = "still loading after " + pm.unloadWait.String()
			err = errors.Join(err, fmt.Errorf("LiME's init has not returned after %s; unload it with rmmod %s once it does", pm.unloadWait, mod.Name))
			return
		}
		if src.loadErr != nil {
			res.Details["module_load"] = "failed: " + src.loadErr.Error()
			if err == nil || !src.opened {
				err = loadError(env, src.loadErr)
			}
			return
		}
		res.Details["module_load"] = "ok"
		if uerr := pm.modules.Unload(mod.Name); uerr != nil {
			res.Details["module_unload"] = "failed: " + uerr.Error()
			res.Warnings = append(res.Warnings, fmt.Sprintf("LiME module %q could not be unloaded: %v; unload it with rmmod %s", mod.Name, uerr, mod.Name))
		} else {
			res.Details["module_unload"] = "ok"
		}
	}()
	stop := context.AfterFunc(ctx, func() { r.SetReadDeadline(time.Now()) })
	defer stop()

	lr := lime.NewReader(bufio.NewReaderSize(src, 1<<20))
	buf := make([]byte, 1<<20)
	for i := 0; ; i++ {
		rg, err := lr.Next()
		if err == io.EOF {
			if i < len(expect) {
				if src.loadDone && src.loadErr != nil && !src.opened {
					return loadError(env, src.loadErr)
				}
				return fmt.Errorf("LiME stream ended after %d of %d ranges (%d bytes)", i, len(expect), lr.Offset())
			}
			break
		}
		if err != nil {
			return limeStreamError(ctx, i, lr, err)
		}
		if i >= len(expect) || rg != expect[i] {
			want := "nothing"
			if i < len(expect) {
				want = expect[i].String()
			}
			return fmt.Errorf("LiME sent range %d as %v, /proc/iomem has %s", i, rg, want)
		}
		if err := w.Begin(rg); err != nil {
			return err
		}
		if _, err := io.CopyBuffer(w, lr, buf); err != nil {
			return limeStreamError(ctx, i, lr, err)
		}
		for _, s := range limePadding(rg, uint64(pm.pageSize)) {
			if err := res.skip(s); err != nil {
				return err
			}
		}
	}
	return nil
}

// limeFIFO reads LiME's output FIFO. Until LiME's init opens its end, a
// read of the FIFO returns EOF at once: that is waited out, not taken for
// the end of the stream, unless the init has returned.
type limeFIFO struct {
	f        *os.File
	loaded   <-chan error
	loadErr  error
	loadDone bool
	opened   bool // data arrived: LiME has (had) its end open
}

func (l *limeFIFO) Read(p []byte) (int, error) {
	for {
		n, err := l.f.Read(p)
		if n > 0 {
			l.opened = true
			return n, nil
		}
		if err != io.EOF {
			return 0, err
		}
		if l.opened || l.loadDone {
			return 0, io.EOF
		}
		select {
		case l.loadErr = <-l.loaded:
			// Read once more: what LiME wrote before returning is still
			// in the FIFO.
			l.loadDone = true
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// finish makes sure LiME's init is not left waiting on the FIFO before its
// read end is closed: once LiME has its end open (or its init returned),
// closing the read end makes its remaining writes fail at once, and it
// returns; closing it before LiME opened its end would leave LiME's open
// blocked for good. So until one of those is known, it reads (and drops)
// until the first byte arrives, for at most max. It reports whether the
// init has returned.
func (l *limeFIFO) finish(max time.Duration) bool {
	if l.loadDone {
		return true
	}
	if !l.opened {
		l.f.SetReadDeadline(time.Now().Add(max))
		var b [4096]byte
		for !l.opened && !l.loadDone {
			if _, err := l.Read(b[:]); err != nil {
				break
			}
		}
	}
	return l.loadDone
}

// wait waits up to max for LiME's init to return.
func (l *limeFIFO) wait(max time.Duration) bool {
	if l.loadDone {
		return true
	}
	select {
	case l.loadErr = <-l.loaded:
		l.loadDone = true
	case <-time.After(max):
	}
	return l.loadDone
}

// plainModuleParam reports whether path can be a module parameter as is:
// the kernel splits parameters at spaces and treats quotes specially.
func plainModuleParam(path string) bool {
	for _, c := range path {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.ContainsRune("/._-+", c)) {
			return false
		}
	}
	return path != ""
}

func limeStreamError(ctx context.Context, i int, lr *lime.Reader, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return fmt.Errorf("LiME stream, range %d, offset %d: %w", i, lr.Offset(), err)
}

// loadError names the host setting behind a refused module.
func loadError(env Env, err error) error {
	if why := moduleRefusal(env.SysRoot, env.ProcRoot, err); why != "" {
		return fmt.Errorf("load lime.ko: %s: %w", why, err)
	}
	return fmt.Errorf("load lime.ko: %w", err)
}

// limePadding is what LiME writes as zeros rather than memory: it maps
// whole pages, so the tail of a range that ends mid-page is padding, and
// a range that starts mid-page is read from the start of its page, every
// byte of it displaced.
func limePadding(r lime.Range, page uint64) []Range {
	if r.First%page != 0 {
		return []Range{{Start: r.First, End: r.Last + 1, Reason: "range starts mid-page; the LiME module reads whole pages, so its bytes are displaced"}}
	}
	end := r.Last + 1
	if tail := end % page; tail != 0 && end-tail >= r.First {
		return []Range{{Start: end - tail, End: end, Reason: "partial page, written as zeros by the LiME module"}}
	}
	return nil
}

// moduleLoaded reports whether /proc/modules lists name.
func moduleLoaded(procRoot, name string) (bool, error) {
	f, err := os.Open(filepath.Join(procRoot, "modules"))
	if err != nil {
		return false, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if n, _, _ := strings.Cut(sc.Text(), " "); n == name {
			return true, nil
		}
	}
	return false, sc.Err()
}

type imageCounter struct {
	w io.Writer
	n int64
}

func (c *imageCounter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}
