package artifact

import (
	"bytes"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// DefaultLimeDir holds one LiME module per kernel release, as
// <dir>/<release>/lime.ko. Modules are built ahead of time for the kernels a
// fleet runs (packaging/ builds them); the agent never builds one on a
// host it is investigating.
const DefaultLimeDir = "/usr/lib/custody/lime"

// ErrNoLimeModule is returned when no LiME module for the running kernel
// is installed.
var ErrNoLimeModule = errors.New("no LiME module for this kernel")

// LimeModule describes a lime.ko that matches the running kernel.
type LimeModule struct {
	Path     string
	Name     string // module name for delete_module, from .modinfo
	Vermagic string
	SHA256   string
	Signed   bool // carries an appended module signature
}

// FindLimeModule looks for the LiME module for release: dir/<release>/lime.ko,
// then dir/lime.ko. A candidate is accepted only if its vermagic names
// release (the kernel would refuse it anyway, with a less useful error) and
// only root can have written it and its directory: the agent is about to
// hand it to the kernel.
func FindLimeModule(dir, release string) (LimeModule, error) {
	if dir == "" {
		dir = DefaultLimeDir
	}
	if !filepath.IsAbs(dir) {
		return LimeModule{}, fmt.Errorf("%w: lime_dir %q is not absolute", ErrBadParam, dir)
	}
	var tried []string
	for _, p := range []string{filepath.Join(dir, release, "lime.ko"), filepath.Join(dir, "lime.ko")} {
		m, err := inspectModule(p, release)
		if err == nil {
			return m, nil
		}
		if errors.Is(err, os.ErrNotExist) {
			tried = append(tried, p+": not found")
			continue
		}
		tried = append(tried, err.Error())
	}
	return LimeModule{}, fmt.Errorf("%w %s (%s)", ErrNoLimeModule, release, strings.Join(tried, "; "))
}

func inspectModule(path, release string) (LimeModule, error) {
	f, err := os.Open(path)
	if err != nil {
		return LimeModule{}, err
	}
	defer f.Close()
	if err := checkRootOnly(f, path); err != nil {
		return LimeModule{}, err
	}
	m, err := readModinfo(f, path)
	if err != nil {
		return LimeModule{}, err
	}
	if kver, _, _ := strings.Cut(m.Vermagic, " "); kver != release {
		return LimeModule{}, fmt.Errorf("%s: built for kernel %q, running %q", path, kver, release)
	}
	return m, nil
}

// checkRootOnly refuses a module that someone else could have replaced:
// the file and its directory must be owned by root (or by the agent's own
// user) and not writable by group or others.
func checkRootOnly(f *os.File, path string) error {
	check := func(name string, fi os.FileInfo) error {
		st, ok := fi.Sys().(*syscall.Stat_t)
		if !ok {
			return nil
		}
		if st.Uid != 0 && int(st.Uid) != os.Geteuid() || fi.Mode().Perm()&0o022 != 0 {
			return fmt.Errorf("%s: owned by uid %d with mode %v; a module must be writable by root only", name, st.Uid, fi.Mode().Perm())
		}
		return nil
	}
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("%s: not a regular file", path)
	}
	if err := check(path, fi); err != nil {
		return err
	}
	di, err := os.Stat(filepath.Dir(path))
	if err != nil {
		return err
	}
	return check(filepath.Dir(path), di)
}

// moduleSigMagic ends a module that carries an appended signature.
const moduleSigMagic = "~Module signature appended~\n"

func readModinfo(f *os.File, path string) (LimeModule, error) {
	m := LimeModule{Path: path, Name: "lime"}
	ef, err := elf.NewFile(f)
	if err != nil {
		return m, fmt.Errorf("%s: not a kernel module: %w", path, err)
	}
	sec := ef.Section(".modinfo")
	if sec == nil {
		return m, fmt.Errorf("%s: not a kernel module: no .modinfo section", path)
	}
	if sec.Size > 1<<20 {
		return m, fmt.Errorf("%s: .modinfo of %d bytes", path, sec.Size)
	}
	info, err := sec.Data()
	if err != nil {
		return m, fmt.Errorf("%s: .modinfo: %w", path, err)
	}
	for _, kv := range bytes.Split(info, []byte{0}) {
		k, v, _ := strings.Cut(string(kv), "=")
		switch k {
		case "vermagic":
			m.Vermagic = strings.TrimSpace(v)
		case "name":
			m.Name = v
		}
	}
	if m.Vermagic == "" {
		return m, fmt.Errorf("%s: no vermagic in .modinfo", path)
	}
	h := sha256.New()
	if _, err := io.Copy(h, io.NewSectionReader(f, 0, 1<<30)); err != nil {
		return m, fmt.Errorf("%s: %w", path, err)
	}
	m.SHA256 = hex.EncodeToString(h.Sum(nil))
	var tail [len(moduleSigMagic)]byte
	if fi, err := f.Stat(); err == nil && fi.Size() >= int64(len(tail)) {
		if _, err := f.ReadAt(tail[:], fi.Size()-int64(len(tail))); err == nil {
			m.Signed = string(tail[:]) == moduleSigMagic
		}
	}
	return m, nil
}

// kernelRelease is `uname -r` of the kernel procRoot describes.
func kernelRelease(procRoot string) (string, error) {
	if b, err := readSmall(filepath.Join(procRoot, "sys/kernel/osrelease")); err == nil {
		if r := strings.TrimSpace(string(b)); r != "" {
			return r, nil
		}
	}
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return "", fmt.Errorf("kernel release: %w", err)
	}
	return unix.ByteSliceToString(u.Release[:]), nil
}

// moduleRefusal explains an error of finit_module in terms of the host's
// settings, which are what a responder can act on.
func moduleRefusal(sysRoot, procRoot string, err error) string {
	switch {
	case errors.Is(err, unix.EKEYREJECTED):
		return "module signature enforcement is on (module.sig_enforce=1 or Secure Boot) and lime.ko is not signed by a trusted key; use /proc/kcore, or sign lime.ko with a key the kernel trusts"
	case errors.Is(err, unix.EPERM):
		if m := LockdownMode(sysRoot); m == "integrity" || m == "confidentiality" {
			return "kernel lockdown (" + m + ") forbids unsigned modules"
		}
		if b, e := readSmall(filepath.Join(procRoot, "sys/kernel/modules_disabled")); e == nil && strings.TrimSpace(string(b)) == "1" {
			return "module loading is disabled (kernel.modules_disabled=1)"
		}
		return "not permitted: the agent needs CAP_SYS_MODULE"
	case errors.Is(err, unix.EEXIST):
		return "a module named lime is already loaded"
	case errors.Is(err, unix.ENOEXEC):
		return "the kernel does not accept this lime.ko (built for another kernel or configuration)"
	}
	return ""
}

// LockdownMode is the kernel's lockdown mode ("none", "integrity",
// "confidentiality"), or "" when the lockdown LSM is not there.
func LockdownMode(sysRoot string) string {
	b, err := readSmall(filepath.Join(sysRoot, "kernel/security/lockdown"))
	if err != nil {
		return ""
	}
	s := string(b)
	if i := strings.IndexByte(s, '['); i >= 0 {
		if j := strings.IndexByte(s[i:], ']'); j > 0 {
			return s[i+1 : i+j]
		}
	}
	return ""
}

// SigEnforced reports whether the kernel requires signed modules.
func SigEnforced(sysRoot string) (enforced, known bool) {
	b, err := readSmall(filepath.Join(sysRoot, "module/module/parameters/sig_enforce"))
	if err != nil {
		return false, false
	}
	return strings.TrimSpace(string(b)) == "Y", true
}
