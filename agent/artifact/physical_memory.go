package artifact

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
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
//   - lime: the LiME kernel module, loaded with finit_module, streaming to
//     the agent over loopback TCP, and unloaded afterwards. Needs
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
	for attempt := 0; ; attempt++ {
		err = pm.limeOnce(ctx, env, f, mod, expect, w, res)
		// A port taken between choosing it and LiME binding it is the
		// only failure worth a second try.
		if !errors.Is(err, unix.EADDRINUSE) || attempt == 2 {
			return err
		}
	}
}

func (pm *physmem) limeOnce(ctx context.Context, env Env, f *os.File, mod LimeModule, expect []lime.Range, w *lime.Writer, res *Result) (err error) {
	port, err := freeLoopbackPort()
	if err != nil {
		return err
	}
	params := fmt.Sprintf("path=tcp:%d format=lime localhostonly=1 timeout=0", port)
	res.Details["module_params"] = params
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))

	loaded := make(chan error, 1)
	go func() { loaded <- pm.modules.Load(f, params) }()

	var (
		loadErr  error
		loadDone bool
		conn     net.Conn
	)
	// Whatever happens, LiME's init must return and the module must go.
	defer func() {
		if conn != nil {
			conn.Close()
		}
		if !loadDone {
			var returned bool
			returned, loadErr = pm.awaitLoad(addr, loaded, conn == nil)
			if !returned {
				res.Details["module_load"] = "still loading after " + pm.unloadWait.String()
				err = errors.Join(err, fmt.Errorf("LiME's init has not returned after %s; unload it with rmmod %s once it does", pm.unloadWait, mod.Name))
				return
			}
		}
		if loadErr != nil {
			res.Details["module_load"] = "failed: " + loadErr.Error()
			if err == nil {
				err = loadError(env, loadErr)
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

	// LiME listens only once its init has started; dial until it answers
	// or its init gives up.
	d := net.Dialer{Timeout: time.Second}
	for conn == nil {
		c, derr := d.DialContext(ctx, "tcp", addr)
		if derr == nil {
			conn = c
			break
		}
		select {
		case loadErr = <-loaded:
			loadDone = true
			if loadErr != nil {
				return loadError(env, loadErr)
			}
			return errors.New("LiME finished without accepting the agent's connection")
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()

	lr := lime.NewReader(bufio.NewReaderSize(conn, 1<<20))
	buf := make([]byte, 1<<20)
	for i := 0; ; i++ {
		rg, err := lr.Next()
		if err == io.EOF {
			if i < len(expect) {
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
	// The stream is complete; now the init's verdict.
	select {
	case loadErr = <-loaded:
		loadDone = true
	case <-ctx.Done():
		return ctx.Err()
	}
	return nil
}

func limeStreamError(ctx context.Context, i int, lr *lime.Reader, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if lr.Offset() == 0 {
		// LiME accepts one connection. If another local process took it,
		// the agent's connection waits in the backlog until LiME closes
		// its socket, and nothing ever arrives.
		return fmt.Errorf("LiME stream: nothing arrived (%w); if LiME's init succeeded, another local process connected to its port first", err)
	}
	return fmt.Errorf("LiME stream, range %d, offset %d: %w", i, lr.Offset(), err)
}

// awaitLoad waits for LiME's init to return. If it may still be waiting
// for a connection (the agent never connected), it is given one, closed at
// once, so that it stops waiting: its writes then fail and it returns.
func (pm *physmem) awaitLoad(addr string, loaded <-chan error, unblock bool) (returned bool, loadErr error) {
	deadline := time.After(pm.unloadWait)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case err := <-loaded:
			return true, err
		case <-deadline:
			return false, nil
		case <-tick.C:
			if unblock {
				if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
					c.Close()
				}
			}
		}
	}
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

func freeLoopbackPort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("pick a loopback port for LiME: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
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
