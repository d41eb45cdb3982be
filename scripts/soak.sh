#!/usr/bin/env bash
# The fault harness of the shared IPAM (tests/faults.rs) for longer than CI runs it: its
# schedule of faults repeated ROUNDS times (shuffled after the first round), on Debian
# 12's etcd 3.4 and on sid's 3.5 (fetched with a private apt configuration). Run as root.
#
#   scripts/soak.sh [--rounds N] [--seed S] [--etcd 3.4|3.5|both]
#   scripts/soak.sh --planted-bug hole1|late-delete [--rounds N]
#
# --planted-bug shows that the checker can fail: it runs the schedule (one round unless
# told) on a copy of the tree with a bug put back, and succeeds only if the harness fails
# naming an address held without its claim, or held twice:
#   hole1        hole 1 of issue 24: the check of this host's claims no longer waits for
#                claims on their way to the store (with a 30 ms pause between each claim
#                and its record, as tests/shared.rs injects);
#   late-delete  a release deletes the claim whatever its revision, and a claim found
#                already this host's is not written again: a release that a partition
#                delayed deletes the address's next claim.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=lib/env.sh
source scripts/lib/env.sh

say() { printf '[soak.sh] %s\n' "$*" >&2; }
[[ $(id -u) == 0 ]] || { say "run me as root: the harness makes namespaces, links and nftables rules"; exit 1; }

rounds= seed=$RANDOM etcd=both planted=
while (($#)); do
    case $1 in
    --rounds) rounds=$2; shift 2 ;;
    --seed) seed=$2; shift 2 ;;
    --etcd) etcd=$2; shift 2 ;;
    --planted-bug) planted=$2; shift 2 ;;
    *) say "unknown argument $1 (see the head of $0)"; exit 2 ;;
    esac
done

rv_need_pkgs iproute2 nftables etcd-server etcd-client protobuf-compiler libprotobuf-dev
export RUSTVLAN_REPORT=${RUSTVLAN_REPORT:-$PWD/target/soak-report.txt}
mkdir -p target && rm -f "$RUSTVLAN_REPORT"

if [[ -n $planted ]]; then
    copy=$(mktemp -d /tmp/rvplanted.XXXXXX)
    trap 'rm -rf "$copy"' EXIT
    cp -r Cargo.toml Cargo.lock src tests benches "$copy/"
    plant() { # file, text that must be there, its replacement
        grep -qF "$2" "$copy/$1" || { say "'$2' is not in $1 any more: update this script"; exit 1; }
        FROM=$2 TO=$3 perl -0pi -e 's/\Q$ENV{FROM}\E/$ENV{TO}/' "$copy/$1"
    }
    plant_re() { # file, a Perl pattern that must match, its replacement
        FROM=$2 perl -0ne 'exit(/$ENV{FROM}/ ? 0 : 1)' "$copy/$1" || { say "/$2/ matches nothing in $1 any more: update this script"; exit 1; }
        FROM=$2 TO=$3 perl -0pi -e 's/$ENV{FROM}/$ENV{TO}/' "$copy/$1"
    }
    delay=
    case $planted in
    hole1)
        plant src/ipam/shared.rs 'let _claiming = shared.checking.read().await;' ''
        delay=30
        ;;
    late-delete)
        plant src/etcd.rs 'Some((value, revision)) if value == ours => already_ours.push((claim, revision)),' \
            'Some((value, _)) if value == ours => { let _ = claim.answer.send(Ok(Claim::Ours)); }'
        plant_re src/etcd.rs 'Compare::mod_revision\(\s*key\.clone\(\),\s*CompareOp::Equal,\s*claim\.mod_revision\(\),?\s*\)' \
            'Compare::value(key.clone(), CompareOp::Equal, self.ours())'
        ;;
    *) say "--planted-bug takes hole1 or late-delete"; exit 2 ;;
    esac
    say "planted bug $planted; ${rounds:-1} round(s) of faults"
    out=$PWD/target/planted-$planted.log
    if (cd "$copy" && CARGO_TARGET_DIR=/var/tmp/rustvlan-planted-target RUSTVLAN_FAULTS_CLAIM_DELAY_MS=$delay \
        RUSTVLAN_FAULTS_ROUNDS=${rounds:-1} RUSTVLAN_FAULTS_SEED=$seed cargo test --test faults -- --ignored) >"$out" 2>&1; then
        tail -n 30 "$out" >&2
        say "the harness passed with the planted bug $planted: it did not catch it"
        exit 1
    fi
    if ! grep -qE 'claimed in etcd as None|DUPLICATE' "$out"; then
        tail -n 40 "$out" >&2
        say "the harness failed with the planted bug $planted, but not on a missing claim or a duplicate (above)"
        exit 1
    fi
    say "the harness caught the planted bug $planted, as it must (whole output: $out):"
    grep -m3 -E 'claimed in etcd as None|DUPLICATE' "$out" | cut -c1-300 >&2
    exit 0
fi

versions=()
case $etcd in
3.4) versions=(3.4) ;;
3.5) versions=(3.5) ;;
both) versions=(3.4 3.5) ;;
*) say "--etcd takes 3.4, 3.5 or both"; exit 2 ;;
esac
for v in "${versions[@]}"; do
    if [[ $v == 3.5 ]]; then
        rv_etcd35
        export RUSTVLAN_TEST_ETCD=$RV_ETCD35
    else
        unset RUSTVLAN_TEST_ETCD
    fi
    say "etcd $v: ${rounds:=10} rounds of faults, seed $seed"
    RUSTVLAN_FAULTS_ROUNDS=$rounds RUSTVLAN_FAULTS_SEED=$seed cargo test --release --test faults -- --ignored
done
say "figures:"
sed 's/^/    /' "$RUSTVLAN_REPORT" >&2
