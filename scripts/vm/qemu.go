package vm

import (
	"bytes"
	"context"
	_ "embed"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"time"
)

//go:embed kernel.env
var kernelEnv string

// KernelABI is the guest kernel: the one kernel.env pins, unless
// ci-deps.sh found it gone from Debian's archive and built the pieces for
// a newer one, which it records in the cache's "abi" file next to the pin
// it replaced.
func KernelABI() string {
	pin := envValue(kernelEnv, "KERNEL_ABI")
	if pin == "" {
		panic("scripts/vm/kernel.env sets no KERNEL_ABI")
	}
	if b, err := os.ReadFile(filepath.Join(cacheRoot(), "abi")); err == nil {
		if envValue(string(b), "PIN") == pin {
			if abi := envValue(string(b), "ABI"); abi != "" {
				return abi
			}
		}
	}
	return pin
}

// envValue is KEY's value in KEY=VALUE lines.
func envValue(text, key string) string {
	for _, line := range strings.Split(text, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), key+"="); ok {
			return v
		}
	}
	return ""
}

func cacheRoot() string {
	if root := os.Getenv("CUSTODY_VM_CACHE"); root != "" {
		return root
	}
	return "/var/cache/custody-vm"
}

// Cache is where ci-deps.sh leaves the guest's pieces:
// $CUSTODY_VM_CACHE (default /var/cache/custody-vm)/<abi>/.
type Cache struct {
	Dir string
}

// DefaultCache is the cache ci-deps.sh fills for the pinned kernel.
func DefaultCache() Cache {
	return Cache{Dir: filepath.Join(cacheRoot(), KernelABI())}
}

func (c Cache) Kernel() string  { return filepath.Join(c.Dir, "vmlinuz") }
func (c Cache) Lime() string    { return filepath.Join(c.Dir, "lime.ko") }
func (c Cache) NIC() string     { return filepath.Join(c.Dir, "e1000.ko") }
func (c Cache) Busybox() string { return filepath.Join(c.Dir, "busybox") }

// Missing lists the pieces that are not there.
func (c Cache) Missing() []string {
	var out []string
	for _, p := range []string{c.Kernel(), c.Lime(), c.NIC(), c.Busybox()} {
		if fi, err := os.Stat(p); err != nil || fi.Size() == 0 {
			out = append(out, p)
		}
	}
	return out
}

// Config is one boot.
type Config struct {
	Qemu      string // qemu-system-x86_64
	Kernel    string
	Initrd    string
	Cmdline   string // appended to "console=ttyS0 quiet panic=-1"
	MemoryMiB int
	CPUs      int
	// Console is the file the guest's serial console is written to.
	Console string
}

// Guest is a running qemu.
type Guest struct {
	cfg  Config
	cmd  *exec.Cmd
	done chan struct{}
	err  error
	out  bytes.Buffer // qemu's own stdout and stderr
}

// Boot starts qemu. There is no KVM on the machines this runs on, so the
// guest is emulated (TCG); if /dev/kvm is usable it is used.
func Boot(cfg Config) (*Guest, error) {
	if cfg.MemoryMiB == 0 {
		cfg.MemoryMiB = 256
	}
	if cfg.CPUs == 0 {
		cfg.CPUs = 1
	}
	args := []string{
		"-machine", "q35", "-cpu", "max", "-smp", fmt.Sprint(cfg.CPUs), "-m", fmt.Sprint(cfg.MemoryMiB),
		"-kernel", cfg.Kernel, "-initrd", cfg.Initrd,
		"-append", strings.TrimSpace("console=ttyS0 quiet panic=-1 " + cfg.Cmdline),
		"-display", "none", "-monitor", "none", "-serial", "file:" + cfg.Console, "-no-reboot",
		// romfile= : the NIC's boot ROM is for PXE, which this guest
		// does not do, and it is not installed without qemu's recommends.
		"-netdev", "user,id=n0", "-device", "e1000,netdev=n0,romfile=",
	}
	if f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0); err == nil {
		f.Close()
		args = append(args, "-accel", "kvm")
	}
	g := &Guest{cfg: cfg, done: make(chan struct{})}
	g.cmd = exec.Command(cfg.Qemu, args...)
	g.cmd.Stdout, g.cmd.Stderr = &g.out, &g.out
	g.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := g.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start qemu: %w", err)
	}
	go func() {
		g.err = g.cmd.Wait()
		close(g.done)
	}()
	return g, nil
}

// Console is what the guest has written to its serial console so far.
// Firmware and the kernel write escape codes there: it is bytes, not text.
func (g *Guest) Console() []byte {
	b, _ := os.ReadFile(g.cfg.Console)
	return b
}

// WaitFor waits until the console matches re and returns the match.
func (g *Guest) WaitFor(ctx context.Context, re *regexp.Regexp) ([][]byte, error) {
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		if m := re.FindSubmatch(g.Console()); m != nil {
			return m, nil
		}
		select {
		case <-g.done:
			if m := re.FindSubmatch(g.Console()); m != nil {
				return m, nil
			}
			return nil, fmt.Errorf("guest exited (%v) before its console showed %q; qemu said: %s", g.err, re, g.out.String())
		case <-ctx.Done():
			return nil, fmt.Errorf("console never showed %q: %w", re, ctx.Err())
		case <-t.C:
		}
	}
}

// Stop ends the guest: evidence is on the host by now, so there is
// nothing to shut down cleanly.
func (g *Guest) Stop() {
	select {
	case <-g.done:
		return
	default:
	}
	g.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-g.done:
	case <-time.After(10 * time.Second):
		g.cmd.Process.Kill()
		<-g.done
	}
}

// Between returns what the console shows between the lines begin and end.
func Between(console []byte, begin, end string) ([]byte, error) {
	_, rest, ok := bytes.Cut(console, []byte(begin+"\n"))
	if !ok {
		_, rest, ok = bytes.Cut(console, []byte(begin+"\r\n"))
	}
	if !ok {
		return nil, fmt.Errorf("console has no %q", begin)
	}
	body, _, ok := bytes.Cut(rest, []byte(end))
	if !ok {
		return nil, errors.New("console has no " + end)
	}
	return bytes.ReplaceAll(body, []byte("\r\n"), []byte("\n")), nil
}
