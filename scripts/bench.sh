#!/usr/bin/env bash
# rustvlan's benchmarks (P1–P8): against Docker's built-in macvlan, CNI's macvlan and
# host-local plugins, raw netlink, dockerd's default bridge and raw etcd transactions,
# interleaved in one run.
#   scripts/bench.sh            full run; writes bench-report/REPORT.md, bench-report/results.json, bench-report/*.svg
#   scripts/bench.sh --smoke    a short run into a temporary directory (CI), checked, then removed
# As root. Installs what it needs and runs on two Docker engines, one private dockerd at a
# time (scripts/lib/env.sh): P1–P6 and P8 (a 3-member etcd on loopback, no dockerd)
# against Debian 12's dockerd 20.10, then P1 again
# (`p1-28`) and P7 against Debian sid's dockerd 28. Both runs write into one staging
# directory (the second with --merge), so there is one report; bench-report/ is only replaced
# when both succeeded. Never part of the pass/fail tests.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=lib/env.sh
source scripts/lib/env.sh
say() { printf '[bench.sh] %s\n' "$*" >&2; }
[[ $(id -u) == 0 ]] || { say "run me as root"; exit 1; }

smoke=false
[[ ${1:-} == --smoke ]] && smoke=true
rv_need_pkgs iproute2 docker.io busybox-static containernetworking-plugins iperf3 iputils-ping util-linux python3 protobuf-compiler libprotobuf-dev etcd-server dnsmasq-base

work=$(mktemp -d /tmp/rvbench.XXXXXX)
cleanup() {
    local rc=$? d
    set +e
    for d in "$work"/docker-*; do [[ -d $d ]] && rv_dockerd_stop "$d"; done
    # P6's rule that lets its bridge's traffic through the host's firewall, if a killed
    # run left it behind.
    iptables -w -S FORWARD 2>/dev/null | grep -- '--comment rustvlan-bench-p6' | while read -ra rule; do
        iptables -w -D "${rule[@]:1}"
    done
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
export RUSTVLAN_BENCH_IMAGE=rvbb:latest RUSTVLAN_BENCH_PERF_IMAGE=rvperf:latest

# The benchmark binary, built once: both engines' runs use the same one.
benchbin=$(cargo bench --bench bench --no-run --message-format=json-render-diagnostics | python3 -c '
import json, sys
exe = [m["executable"] for m in map(json.loads, sys.stdin)
       if m.get("reason") == "compiler-artifact" and m.get("executable") and "bench" in m["target"]["kind"]]
print(exe[-1] if exe else "")')
[[ -x $benchbin ]] || { say "cargo bench --no-run named no benchmark binary"; exit 1; }
out=$work/out
extra=()
$smoke && extra=(--smoke)
# The benchmark against the current engine's dockerd (DOCKER_HOST), with its client.
bench_on() {
    RUSTVLAN_DOCKER=$RV_DOCKER RUSTVLAN_BENCH_ENGINE=$RV_ENGINE \
        "$benchbin" --bench "${extra[@]}" --out "$out" --rustvlan "$bin" "$@"
}

rv_engine 20.10
rv_dockerd_start "$work/docker-20.10"
rv_test_image "$RUSTVLAN_BENCH_IMAGE"
rv_test_image "$RUSTVLAN_BENCH_PERF_IMAGE" "$(command -v iperf3)"
bench_on --only p1,p2,p3,p4,p5,p6,p8,p9
rv_dockerd_stop "$work/docker-20.10"

rv_engine 28
rv_dockerd_start "$work/docker-28"
# P1 and P7 need only the busybox image; P6's iperf3 image stays on 20.10.
rv_test_image "$RUSTVLAN_BENCH_IMAGE"
bench_on --only p1,p7 --merge
rv_dockerd_stop "$work/docker-28"

if $smoke; then
    for f in REPORT.md results.json p1.svg p1-28.svg p2-sequential.svg p3-rate.svg p4.svg p5.svg p6-throughput.svg p6-cpu.svg p7.svg p8-rate.svg p9-lease.svg; do
        [[ -s $out/$f ]] || { say "the smoke run did not write $f"; exit 1; }
    done
    # Every comparison has results and its section in the report, and both dockerds are named.
    python3 - "$out" <<'PY' || { say "the smoke run's report is incomplete"; exit 1; }
import json, sys
out = sys.argv[1]
r = json.load(open(f"{out}/results.json"))
report = open(f"{out}/REPORT.md").read()
bad = []
for c in ["p1", "p1-28", "p2", "p3", "p4p5", "p6", "p7", "p8", "p9"]:
    comp = r["comparisons"].get(c)
    if comp is None or "skipped" in comp["results"]:
        bad.append(f"no results for {c}")
    elif f"\n## {comp['title']}\n" not in report:
        bad.append(f"no section '{comp['title']}' in REPORT.md")
for engine in ["20.10", "28"]:
    version = r["machine"]["dockerd"].get(engine)
    if not version or f"dockerd {version}" not in report:
        bad.append(f"dockerd {engine} is not named in REPORT.md")
for b in bad:
    print(f"[bench.sh] {b}", file=sys.stderr)
sys.exit(1 if bad else 0)
PY
    say "smoke run complete: $(grep -c '^- \*\*' "$out/REPORT.md") goal lines in the report"
    grep -E '^- \*\*P(1|7) ' "$out/REPORT.md" | sed 's/^/    /' >&2
else
    # Plots an earlier run drew and this one no longer does must not linger.
    rm -f bench-report/*.svg
    cp "$out"/* bench-report/
    say "wrote bench-report/REPORT.md"
fi
