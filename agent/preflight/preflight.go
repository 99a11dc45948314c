// Package preflight says what this host lets the agent capture, and why
// not when it does not: privileges, kernel lockdown, module signing,
// /proc/kcore and a LiME module for the running kernel. The agent reports
// it in its hello, and `custody-agent preflight` prints it, so that a
// responder knows before asking for memory whether it can be had.
package preflight

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/custodyhq/custody/agent/artifact"
	custodyv1 "github.com/custodyhq/custody/proto/custody/v1"
)

// Check is one thing the host allows (OK) or refuses, with the reason.
type Check struct {
	Name   string `json:"name"`
	OK     bool   `json:"ok"`
	Detail string `json:"detail"`
}

// Options say where the checks look. The zero value checks the live host
// with the default LiME directory.
type Options struct {
	Env     artifact.Env
	LimeDir string // default artifact.DefaultLimeDir
}

// Capability bits, from linux/capability.h.
const (
	capSysModule = 16
	capSysRawio  = 17
	capSysPtrace = 19
	capSysAdmin  = 21
	capPerfmon   = 38
	capBPF       = 39
)

// initPIDNamespace is /proc/self/ns/pid in the initial PID namespace.
const initPIDNamespace = "pid:[4026531836]"

// Run checks the host. Every check is a read of procfs or sysfs: nothing
// is loaded, nothing changes.
func Run(opts Options) []Check {
	proc, sys := opts.Env.ProcRoot, opts.Env.SysRoot
	if proc == "" {
		proc = "/proc"
	}
	if sys == "" {
		sys = "/sys"
	}
	limeDir := opts.LimeDir
	if limeDir == "" {
		limeDir = artifact.DefaultLimeDir
	}
	st, stErr := readStatus(filepath.Join(proc, "self/status"))
	var out []Check

	root := Check{Name: "root"}
	switch {
	case stErr != nil:
		root.Detail = "unknown: " + stErr.Error()
	case st.euid == 0:
		root.OK, root.Detail = true, "running as uid 0"
	default:
		root.Detail = fmt.Sprintf("running as uid %d: /proc/iomem hides addresses and other processes' memory is out of reach", st.euid)
	}
	out = append(out, root)

	for _, c := range []struct {
		name string
		bit  uint
		why  string
	}{
		{"cap_sys_rawio", capSysRawio, "read /proc/kcore"},
		{"cap_sys_module", capSysModule, "load the LiME module"},
		{"cap_sys_admin", capSysAdmin, "read /proc/iomem addresses and all of /proc"},
		{"cap_sys_ptrace", capSysPtrace, "read other processes' memory"},
	} {
		ch := Check{Name: c.name}
		switch {
		case stErr != nil:
			ch.Detail = "unknown: " + stErr.Error()
		case st.capEff&(1<<c.bit) != 0:
			ch.OK, ch.Detail = true, "effective: can "+c.why
		default:
			ch.Detail = "not effective: cannot " + c.why
		}
		out = append(out, ch)
	}

	lockdown := Check{Name: "lockdown"}
	switch m := artifact.LockdownMode(sys); m {
	case "":
		lockdown.OK, lockdown.Detail = true, "no lockdown LSM"
	case "none":
		lockdown.OK, lockdown.Detail = true, "none"
	case "integrity":
		lockdown.Detail = "integrity: unsigned modules are refused; /proc/kcore is still readable"
	default:
		lockdown.Detail = m + ": /proc/kcore and unsigned modules are refused"
	}
	out = append(out, lockdown)

	sig := Check{Name: "module_sig_enforce"}
	switch enforced, known := artifact.SigEnforced(sys); {
	case !known:
		sig.OK, sig.Detail = true, "module signing not configured in this kernel"
	case enforced:
		sig.Detail = "enforced (module.sig_enforce=1 or Secure Boot): only signed modules load"
	default:
		sig.OK, sig.Detail = true, "not enforced"
	}
	out = append(out, sig)

	mods := Check{Name: "modules_disabled"}
	if b, err := os.ReadFile(filepath.Join(proc, "sys/kernel/modules_disabled")); err == nil && strings.TrimSpace(string(b)) == "1" {
		mods.Detail = "kernel.modules_disabled=1: no module can be loaded until reboot"
	} else {
		mods.OK, mods.Detail = true, "module loading enabled"
	}
	out = append(out, mods)

	out = append(out, bpfCheck(proc, sys, st, stErr, artifact.LockdownMode(sys)))
	out = append(out, kcoreCheck(filepath.Join(proc, "kcore")))
	out = append(out, limeCheck(opts, limeDir, sig.OK && lockdown.OK))
	return out
}

// Checks runs the checks for env with the default LiME directory: what the
// agent's hello reports.
func Checks(env artifact.Env) []Check { return Run(Options{Env: env}) }

