#!/bin/sh
# wharf against netavark, the CNI bridge plugin, `ip` (attach/detach) and aardvark-dns (DNS),
# in throwaway lab namespaces on this machine. Installs nothing: it says what is missing.
#
#   sudo -E benches/compare/run.sh            # attach/detach + DNS
#   sudo -E benches/compare/run.sh attach     # attach/detach only (writes docs/bench-attach.svg)
#   sudo -E benches/compare/run.sh dns        # DNS only
#
# Environment: COMPARE_ITERS (200), COMPARE_SVG, COMPARE_ONLY, COMPARE_VERBOSE (see
# benches/compare.rs); CARGO_TARGET_DIR as usual.
set -eu
cd "$(dirname "$0")/../.."

if [ "$(id -u)" != 0 ]; then
    echo "run.sh: needs root (network namespaces); try: sudo -E $0 $*" >&2
    exit 1
fi

missing=""
have() { [ -x "$1" ] || command -v "$1" >/dev/null 2>&1; }
need() { # need PACKAGE FILE...
    pkg=$1; shift
    for f in "$@"; do
        if ! have "$f"; then
            missing="$missing $pkg"
            echo "run.sh: $f not found (Debian package: $pkg); that peer is skipped" >&2
            return
        fi
    done
}
need netavark /usr/lib/podman/netavark
need aardvark-dns /usr/lib/podman/aardvark-dns
need containernetworking-plugins /usr/lib/cni/bridge /usr/lib/cni/host-local
need iptables iptables
need dnsperf dnsperf
need iproute2 ip
need nftables nft
if [ -n "$missing" ]; then
    echo "run.sh: to compare against everything: apt-get install -y$missing" >&2
fi

echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg) ($(nproc) cores)"
what=${1:-all}
if [ "$what" = all ] || [ "$what" = attach ]; then
    cargo bench --bench compare
fi
if [ "$what" = all ] || [ "$what" = dns ]; then
    cargo bench --bench dns_perf
fi
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
