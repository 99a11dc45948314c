package preflight

import (
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/custodyhq/custody/agent/artifact"
)

func host(name string) Options {
	d := filepath.Join("testdata", name)
	return Options{
		Env:     artifact.Env{ProcRoot: filepath.Join(d, "proc"), SysRoot: filepath.Join(d, "sys")},
		LimeDir: filepath.Join(d, "lime"),
	}
}

func TestRun(t *testing.T) {
	abs := func(p string) string {
		a, err := filepath.Abs(p)
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	open := host("open")
	open.LimeDir = abs(open.LimeDir)
	locked := host("locked")
	locked.LimeDir = abs(locked.LimeDir)
	user := host("user")
	user.LimeDir = abs(user.LimeDir)

	tests := []struct {
		name string
		opts Options
		want []Check
	}{
		{"open", open, []Check{
			{"root", true, "running as uid 0"},
			{"cap_sys_rawio", true, "effective: can read /proc/kcore"},
			{"cap_sys_module", true, "effective: can load the LiME module"},
			{"cap_sys_admin", true, "effective: can read /proc/iomem addresses and all of /proc"},
			{"cap_sys_ptrace", true, "effective: can read other processes' memory"},
			{"lockdown", true, "none"},
			{"module_sig_enforce", true, "not enforced"},
			{"modules_disabled", true, "module loading enabled"},
			{"bpf_iterators", true, "processes and open_files read through BPF iterators (one pass in the kernel)"},
			{"kcore", true, "testdata/open/proc/kcore readable"},
			{"lime_module", true, filepath.Join(open.LimeDir, "6.1.0-test-amd64/lime.ko")},
		}},
		{"locked", locked, []Check{
			{"root", true, "running as uid 0"},
			{"cap_sys_rawio", true, "effective: can read /proc/kcore"},
			{"cap_sys_module", true, "effective: can load the LiME module"},
			{"cap_sys_admin", true, "effective: can read /proc/iomem addresses and all of /proc"},
			{"cap_sys_ptrace", true, "effective: can read other processes' memory"},
			{"lockdown", false, "confidentiality: /proc/kcore and unsigned modules are refused"},
			{"module_sig_enforce", false, "enforced (module.sig_enforce=1 or Secure Boot): only signed modules load"},
			{"modules_disabled", false, "kernel.modules_disabled=1: no module can be loaded until reboot"},
			{"bpf_iterators", false, "lockdown=confidentiality forbids BPF reads of kernel memory: processes and open_files read /proc instead (slower, same records)"},
			{"kcore", false, "open testdata/locked/proc/kcore: no such file or directory"},
			{"lime_module", false, filepath.Join(locked.LimeDir, "6.1.0-test-amd64/lime.ko") + " is unsigned, and this kernel accepts only signed modules"},
		}},
		{"user", user, []Check{
			{"root", false, "running as uid 1000: /proc/iomem hides addresses and other processes' memory is out of reach"},
			{"cap_sys_rawio", false, "not effective: cannot read /proc/kcore"},
			{"cap_sys_module", false, "not effective: cannot load the LiME module"},
			{"cap_sys_admin", false, "not effective: cannot read /proc/iomem addresses and all of /proc"},
			{"cap_sys_ptrace", true, "effective: can read other processes' memory"},
			{"lockdown", true, "no lockdown LSM"},
			{"module_sig_enforce", true, "module signing not configured in this kernel"},
			{"modules_disabled", true, "module loading enabled"},
			{"bpf_iterators", false, "neither CAP_SYS_ADMIN nor CAP_BPF with CAP_PERFMON effective: processes and open_files read /proc instead (slower, same records)"},
			{"kcore", false, "testdata/user/proc/kcore: read: EOF"},
			{"lime_module", false, "no LiME module for this kernel 6.1.0-test-amd64 (" +
				filepath.Join(user.LimeDir, "6.1.0-test-amd64/lime.ko") + ": not found; " + filepath.Join(user.LimeDir, "lime.ko") + ": not found)"},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if diff := cmp.Diff(tt.want, Run(tt.opts)); diff != "" {
				t.Errorf("checks (-want +got):\n%s", diff)
			}
		})
	}
}

func TestProto(t *testing.T) {
	p := Proto([]Check{{"kcore", true, "readable"}, {"lockdown", false, "integrity"}})
	if len(p) != 2 || p[0].GetName() != "kcore" || !p[0].GetOk() || p[1].GetDetail() != "integrity" || p[1].GetOk() {
		t.Errorf("Proto = %v", p)
	}
}

// The live host: whatever it allows, every check has a name and a reason.
func TestChecksLiveHost(t *testing.T) {
	for _, c := range Checks(artifact.Env{}) {
		if c.Name == "" || c.Detail == "" {
			t.Errorf("check %+v lacks a name or a detail", c)
		}
	}
}
