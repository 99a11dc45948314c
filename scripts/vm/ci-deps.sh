#!/usr/bin/env bash
# Installs what the real-kernel test (scripts/vm) needs on a fresh Debian 12
# machine, as root, and builds the guest's pieces into a cache that reruns
# reuse:
#
#   $CUSTODY_VM_CACHE/<abi>/vmlinuz    Debian's kernel, pinned in kernel.env
#   $CUSTODY_VM_CACHE/<abi>/e1000.ko   the guest's NIC driver (no dependencies)
#   $CUSTODY_VM_CACHE/<abi>/lime.ko    LiME from lime-forensics-dkms, built
#                                      against the pinned headers
#   $CUSTODY_VM_CACHE/<abi>/busybox    static busybox for the guest's /init
#
# The kernel image and the LiME source are unpacked with dpkg-deb rather than
# installed: installing them runs initramfs and dkms hooks for the *host*,
# which take minutes and are of no use here. The headers are installed the
# ordinary way (no hooks run without dkms) because their Makefiles refer to
# absolute paths under /usr/src and /usr/lib/linux-kbuild-*.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=kernel.env
. "$here/kernel.env"
: "${KERNEL_ABI:?kernel.env must set KERNEL_ABI}"
CACHE=${CUSTODY_VM_CACHE:-/var/cache/custody-vm}
export DEBIAN_FRONTEND=noninteractive

# Debian drops an ABI's packages from the archive some point releases after
# a newer one arrives. If the pinned one is gone, take the newest ABI of
# the same series whose image and headers are both there, and record the
# choice for the test (vm.KernelABI reads it); bump kernel.env when this
# says so.
PIN=$KERNEL_ABI
available() { apt-cache show "linux-image-$1" >/dev/null 2>&1 && apt-cache show "linux-headers-$1" >/dev/null 2>&1; }
if ! available "$PIN"; then
	apt-get update -qq
fi
if ! available "$PIN"; then
	series=${PIN%-*-amd64} # 6.1.0
	KERNEL_ABI=$(apt-cache search --names-only "^linux-headers-${series//./\\.}-[0-9]+-amd64\$" |
		awk '{print $1}' | sed 's/^linux-headers-//' | sort -V | while read -r abi; do available "$abi" && echo "$abi"; done | tail -1)
	[ -n "$KERNEL_ABI" ] || { echo "scripts/vm: neither $PIN nor any other $series kernel is in the archive" >&2; exit 1; }
	echo "scripts/vm: $PIN is no longer in the archive; using $KERNEL_ABI (bump scripts/vm/kernel.env)" >&2
fi
mkdir -p "$CACHE"
printf 'PIN=%s\nABI=%s\n' "$PIN" "$KERNEL_ABI" >"$CACHE/abi"
out=$CACHE/$KERNEL_ABI

pkgs=(qemu-system-x86 busybox-static gcc make "linux-headers-$KERNEL_ABI")
missing=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ -s "$out/vmlinuz" ] && [ -s "$out/e1000.ko" ] && [ -s "$out/lime.ko" ] && [ -x "$out/busybox" ]; then
	echo "scripts/vm: guest pieces for $KERNEL_ABI already in $out"
	exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$out"
chmod 755 "$work" # apt-get download runs as _apt
cd "$work"
apt-get download -qq "linux-image-$KERNEL_ABI" lime-forensics-dkms
dpkg-deb -x linux-image-"$KERNEL_ABI"_*.deb image
dpkg-deb -x lime-forensics-dkms_*.deb lime

cp "image/boot/vmlinuz-$KERNEL_ABI" "$out/vmlinuz.tmp"
e1000=$(find "image/lib/modules/$KERNEL_ABI" -name 'e1000.ko*' | head -1)
case $e1000 in
*.ko) cp "$e1000" "$out/e1000.ko.tmp" ;;
*.ko.xz) xz -dc "$e1000" >"$out/e1000.ko.tmp" ;;
*) echo "no e1000 module in linux-image-$KERNEL_ABI" >&2; exit 1 ;;
esac

src=$(find lime/usr/src -maxdepth 1 -name 'lime-forensics-*' | head -1)
[ -n "$src" ] || { echo "no LiME source in lime-forensics-dkms" >&2; exit 1; }
cp -r "$src" build
# LiME's own Makefile builds for the running kernel; kbuild with M= builds
# for the pinned headers instead.
make -s -C "/usr/src/linux-headers-$KERNEL_ABI" M="$work/build" modules >build.log 2>&1 || { cat build.log >&2; exit 1; }
# Debug info is 95% of the module and of no use in the guest's initramfs.
strip --strip-debug -o "$out/lime.ko.tmp" build/lime.ko
cp /bin/busybox "$out/busybox.tmp"

for f in vmlinuz e1000.ko lime.ko busybox; do mv "$out/$f.tmp" "$out/$f"; done
echo "$(basename "$src")" >"$out/lime.version"
echo "scripts/vm: guest pieces for $KERNEL_ABI built in $out"
