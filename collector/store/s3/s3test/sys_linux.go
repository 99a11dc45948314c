package s3test

import (
	"os/exec"
	"syscall"
)

// setPdeathsig kills the server with the test binary, even if the test
// binary itself is killed before its cleanups run.
func setPdeathsig(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
