#!/usr/bin/env bash
# make demo: a throwaway PKI and evidence directory, a collector and an agent
# on loopback, one collection of host+processes, verified. Stops everything
# it started, also on failure.
set -euo pipefail

BIN=${BIN:-$(cd "$(dirname "$0")/.." && pwd)/bin}
DEMO=$(mktemp -d /tmp/custody-demo.XXXXXX)
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
}
trap cleanup EXIT

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "PKI, state and evidence in $DEMO"
"$BIN/custody-collector" pki init --data-dir "$DEMO/collector"
"$BIN/custody-collector" pki issue responder demo --data-dir "$DEMO/collector"
"$BIN/custody-collector" token create --uses 1 --ttl 10m --data-dir "$DEMO/collector" --out "$DEMO/join-token"

say "collector on loopback"
"$BIN/custody-collector" serve --data-dir "$DEMO/collector" --listen 127.0.0.1:0 \
	--ready-file "$DEMO/collector.addr" 2>"$DEMO/collector.log" &
pids+=($!)
for _ in $(seq 100); do [ -s "$DEMO/collector.addr" ] && break; sleep 0.1; done
[ -s "$DEMO/collector.addr" ] || { cat "$DEMO/collector.log"; echo "collector did not start" >&2; exit 1; }
ADDR=$(cat "$DEMO/collector.addr")
echo "listening on $ADDR"

say "agent enrols with the join token and connects"
CUSTODY_JOIN_TOKEN= "$BIN/custody-agent" run --collector "$ADDR" --ca "$DEMO/collector/pki/ca.crt" \
	--state-dir "$DEMO/agent" --join-token-file "$DEMO/join-token" 2>"$DEMO/agent.log" &
pids+=($!)

export CUSTODY_COLLECTOR=$ADDR
export CUSTODY_CA=$DEMO/collector/pki/ca.crt
export CUSTODY_CERT=$DEMO/collector/pki/responder-demo.crt
export CUSTODY_KEY=$DEMO/collector/pki/responder-demo.key
export CUSTODY_CONFIG=/dev/null

AGENT=
for _ in $(seq 100); do
	AGENT=$("$BIN/custodyctl" agents -o json 2>/dev/null | sed -n 's/.*"agent_id": *"\([^"]*\)".*/\1/p' | head -1)
	connected=$("$BIN/custodyctl" agents -o json 2>/dev/null | grep -c '"connected": *true' || true)
	[ -n "$AGENT" ] && [ "$connected" -gt 0 ] && break
	sleep 0.1
done
[ -n "$AGENT" ] || { cat "$DEMO/agent.log"; echo "agent did not connect" >&2; exit 1; }
"$BIN/custodyctl" agents

say "collect host + processes"
"$BIN/custodyctl" collect --agent "$AGENT" --artifacts host,processes --case DEMO-1 \
	--reason "make demo" --wait --timeout 2m | tee "$DEMO/collect.out"
COLLECTION=$(sed -n 's/^collection  *//p' "$DEMO/collect.out" | head -1)

say "verify $COLLECTION"
"$BIN/custodyctl" verify "$COLLECTION"

say "evidence"
find "$DEMO/collector/evidence" -type f | sort
echo
echo "evidence directory: $DEMO/collector/evidence/DEMO-1/$AGENT/$COLLECTION"
echo "logs:               $DEMO/collector.log $DEMO/agent.log"
