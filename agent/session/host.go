package session

import (
	"bufio"
	"bytes"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/custodyhq/custody/agent/artifact"
	custodyv1 "github.com/custodyhq/custody/proto/custody/v1"
)

// HostFacts is what the agent says about its host in the hello: enough for
// a responder to pick the right agent, read from the same roots the
// artifacts read from.
func HostFacts(env artifact.Env) *custodyv1.HostFacts {
	proc := env.ProcRoot
	if proc == "" {
		proc = "/proc"
	}
	root := env.HostRoot
	if root == "" {
		root = "/"
	}
	h := &custodyv1.HostFacts{
		Hostname: readTrim(filepath.Join(proc, "sys/kernel/hostname")),
		Kernel:   readTrim(filepath.Join(proc, "sys/kernel/osrelease")),
		BootId:   readTrim(filepath.Join(proc, "sys/kernel/random/boot_id")),
		Arch:     runtime.GOARCH,
		Os:       prettyName(root),
	}
	if h.Hostname == "" || h.Kernel == "" {
		var u unix.Utsname
		if unix.Uname(&u) == nil {
			if h.Hostname == "" {
				h.Hostname = unix.ByteSliceToString(u.Nodename[:])
			}
			if h.Kernel == "" {
				h.Kernel = unix.ByteSliceToString(u.Release[:])
			}
		}
	}
	return h
}

func readTrim(path string) string {
	b, err := os.ReadFile(path)
	if err != nil || len(b) > 4096 {
		return ""
	}
	return strings.TrimSpace(string(b))
}

func prettyName(root string) string {
	for _, p := range []string{"etc/os-release", "usr/lib/os-release"} {
		b, err := os.ReadFile(filepath.Join(root, p))
		if err != nil || len(b) > 64<<10 {
			continue
		}
		sc := bufio.NewScanner(bytes.NewReader(b))
		for sc.Scan() {
			if v, ok := strings.CutPrefix(sc.Text(), "PRETTY_NAME="); ok {
				return strings.Trim(v, `"'`)
			}
		}
	}
	return ""
}
