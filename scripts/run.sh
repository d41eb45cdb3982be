#!/usr/bin/env bash
# Builds rustvlan and starts it as a service on the default socket
# (/run/docker/plugins/rustvlan.sock, store in /var/lib/rustvlan), where dockerd finds it
# as `-d rustvlan --ipam-driver rustvlan`. With systemd it installs plugin/rustvlan.service
# (ordered before docker.service); without, it starts the binary in the background.
#   scripts/run.sh          build, install to /usr/local/bin, start
#   scripts/run.sh stop     stop it
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
say() { printf '[run.sh] %s\n' "$*" >&2; }
[[ $(id -u) == 0 ]] || { say "run me as root: the plugin makes links and listens in /run/docker/plugins"; exit 1; }

pidfile=/run/rustvlan.pid
systemd=false
[[ -d /run/systemd/system ]] && command -v systemctl >/dev/null && systemd=true

stop() {
    if $systemd; then
        systemctl stop rustvlan.service 2>/dev/null || true
    elif [[ -s $pidfile ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
        kill -TERM "$(cat "$pidfile")"
        for _ in $(seq 50); do kill -0 "$(cat "$pidfile")" 2>/dev/null || break; sleep 0.1; done
    fi
    rm -f "$pidfile"
}

if [[ ${1:-} == stop ]]; then stop; say stopped; exit 0; fi

# protoc: the etcd client's protocol buffers are compiled at build time.
{ command -v protoc && [[ -e /usr/include/google/protobuf/descriptor.proto ]]; } >/dev/null || { source scripts/lib/env.sh; rv_need_pkgs protobuf-compiler libprotobuf-dev; }
say "cargo build --release"
cargo build --release
stop
install -m 0755 target/release/rustvlan /usr/local/bin/rustvlan
mkdir -p /run/docker/plugins /var/lib/rustvlan
chmod 0700 /var/lib/rustvlan

if $systemd; then
    install -m 0644 plugin/rustvlan.service /etc/systemd/system/rustvlan.service
    systemctl daemon-reload
    systemctl enable --now rustvlan.service
    say "started rustvlan.service; logs: journalctl -u rustvlan"
else
    log=/var/log/rustvlan.log
    start=$(stat -c %s "$log" 2>/dev/null || echo 0)
    setsid /usr/local/bin/rustvlan serve </dev/null >>"$log" 2>&1 &
    echo $! >"$pidfile"
    # Up once it logs "listening"; a stale socket file would fool a test for the socket.
    for _ in $(seq 100); do tail -c +"$((start + 1))" "$log" | grep -q listening && break; sleep 0.05; done
    tail -c +"$((start + 1))" "$log" | grep -q listening || { tail "$log" >&2; say "rustvlan did not start"; exit 1; }
    say "started rustvlan (pid $(cat "$pidfile")); logs: /var/log/rustvlan.log; stop: scripts/run.sh stop"
fi
/usr/local/bin/rustvlan state
