package artifact

import (
	"fmt"
	"math/bits"
)

// capNames are the Linux capabilities by bit, as capabilities(7) names
// them (lower case, as getpcaps and capsh print them).
var capNames = [...]string{
	"cap_chown", "cap_dac_override", "cap_dac_read_search", "cap_fowner",
	"cap_fsetid", "cap_kill", "cap_setgid", "cap_setuid", "cap_setpcap",
	"cap_linux_immutable", "cap_net_bind_service", "cap_net_broadcast",
	"cap_net_admin", "cap_net_raw", "cap_ipc_lock", "cap_ipc_owner",
	"cap_sys_module", "cap_sys_rawio", "cap_sys_chroot", "cap_sys_ptrace",
	"cap_sys_pacct", "cap_sys_admin", "cap_sys_boot", "cap_sys_nice",
	"cap_sys_resource", "cap_sys_time", "cap_sys_tty_config", "cap_mknod",
	"cap_lease", "cap_audit_write", "cap_audit_control", "cap_setfcap",
	"cap_mac_override", "cap_mac_admin", "cap_syslog", "cap_wake_alarm",
	"cap_block_suspend", "cap_audit_read", "cap_perfmon", "cap_bpf",
	"cap_checkpoint_restore",
}

// capList names the bits set in a capability mask; a bit newer than this
// table is named by number rather than dropped.
func capList(mask uint64) []string {
	names := make([]string, 0, bits.OnesCount64(mask))
	for bit := 0; mask != 0; bit++ {
		if mask&1 != 0 {
			if bit < len(capNames) {
				names = append(names, capNames[bit])
			} else {
				names = append(names, fmt.Sprintf("cap_%d", bit))
			}
		}
		mask >>= 1
	}
	return names
}
