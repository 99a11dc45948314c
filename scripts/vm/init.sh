#!/bin/busybox sh
# /init of the VM test's guest. Prints what the host test needs to the
# console between CUSTODY- lines, then runs the agent against the collector
# on the host. Settings come from /etc/custody/env, written per boot.
/bin/busybox mkdir -p /bin /proc /sys /dev /tmp /run /var/lib
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
mount -t securityfs securityfs /sys/kernel/security 2>/dev/null
. /etc/custody/env

ip link set lo up
insmod /lib/custody/e1000.ko || echo "CUSTODY-FAIL insmod e1000"
i=0
while [ ! -e /sys/class/net/eth0 ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
ip link set eth0 up
ip addr add 10.0.2.15/24 dev eth0
ip route add default via 10.0.2.2

# A string only this boot has, kept in memory (a tmpfs page and the
# shell's variables): the image must contain it.
MARKER="custody-marker-$NONCE-$(cat /proc/sys/kernel/random/uuid)"
echo "$MARKER" >/tmp/marker
echo "CUSTODY-MARKER $MARKER"
echo "CUSTODY-IOMEM-BEGIN"
cat /proc/iomem
echo "CUSTODY-IOMEM-END"
echo "CUSTODY-PREFLIGHT-BEGIN"
custody-agent preflight -o json
echo "CUSTODY-PREFLIGHT-END"
if [ "$BENCH" = 1 ]; then
	guestbench
fi
echo "CUSTODY-AGENT-START"
custody-agent run --collector "$COLLECTOR" --server-name localhost --ca /etc/custody/ca.crt \
	--state-dir /var/lib/custody-agent --join-token-file /etc/custody/join-token --max-backoff 2s --max-procs "$CPUS"
echo "CUSTODY-AGENT-EXIT $?"
poweroff -f
