#!/usr/bin/env bash
# Off-CPU profile of the P2 attach/detach cycles: records every context switch with its
# kernel stack while `cargo bench -- --smoke --only p2` runs, then sums, per reason,
# how long threads stayed blocked inside rtnetlink requests. This is where the time of
# P2's cycles goes; bench-report/ANALYSIS.md quotes it.
#   scripts/investigations/profile-p2.sh [OUT_DIR]      as root; needs perf (linux-perf) and python3
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
out=${1:-$(mktemp -d /tmp/rvprofile.XXXXXX)}
mkdir -p "$out"
bin=$PWD/target/x86_64-unknown-linux-gnu/release/rustvlan
[[ -x $bin ]] || scripts/build-plugin.sh >/dev/null
cargo bench -q --bench bench --no-run
perf record -q -e sched:sched_switch -a -g -o "$out/sched.data" -- \
    cargo bench -q --bench bench -- --smoke --only p2 --out "$out/report" --rustvlan "$bin" >"$out/bench.log" 2>&1
perf script -i "$out/sched.data" 2>/dev/null >"$out/sched.txt"
python3 - "$out/sched.txt" <<'PY'
import collections, re, sys

header = re.compile(r"\s(\d+\.\d+): sched:sched_switch: prev_comm=.*? prev_pid=(\d+) .*prev_state=(\S+) ==> next_comm=.*? next_pid=(\d+)")


def reason(frames):
    stack = " ".join(frames)
    if "netlink_sendmsg" not in stack:
        return None
    if "__dev_change_net_namespace" in stack:
        op = "link move between namespaces"
    elif "rtnl_dellink" in stack:
        op = "link delete"
    elif "inet_rtm_newaddr" in stack or "inet6_rtm_newaddr" in stack:
        op = "address add"
    elif "rtnl_newlink" in stack:
        op = "link add or change"
    else:
        op = "other rtnetlink request"
    locks = [i for i, f in enumerate(frames[:6]) if f.startswith("__mutex_lock")]
    if locks and locks[0] + 1 < len(frames) and re.match(r"(rtnl|rtnetlink|inet6?_rtm)", frames[locks[0] + 1]):
        return op + ": waiting for RTNL"
    if "rcu_barrier" in stack:
        held = "after RTNL is released" if "netdev_run_todo" in stack else "holding RTNL"
        return op + ": rcu_barrier() " + held
    if "synchronize_rcu" in stack or "synchronize_net" in stack or "wait_rcu_gp" in stack:
        return op + ": RCU grace period"
    return op + ": other"


blocked, total, count = {}, collections.Counter(), collections.Counter()
for block in open(sys.argv[1]).read().split("\n\n"):
    lines = block.strip().split("\n")
    m = header.search(lines[0]) if lines else None
    if not m:
        continue
    t, prev, state, nxt = float(m.group(1)), int(m.group(2)), m.group(3), int(m.group(4))
    if nxt in blocked:
        since, why = blocked.pop(nxt)
        if why:
            total[why] += t - since
            count[why] += 1
    frames = [l.split()[1].split("+")[0] for l in lines[1:] if len(l.split()) > 1]
    if state != "R":
        blocked[prev] = (t, reason(frames))
print("thread time blocked inside rtnetlink requests during the P2 smoke run:")
for why, seconds in total.most_common():
    print(f"{seconds * 1000:9.1f} ms {count[why]:6d} waits  {seconds * 1000 / count[why]:6.1f} ms each  {why}")
PY
echo "profile data in $out"
