package artifact

import (
	"archive/zip"
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
)

// kernel_symbols is what turns a physical memory image into something
// Volatility can read: the exact kernel banner (Volatility matches it
// against a symbol table), the kernel's BTF (types, from which a symbol
// table can be generated without debug packages), /proc/kallsyms
// (addresses, real ones only to root), the module list, os-release, and
// System.map and the kernel config from /boot when they are installed.
//
// Container: a ZIP archive, entries stored uncompressed (the upload
// compresses every chunk), written in streaming mode: each entry's size and
// CRC-32 follow its data in a data descriptor, and the central directory at
// the end lists them all. A tar was the other candidate, but a tar header
// needs the entry's size up front and /proc/kallsyms has no size until it
// has been read to the end; reading it twice can disagree (modules load),
// and holding it or staging it on disk breaks the agent's footprint rules.
// unzip, Python's zipfile, Go's archive/zip and Volatility's own tooling
// read the result.
func init() {
	register(Kind{
		Name:    "kernel_symbols",
		Ext:     "zip",
		Doc:     "kernel banner, BTF, kallsyms, modules, os-release, System.map: what a Volatility symbol table is built from (ZIP)",
		Collect: collectKernelSymbols,
	})
}

// maxSymbolFile bounds one entry: vmlinux BTF is ~5 MiB, kallsyms ~10 MiB
// with modules; anything near this is not what it claims to be.
const maxSymbolFile = 512 << 20

type symbolSource struct {
	name     string // entry name in the archive
	path     string
	required bool // a warning when missing
}

func collectKernelSymbols(ctx context.Context, env Env, _ Params, w io.Writer) (Result, error) {
	res := Result{Source: "procfs:" + env.ProcRoot, Details: map[string]string{}}
	warn := &warnings{log: env.Logger}
	release, err := kernelRelease(env.ProcRoot)
	if err != nil {
		return res, err
	}
	res.Details["release"] = release
	osRelease := filepath.Join(env.HostRoot, "etc/os-release")
	if _, err := os.Stat(osRelease); err != nil {
		osRelease = filepath.Join(env.HostRoot, "usr/lib/os-release")
	}
	sources := []symbolSource{
		{"banner", filepath.Join(env.ProcRoot, "version"), true},
		{"osrelease", filepath.Join(env.ProcRoot, "sys/kernel/osrelease"), true},
		{"btf/vmlinux", filepath.Join(env.SysRoot, "kernel/btf/vmlinux"), true},
		{"kallsyms", filepath.Join(env.ProcRoot, "kallsyms"), true},
		{"modules", filepath.Join(env.ProcRoot, "modules"), false},
		{"vmcoreinfo", filepath.Join(env.SysRoot, "kernel/vmcoreinfo"), false},
		{"os-release", osRelease, true},
		{"boot/System.map-" + release, filepath.Join(env.HostRoot, "boot", "System.map-"+release), false},
		{"boot/config-" + release, filepath.Join(env.HostRoot, "boot", "config-"+release), false},
	}
	zw := zip.NewWriter(w)
	mtime := env.Now().UTC()
	var entries []string
	for _, s := range sources {
		if err := ctx.Err(); err != nil {
			return res, err
		}
		n, err := addSymbolFile(ctx, zw, s, mtime)
		switch {
		case err == nil:
			entries = append(entries, s.name)
			res.Details[s.name+"_bytes"] = strconv.FormatInt(n, 10)
		case errors.Is(err, errArchive):
			return res, err
		case s.required:
			warn.add("%s: %v", s.name, err)
		}
	}
	if err := zw.Close(); err != nil {
		return res, fmt.Errorf("kernel_symbols: %w", err)
	}
	res.Details["entries"] = strings.Join(entries, ",")
	if b, err := readSmall(filepath.Join(env.ProcRoot, "version")); err == nil {
		res.Details["banner"] = strings.TrimSpace(string(b))
	}
	res.Details["kallsyms_addresses"] = kallsymsVisibility(filepath.Join(env.ProcRoot, "kallsyms"))
	if res.Details["kallsyms_addresses"] == "hidden" {
		warn.add("kallsyms: addresses are hidden (not root, or kernel.kptr_restrict=2)")
	}
	res.Warnings = warn.result()
	res.Records = len(entries)
	return res, nil
}

// errArchive marks a failure to write the archive itself, as opposed to
// one source file being unreadable.
var errArchive = errors.New("kernel_symbols: write")

func addSymbolFile(ctx context.Context, zw *zip.Writer, s symbolSource, mtime time.Time) (int64, error) {
	f, err := os.Open(s.path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	// A file that cannot be read at all is left out rather than stored
	// empty: probe with the first read before the entry exists.
	br := bufio.NewReaderSize(f, 1<<20)
	if _, err := br.Peek(1); err != nil && err != io.EOF {
		return 0, err
	}
	ew, err := zw.CreateHeader(&zip.FileHeader{Name: s.name, Method: zip.Store, Modified: mtime})
	if err != nil {
		return 0, fmt.Errorf("%w: %w", errArchive, err)
	}
	n, err := copyCtx(ctx, ew, io.LimitReader(br, maxSymbolFile+1))
	if err != nil {
		// Half an entry is already in the archive: the archive is broken.
		return n, fmt.Errorf("%w: %s: %w", errArchive, s.path, err)
	}
	if n > maxSymbolFile {
		return n, fmt.Errorf("%w: %s: larger than %d bytes", errArchive, s.path, maxSymbolFile)
	}
	return n, nil
}

func copyCtx(ctx context.Context, w io.Writer, r io.Reader) (int64, error) {
	buf := make([]byte, 256<<10)
	var n int64
	for {
		if err := ctx.Err(); err != nil {
			return n, err
		}
		k, rerr := r.Read(buf)
		if k > 0 {
			if _, err := w.Write(buf[:k]); err != nil {
				return n, err
			}
			n += int64(k)
		}
		if rerr == io.EOF {
			return n, nil
		}
		if rerr != nil {
			return n, rerr
		}
	}
}

// kallsymsVisibility says whether /proc/kallsyms shows real addresses:
// "visible", "hidden" (all zero) or "unreadable".
func kallsymsVisibility(path string) string {
	f, err := os.Open(path)
	if err != nil {
		return "unreadable"
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for i := 0; i < 64 && sc.Scan(); i++ {
		addr, _, _ := strings.Cut(sc.Text(), " ")
		if strings.Trim(addr, "0") != "" {
			return "visible"
		}
	}
	if sc.Err() != nil {
		return "unreadable"
	}
	return "hidden"
}
