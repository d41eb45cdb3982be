#!/usr/bin/env bash
# rustvlan's benchmarks (P1–P6): against Docker's built-in macvlan, CNI's macvlan and
# host-local plugins, raw netlink and the docker0 bridge, interleaved in one run.
#   scripts/bench.sh            full run; writes bench/REPORT.md, bench/results.json, bench/*.svg
#   scripts/bench.sh --smoke    a short run into a temporary directory (CI), checked, then removed
# As root. Installs what it needs, starts a private dockerd with a docker0 bridge, stops
# it at the end. Never part of the pass/fail tests.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=lib/env.sh
source scripts/lib/env.sh
say() { printf '[bench.sh] %s\n' "$*" >&2; }
[[ $(id -u) == 0 ]] || { say "run me as root"; exit 1; }

smoke=false
[[ ${1:-} == --smoke ]] && smoke=true
rv_need_pkgs iproute2 docker.io busybox-static containernetworking-plugins iperf3 iputils-ping util-linux python3

work=$(mktemp -d /tmp/rvbench.XXXXXX)
cleanup() {
    local rc=$?
    set +e
    rv_dockerd_stop "$work/docker"
    rm -rf "$work"
    ((rc == 0)) || say "FAIL (rc=$rc)"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The binary the managed plugin ships: static, release.
scripts/build-plugin.sh target/plugin/rustvlan
bin=$PWD/target/x86_64-unknown-linux-gnu/release/rustvlan
RUSTVLAN_BENCH_LAYER_BYTES=$(tar -C target/plugin/rustvlan/rootfs -c . | gzip -9 | wc -c)
export RUSTVLAN_BENCH_LAYER_BYTES

RV_DOCKERD_BRIDGE=1 rv_dockerd_start "$work/docker"
export RUSTVLAN_BENCH_IMAGE=rvbb:latest RUSTVLAN_BENCH_PERF_IMAGE=rvperf:latest
rv_test_image "$RUSTVLAN_BENCH_IMAGE"
rv_test_image "$RUSTVLAN_BENCH_PERF_IMAGE" "$(command -v iperf3)"

if $smoke; then
    out=$work/out
    cargo bench --bench bench -- --smoke --out "$out" --rustvlan "$bin"
    for f in REPORT.md results.json p1.svg p2-sequential.svg p3-rate.svg p4.svg p5.svg p6-throughput.svg; do
        [[ -s $out/$f ]] || { say "the smoke run did not write $f"; exit 1; }
    done
    for c in p1 p2 p3 p4p5 p6; do
        python3 -c "import json,sys; r=json.load(open('$out/results.json'))['comparisons']; sys.exit(0 if '$c' in r and 'skipped' not in r['$c']['results'] else 1)" \
            || { say "the smoke run has no results for $c"; exit 1; }
    done
    say "smoke run complete: $(grep -c '^- \*\*' "$out/REPORT.md") goal lines in the report"
else
    cargo bench --bench bench -- --out bench --rustvlan "$bin"
    say "wrote bench/REPORT.md"
fi
