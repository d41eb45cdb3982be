#!/usr/bin/env bash
# Every external program that tests/, benches/ and scripts/ run is installed by the
# scripts that run it, or is on a fresh machine already: scripts/deps/check.py reads the
# scripts and the Rust code, and scripts/deps/programs.tsv says which Debian package
# provides each program. Prints the list; exits 1 naming each program that would be
# missing on a fresh machine, with its package.
#   scripts/check-deps.sh               the static check (scripts/test.sh runs it first)
#   scripts/check-deps.sh --installed   also: each program is on this machine now, from
#                                       the package the table names (the end of test.sh)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=lib/env.sh
source scripts/lib/env.sh
# shfmt parses the shell scripts; python3 is on a fresh machine.
rv_need_pkgs shfmt
exec python3 scripts/deps/check.py --list "$@"
