#!/usr/bin/env bash
# What make bpf and check-bpf need: clang (the BPF target) and libbpf's
# headers. Debian 12's versions; the committed objects were built with them.
set -euo pipefail
pkgs=(clang-14 llvm-14 libbpf-dev)
missing=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
clang-14 --version | head -1
