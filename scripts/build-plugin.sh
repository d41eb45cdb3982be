#!/usr/bin/env bash
# Builds the managed plugin directory: config.json and a rootfs/ holding nothing but a
# static rustvlan (glibc, +crt-static: no musl target is needed).
#   scripts/build-plugin.sh [DIR]          default DIR: target/plugin/rustvlan
#   docker plugin create rustvlan/rustvlan DIR && docker plugin enable rustvlan/rustvlan
# The binary is built with cargo unless RUSTVLAN_PLUGIN_BINARY names one already built.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
say() { printf '[build-plugin] %s\n' "$*" >&2; }

out=${1:-target/plugin/rustvlan}
target=x86_64-unknown-linux-gnu
bin=${RUSTVLAN_PLUGIN_BINARY:-}
if [[ -z $bin ]]; then
    say "cargo build --release --target $target (static)"
    RUSTFLAGS='-C target-feature=+crt-static' cargo build --release --locked --target "$target"
    bin=target/$target/release/rustvlan
fi
# The rootfs has no libraries: a dynamically linked binary would not even start.
case $(ldd "$bin" 2>&1) in
    *"statically linked"* | *"not a dynamic executable"*) ;;
    *) say "$bin is dynamically linked; the plugin rootfs has no libraries"; exit 1 ;;
esac
rm -rf "$out"
mkdir -p "$out/rootfs"
install -m 0755 "$bin" "$out/rootfs/rustvlan"
# Mount points: dockerd and runc would make them, but an explicit tree is easier to audit.
mkdir -p "$out/rootfs/run/docker/plugins" "$out/rootfs/var/lib/rustvlan" "$out/rootfs/host-plugins"
cp config.json "$out/config.json"
size=$(stat -c %s "$out/rootfs/rustvlan")
gz=$(tar -C "$out/rootfs" -c . | gzip -9 | wc -c)
say "built $out: rootfs $((size / 1024)) KiB, $((gz / 1024)) KiB as a gzipped layer"
