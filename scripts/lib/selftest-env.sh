#!/usr/bin/env bash
# End-to-end check of scripts/lib/env.sh: private dockerd, test image, Docker's built-in
# macvlan driver on a host veth (never eth0), local registry, and a clean teardown.
# Traffic stays between the test containers and loopback.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=env.sh
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"

IMG=${RV_TEST_IMAGE:-rvbb:latest}
work=$(mktemp -d /tmp/rv-selftest.XXXXXX)
say() { printf '[selftest-env] %s\n' "$*" >&2; }

cleanup() {
    local rc=$?
    set +e
    if [[ -S $work/docker/docker.sock ]]; then
        "$RV_DOCKER" rm -f st-c1 st-c2 >/dev/null 2>&1
        "$RV_DOCKER" network rm mv1 >/dev/null 2>&1
    fi
    [[ ${made_veth:-} ]] && ip link del vA 2>/dev/null
    rv_registry_stop "$work/registry"
    rv_dockerd_stop "$work/docker"
    rm -rf "$work"
    if ((rc == 0)); then say PASS; else say "FAIL (rc=$rc)"; fi
}
trap cleanup EXIT
trap "exit 130" INT TERM
trap 'say "failed at line $LINENO: $BASH_COMMAND"' ERR

timed() {
    local t0 label=$1
    shift
    t0=$(rv__now)
    "$@"
    say "$label: $(rv__since "$t0")s"
}

if ip link show vA >/dev/null 2>&1 || ip link show vB >/dev/null 2>&1; then
    say "vA or vB already exists (another test running, or a leftover: ip link del vA)"
    exit 1
fi

timed "dockerd start" rv_dockerd_start "$work/docker"
[[ $DOCKER_HOST == "unix://$work/docker/docker.sock" ]] || { say "DOCKER_HOST not exported"; exit 1; }
timed "image build" rv_test_image "$IMG"
timed "image present (no rebuild)" rv_test_image "$IMG"

out=$(timed "docker run ip addr" "$RV_DOCKER" run --rm --net none "$IMG" ip addr)
printf '%s\n' "$out" >&2
grep -q 'inet 127.0.0.1/8' <<<"$out" || { say "ip addr output lacks loopback"; exit 1; }

ip link add vA type veth peer name vB
made_veth=1
ip link set vA up
ip link set vB up

timed "network create macvlan" "$RV_DOCKER" network create -d macvlan --subnet 10.99.0.0/24 -o parent=vA mv1 >/dev/null
"$RV_DOCKER" run -d --name st-c1 --net mv1 --ip 10.99.0.10 "$IMG" sleep 600 >/dev/null
"$RV_DOCKER" run -d --name st-c2 --net mv1 --ip 10.99.0.11 "$IMG" sleep 600 >/dev/null
"$RV_DOCKER" exec st-c1 ip addr show eth0 >&2
"$RV_DOCKER" exec st-c1 ip addr show eth0 | grep -q 'inet 10.99.0.10/24' || { say "st-c1 lacks 10.99.0.10/24"; exit 1; }
timed "ping c1 -> c2" "$RV_DOCKER" exec st-c1 ping -c 3 -w 10 10.99.0.11 >&2
timed "ping c2 -> c1" "$RV_DOCKER" exec st-c2 ping -c 3 -w 10 10.99.0.10 >&2

"$RV_DOCKER" rm -f st-c1 st-c2 >/dev/null
"$RV_DOCKER" network rm mv1 >/dev/null
if ip -o -d link show | grep '@vA:' | grep -q macvlan; then say "macvlan children of vA left behind"; exit 1; fi
ip link del vA
made_veth=

timed "registry start" rv_registry_start "$work/registry"
rv_registry_start "$work/registry"
"$RV_DOCKER" tag "$IMG" 127.0.0.1:5000/rvbb:selftest
timed "docker push to local registry" "$RV_DOCKER" push 127.0.0.1:5000/rvbb:selftest >/dev/null
curl -fsS http://127.0.0.1:5000/v2/rvbb/tags/list | grep -q selftest || { say "pushed tag not listed"; exit 1; }
rv_registry_stop "$work/registry"
if curl -fsS --max-time 2 -o /dev/null http://127.0.0.1:5000/v2/ 2>/dev/null; then
    say "registry still answering after stop"
    exit 1
fi

timed "dockerd stop" rv_dockerd_stop "$work/docker"
rv_dockerd_stop "$work/docker"
if grep -q " $work/" /proc/self/mountinfo; then say "mounts left under $work"; exit 1; fi
if [[ -n $(rv__dir_pids "$work/docker") ]]; then say "processes left for $work/docker"; exit 1; fi
rm -rf "$work"
