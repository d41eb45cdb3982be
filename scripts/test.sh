#!/usr/bin/env bash
# Runs every rustvlan test on a fresh Debian machine, as root: formatting, lints, unit
# tests, integration tests against the real kernel (in namespaces the tests make), the
# Docker end-to-end suites against private dockerds of two engines (Debian 12's 20.10 and
# Debian sid's 28) that this script starts and stops, the fault harness of shared pools on
# etcd 3.4 and 3.5, the VM rig and a benchmark smoke run.
# It installs what it needs with apt-get and cleans up after itself.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=lib/env.sh
source scripts/lib/env.sh

say() { printf '[test.sh] %s\n' "$*" >&2; }
[[ $(id -u) == 0 ]] || { say "run me as root: the tests make namespaces, links and a dockerd"; exit 1; }

# First: every program the suites run is installed below (or by the script that runs it).
say "scripts/check-deps.sh: the programs the tests, benchmarks and scripts run, and their packages"
scripts/check-deps.sh
# The check must be able to fail: a copy of the tree whose test.sh does not install
# iputils-ping must be refused, naming ping and its package.
copy=$(mktemp -d /tmp/rvdeps.XXXXXX)
cp -r scripts tests benches .ci "$copy/"
sed -i 's/ iputils-ping / /' "$copy/scripts/test.sh"
if python3 scripts/deps/check.py "$copy" >"$copy/out" 2>&1 || ! grep -q 'MISSING ping (Debian package iputils-ping)' "$copy/out"; then
    cat "$copy/out" >&2
    say "check-deps passed a tree whose tests run ping without installing it"
    exit 1
fi
say "check-deps refuses a tree without iputils-ping, as it must: $(grep -m1 'MISSING ping' "$copy/out")"
rm -rf "$copy"

# The layer rule of src/ (README "Where things are"): no import points up a layer and no
# files import each other in a circle.
say "scripts/layers.py: the layer rule of src/"
python3 scripts/layers.py
# It must be able to fail: a core file that imports the app, and a driver file that
# imports the IPAM, are refused.
layer_must_fail() { # file, line to append, the refusal expected
    local copy
    copy=$(mktemp -d /tmp/rvlayers.XXXXXX)
    cp -r src "$copy/"
    echo "$2" >>"$copy/src/$1"
    if python3 scripts/layers.py --tree "$copy" >"$copy/out" 2>&1 || ! grep -qF "AGAINST THE RULE: $3" "$copy/out"; then
        cat "$copy/out" >&2
        say "scripts/layers.py passed src/$1 with: $2"
        exit 1
    fi
    say "scripts/layers.py refuses $1 with '$2', as it must: $(grep -m1 -F "AGAINST THE RULE: $3" "$copy/out")"
    rm -rf "$copy"
}
layer_must_fail model.rs 'use crate::server::serve;' 'model -> server'
layer_must_fail driver/join.rs 'use crate::ipam::Ipam;' 'driver::join -> ipam'

# protobuf-compiler: protoc, which the etcd client needs to build; etcd-server and
# etcd-client: the real etcd cluster of tests/shared.rs; nftables: the partitions of tests/faults.rs.
rv_need_pkgs iproute2 iputils-ping docker.io busybox-static curl docker-registry prometheus util-linux protobuf-compiler libprotobuf-dev etcd-server etcd-client dnsmasq-base nftables

