#!/usr/bin/env bash
# How often dockerd loses one decrement of a network's endpoint count when 200
# containers are removed 20 at a time, with Docker's built-in macvlan and with rustvlan,
# interleaved (macvlan first in odd rounds, rustvlan first in even ones). A drifted count
# shows as `docker network rm` refusing with "has active endpoints" while no container is
# attached; dockerd repairs it only when it starts, so this script then restarts the
# dockerd it started itself. README ("What rustvlan guarantees") quotes the result.
#   scripts/investigations/dockerd-count-drift.sh [ROUNDS]     as root; default 8 rounds, ~2 min each
# It starts a private dockerd and rustvlan (on /run/docker/plugins/rustvlan.sock, which
# must be free) and removes both, and its test links, when it ends.
set -euo pipefail
shopt -s inherit_errexit
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
# shellcheck source=lib/env.sh
source scripts/lib/env.sh
say() { printf '[count-drift] %s\n' "$*" >&2; }
[[ $(id -u) == 0 ]] || { say "run me as root: it starts dockerd and makes links"; exit 1; }
rounds=${1:-8}

rv_need_pkgs iproute2 docker.io busybox-static
cargo build -q --release
work=$(mktemp -d /tmp/rvdrift.XXXXXX)
plugin_pid=
cleanup() {
    set +e
    [[ -n $plugin_pid ]] && kill -TERM "$plugin_pid" 2>/dev/null && wait "$plugin_pid" 2>/dev/null
    ip link del rvdrift0 2>/dev/null
    rv_dockerd_stop "$work/docker"
    rm -rf "$work"
}
trap cleanup EXIT
rv_dockerd_start "$work/docker"
rv_test_image rvbb:latest
target/release/rustvlan serve --state-dir "$work/state" >"$work/rustvlan.log" 2>&1 &
plugin_pid=$!
for _ in $(seq 100); do grep -q listening "$work/rustvlan.log" && break; sleep 0.05; done
# Another rustvlan on the socket would be measured instead, or nothing would answer.
grep -q listening "$work/rustvlan.log" || { cat "$work/rustvlan.log" >&2; say "rustvlan did not start"; exit 1; }

# One run: 200 containers started and removed 20 at a time; prints 1 if the count drifted.
run_once() {
    local net=$1
    shift
    ip link add rvdrift0 type veth peer name rvdrift1
    ip link set rvdrift0 up && ip link set rvdrift1 up
    docker network create "$@" --subnet 10.98.0.0/22 -o parent=rvdrift0 "$net" >/dev/null
    seq -w 1 200 | xargs -P 20 -I{} docker run -d --name "$net-{}" --net "$net" rvbb:latest sleep 100000 \
        >/dev/null 2> >(grep -v 'IPv4 forwarding is disabled' >&2)
    seq -w 1 200 | xargs -P 20 -I{} docker rm -f "$net-{}" >/dev/null
    local drift=1
    for _ in $(seq 50); do
        if docker network rm "$net" >/dev/null 2>&1; then drift=0; break; fi
        sleep 0.2
    done
    if ((drift)); then
        [[ $(docker network inspect --format '{{len .Containers}}' "$net") == 0 ]] || { say "$net: containers still attached"; exit 1; }
        rv_dockerd_stop "$work/docker" >/dev/null 2>&1
        rv_dockerd_start "$work/docker" >/dev/null 2>&1
        docker network rm "$net" >/dev/null
    fi
    ip link del rvdrift0
    echo "$drift"
}

declare -A drifted=([macvlan]=0 [rustvlan]=0)
for round in $(seq "$rounds"); do
    order=(macvlan rustvlan)
    ((round % 2)) || order=(rustvlan macvlan)
    for driver in "${order[@]}"; do
        if [[ $driver == macvlan ]]; then
            d=$(run_once drift-macvlan -d macvlan)
        else
            d=$(run_once drift-rustvlan -d rustvlan --ipam-driver rustvlan)
        fi
        drifted[$driver]=$((drifted[$driver] + d))
        say "round $round $driver: drift=$d"
    done
done
say "endpoint count drifted: macvlan ${drifted[macvlan]} of $rounds runs, rustvlan ${drifted[rustvlan]} of $rounds runs"