// bpfCheck says whether processes and open_files can use their BPF
// iterators, from what the kernel would require of a load (checked
// without loading anything): the privilege, kernel BTF, a lockdown that
// still lets BPF read kernel memory, and the initial PID namespace, whose
// pids the iterators report.
func bpfCheck(proc, sys string, st status, stErr error, lockdown string) Check {
	c := Check{Name: "bpf_iterators"}
	const fallback = ": processes and open_files read /proc instead (slower, same records)"
	ns, nsErr := os.Readlink(filepath.Join(proc, "self/ns/pid"))
	_, btfErr := os.Stat(filepath.Join(sys, "kernel/btf/vmlinux"))
	switch {
	case stErr != nil:
		c.Detail = "unknown: " + stErr.Error()
	case st.capEff&(1<<capSysAdmin) == 0 && st.capEff&(1<<capBPF|1<<capPerfmon) != 1<<capBPF|1<<capPerfmon:
		c.Detail = "neither CAP_SYS_ADMIN nor CAP_BPF with CAP_PERFMON effective" + fallback
	case lockdown == "confidentiality":
		c.Detail = "lockdown=confidentiality forbids BPF reads of kernel memory" + fallback
	case btfErr != nil:
		c.Detail = "no kernel BTF (" + btfErr.Error() + ")" + fallback
	case nsErr != nil:
		c.Detail = "pid namespace unknown (" + nsErr.Error() + ")" + fallback
	case ns != initPIDNamespace:
		c.Detail = "not in the initial PID namespace (" + ns + "): the iterators' pids would not be this /proc's" + fallback
	default:
		c.OK, c.Detail = true, "processes and open_files read through BPF iterators (one pass in the kernel)"
	}
	return c
}

func kcoreCheck(path string) Check {
	c := Check{Name: "kcore"}
	f, err := os.Open(path)
	if err != nil {
		c.Detail = err.Error()
		return c
	}
	defer f.Close()
	var magic [4]byte
	if _, err := io.ReadFull(f, magic[:]); err != nil {
		c.Detail = fmt.Sprintf("%s: read: %v", path, err)
		return c
	}
	if string(magic[:]) != "\x7fELF" {
		c.Detail = path + ": not an ELF core file"
		return c
	}
	c.OK, c.Detail = true, path+" readable"
	return c
}

func limeCheck(opts Options, dir string, unsignedOK bool) Check {
	c := Check{Name: "lime_module"}
	release, err := release(opts.Env.ProcRoot)
	if err != nil {
		c.Detail = err.Error()
		return c
	}
	m, err := artifact.FindLimeModule(dir, release)
	if err != nil {
		c.Detail = err.Error()
		return c
	}
	switch {
	case m.Signed:
		c.OK, c.Detail = true, m.Path+" (signed; the kernel must trust its key)"
	case unsignedOK:
		c.OK, c.Detail = true, m.Path
	default:
		c.Detail = m.Path + " is unsigned, and this kernel accepts only signed modules"
	}
	return c
}

func release(proc string) (string, error) {
	if proc == "" {
		proc = "/proc"
	}
	b, err := os.ReadFile(filepath.Join(proc, "sys/kernel/osrelease"))
	if err != nil {
		return "", fmt.Errorf("kernel release: %w", err)
	}
	return strings.TrimSpace(string(b)), nil
}

type status struct {
	euid   int
	capEff uint64
}

// readStatus reads the effective uid and capabilities of the agent from
// /proc/self/status.
func readStatus(path string) (status, error) {
	f, err := os.Open(path)
	if err != nil {
		return status{}, err
	}
	defer f.Close()
	st := status{euid: -1}
	var seenCap bool
	sc := bufio.NewScanner(io.LimitReader(f, 64<<10))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		fields := strings.Fields(v)
		switch k {
		case "Uid":
			if len(fields) >= 2 {
				st.euid, _ = strconv.Atoi(fields[1])
			}
		case "CapEff":
			if len(fields) == 1 {
				st.capEff, err = strconv.ParseUint(fields[0], 16, 64)
				if err != nil {
					return st, fmt.Errorf("%s: CapEff %q: %w", path, fields[0], err)
				}
				seenCap = true
			}
		}
	}
	if err := sc.Err(); err != nil {
		return st, err
	}
	if st.euid < 0 || !seenCap {
		return st, fmt.Errorf("%s: no Uid or CapEff line", path)
	}
	return st, nil
}

// Proto converts checks for the hello and the Agent message.
func Proto(checks []Check) []*custodyv1.PreflightCheck {
	out := make([]*custodyv1.PreflightCheck, len(checks))
	for i, c := range checks {
		out[i] = &custodyv1.PreflightCheck{Name: c.Name, Ok: c.OK, Detail: c.Detail}
	}
	return out
}
