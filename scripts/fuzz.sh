#!/usr/bin/env bash
# Runs every Fuzz* target in the module for the given time each.
set -euo pipefail
time=${1:-20s}
for pkg in $(go list ./...); do
	for fn in $(go test -list '^Fuzz' "$pkg" | grep '^Fuzz' || true); do
		echo "== $pkg $fn"
		go test -run '^$' -fuzz "^${fn}\$" -fuzztime "$time" "$pkg"
	done
done
