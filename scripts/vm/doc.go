// Package vm boots Debian's kernel under qemu with custody's real agent
// inside, to prove physical-memory capture against a real kernel: its
// /proc/kcore, its /proc/iomem, and the LiME module built for it. The
// test in vm_test.go drives it; ci-deps.sh installs and builds what the
// guest needs into a cache (see Cache).
//
// The guest is an initramfs (busybox, the agent, lime.ko, the NIC driver)
// on qemu's user-mode network, where the host is 10.0.2.2 and reaching it
// means reaching the host's loopback: the collector never leaves 127.0.0.1.
//
// Run it with `make test-vm` (it also runs in `make test`); prepare the
// machine once with `sudo scripts/vm/ci-deps.sh`. The pinned kernel is in
// kernel.env; changing it there changes the cache directory, so the next
// ci-deps.sh run builds LiME for the new kernel. When Debian's archive no
// longer carries the pinned kernel, ci-deps.sh builds for the newest one of
// the same series and says so (see KernelABI).
package vm