# The Docker engines the end-to-end suites run against: Debian 12's dockerd 20.10 and
# Debian sid's dockerd 28 (RUSTVLAN_DOCKERD=20.10 or =28 runs one alone). The first runs
# every test; each further one runs the Docker suites again.
read -ra engines <<<"${RUSTVLAN_DOCKERD:-20.10 28}"
((${#engines[@]})) || { say "RUSTVLAN_DOCKERD names no engine"; exit 1; }

work=$(mktemp -d /tmp/rvtest.XXXXXX)
# Figures the suites report; in the work tree, which the VM rig's guest shares.
export RUSTVLAN_REPORT=$PWD/target/rustvlan-report.txt
mkdir -p target && rm -f "$RUSTVLAN_REPORT"
made_docker0=false
cleanup() {
    local rc=$?
    set +e
    if [[ -s $RUSTVLAN_REPORT ]]; then
        say "figures reported by the suites:"
        sed 's/^/    /' "$RUSTVLAN_REPORT" >&2
    fi
    for d in "$work"/docker-*; do [[ -d $d ]] && rv_dockerd_stop "$d"; done
    rv_registry_stop "$work/registry"
    $made_docker0 && ip link del docker0
    rm -rf "$work"
    if ((rc == 0)); then say PASS; else say "FAIL (rc=$rc)"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The host's docker0 belongs to the host's Docker: no private dockerd of ours may touch
# it (`--bridge=none` deletes it). When there is none, one is made here with a test
# address, and the end of the run requires it unchanged either way.
if ! ip link show docker0 >/dev/null 2>&1; then
    ip link add docker0 type bridge && ip addr add 192.0.2.1/24 dev docker0 && made_docker0=true
fi
docker0_before=$(ip -o addr show dev docker0 | awk '{print $3, $4}' | sort)
say "docker0 before the suites: ${docker0_before//$'\n'/, }"

say "cargo fmt --check"
cargo fmt --check
say "cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets -- -D warnings
# tests/vm.rs is not a default test target (it runs in the VM): lint it by name.
cargo clippy --test vm -- -D warnings

export RUSTVLAN_TEST_IMAGE=rvbb:latest
# The managed plugin (tests/plugin.rs): its directory and a registry to publish it to.
export RUSTVLAN_PLUGIN_DIR=$PWD/target/plugin/rustvlan
scripts/build-plugin.sh "$RUSTVLAN_PLUGIN_DIR"
rv_registry_start "$work/registry"
export RUSTVLAN_REGISTRY=127.0.0.1:5000

# RUSTVLAN_CI turns every "skipped: cannot run here" into a failure: this script made
# sure root, namespaces and dockerd are there, so a skip would hide a broken test.
export RUSTVLAN_CI=1
# The Docker suites are the test files that mark each test that really ran against dockerd.
mapfile -t e2e_files < <(grep -l 'RUSTVLAN_E2E_MARKER' tests/*.rs)
expected=$(cat "${e2e_files[@]}" | grep -c '^#\[test\]')
e2e_targets=()
for f in "${e2e_files[@]}"; do e2e_targets+=(--test "$(basename "$f" .rs)"); done

first=true
for engine in "${engines[@]}"; do
    rv_engine "$engine"
    dir=$work/docker-$RV_ENGINE
    rv_dockerd_start "$dir"
    # tests/dockerd_restart.rs restarts this dockerd (SIGTERM, SIGKILL, --live-restore).
    export RUSTVLAN_DOCKERD_DIR=$dir RUSTVLAN_DOCKER=$RV_DOCKER
    rv_test_image "$RUSTVLAN_TEST_IMAGE"
    version=$("$RV_DOCKER" version --format '{{.Server.Version}}')
    export RUSTVLAN_E2E_MARKER=$work/e2e-ran-$RV_ENGINE
    echo "== on dockerd $version (engine $RV_ENGINE)" >>"$RUSTVLAN_REPORT"
    if $first; then
        say "cargo test, every suite, the Docker ones on dockerd $version"
        cargo test --all-targets --no-fail-fast -- --test-threads "${RUSTVLAN_TEST_THREADS:-4}"
    else
        say "cargo test, the Docker suites (${e2e_files[*]}) on dockerd $version"
        cargo test --no-fail-fast "${e2e_targets[@]}" -- --test-threads "${RUSTVLAN_TEST_THREADS:-4}"
    fi
    first=false
    ran=$(sort -u "$RUSTVLAN_E2E_MARKER" 2>/dev/null | wc -l)
    ((ran == expected)) || { say "on dockerd $version the Docker end-to-end suites reported $ran of $expected tests as run"; exit 1; }
    say "on dockerd $version the Docker end-to-end suites ran all $ran tests: $(sort -u "$RUSTVLAN_E2E_MARKER" | paste -sd' ')"
    rv_dockerd_stop "$dir"
done

# The fault harness of the shared IPAM (tests/faults.rs) runs alone, as its hosts' leases
# are short: on Debian 12's etcd 3.4, then on sid's 3.5. The marker shows both ran.
rv_etcd35
export RUSTVLAN_FAULTS_MARKER=$work/faults-ran
say "fault harness (tests/faults.rs) on etcd 3.4"
cargo test --test faults -- --ignored
say "fault harness (tests/faults.rs) on etcd 3.5 ($RV_ETCD35)"
RUSTVLAN_TEST_ETCD=$RV_ETCD35 cargo test --test faults -- --ignored
ran=$(sort -u "$RUSTVLAN_FAULTS_MARKER" 2>/dev/null | paste -sd' ')
[[ $ran == *"etcd 3.4."* && $ran == *"etcd 3.5."* ]] ||
    { say "the fault harness reported runs on '$ran', not one on etcd 3.4 and one on 3.5"; exit 1; }
say "the fault harness ran on $ran"

# ipvlan, 802.1Q and dummy: inside a VM booting a stock Debian kernel. The marker lives
# in the work tree, which the guest shares; the guest's /tmp is its own.
export RUSTVLAN_VM_MARKER=$PWD/target/rustvlan-vm-ran
rm -f "$RUSTVLAN_VM_MARKER"
say "real-kernel rig: cargo test --test vm inside a Debian kernel VM (scripts/vm-test.sh)"
CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER="$PWD/scripts/vm-test.sh --" cargo test --test vm
expected=$(grep -c '^#\[test\]' tests/vm.rs)
ran=$(sort -u "$RUSTVLAN_VM_MARKER" 2>/dev/null | wc -l)
((ran == expected)) || { say "the VM suite reported $ran of $expected tests as run"; exit 1; }
say "VM suite ran all $ran tests: $(paste -sd' ' "$RUSTVLAN_VM_MARKER")"
# The rig must be able to fail: the VLAN test again, with the far end on VLAN 11.
say "real-kernel rig, deliberately broken: the VLAN test with the far end on a wrong VLAN id"
if RUSTVLAN_VM_SABOTAGE=wrong-vlan-id CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER="$PWD/scripts/vm-test.sh --" \
    cargo test -q --test vm vlan_parents_tag_frames_and_come_and_go_with_their_networks >"$RUSTVLAN_VM_MARKER.broken" 2>&1; then
    cat "$RUSTVLAN_VM_MARKER.broken"
    say "the VM suite passed with a wrong VLAN id at the far end: it cannot catch a broken case"
    exit 1
fi
say "the broken case failed the VM suite, as it must: $(grep -m1 -o 'VLAN 10 to VLAN 10' "$RUSTVLAN_VM_MARKER.broken" || echo 'see target/rustvlan-vm-ran.broken')"

# SIGKILLs during attach/detach traffic (tests/crash.rs) again in the VM, with the stores
# on the work tree's 9p share, as the state store's "lost acknowledged changes" refusal
# was once seen there: every restart must come up, with every acknowledged change.
say "crash suite in the VM, stores on its 9p share: ${RUSTVLAN_VM_CRASH_KILLS:=30} SIGKILLs in ${RUSTVLAN_VM_CRASH_CYCLES:=1500} cycles"
vm_state=$PWD/target/vm-crash-state
rm -rf "$vm_state" && mkdir -p "$vm_state"
RUSTVLAN_TEST_STATE_BASE=$vm_state RUSTVLAN_CRASH_KILLS=$RUSTVLAN_VM_CRASH_KILLS RUSTVLAN_CRASH_CYCLES=$RUSTVLAN_VM_CRASH_CYCLES \
    CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER="$PWD/scripts/vm-test.sh --" cargo test --test crash
grep -q 'plugin crash (in the VM, state on its 9p share)' "$RUSTVLAN_REPORT" || { say "the crash suite did not report from the VM"; exit 1; }
rm -rf "$vm_state"

# The benchmarks are not pass/fail tests, but a short run keeps scripts/bench.sh working.
say "benchmark smoke run (scripts/bench.sh --smoke)"
scripts/bench.sh --smoke

docker0_after=$(ip -o addr show dev docker0 2>/dev/null | awk '{print $3, $4}' | sort || true)
[[ $docker0_after == "$docker0_before" ]] || {
    say "the host's docker0 did not survive the suites: before '${docker0_before//$'\n'/, }', after '${docker0_after//$'\n'/, }'"
    exit 1
}
say "the host's docker0 survived every suite: ${docker0_after//$'\n'/, }"

# Every program the suites ran is here now, from the package scripts/deps/programs.tsv names.
scripts/check-deps.sh --installed >/dev/null
