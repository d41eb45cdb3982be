# shellcheck shell=bash
# Test environment helpers for rustvlan: private dockerd, test image, local registry.
# Source this file; every function logs to stderr with the prefix below and
# returns non-zero with a reason on failure (it never exits the caller's shell).
#
#   rv_need_pkgs pkg...        install missing Debian packages
#   rv_engine ENGINE           choose the Docker engine: 20.10 (Debian 12's docker.io) or
#                              28 (Debian sid's, fetched into a cache); exports RV_ENGINE,
#                              RV_DOCKERD, RV_DOCKER and RV_ENGINE_PATH
#   rv_dockerd_start DIR       private dockerd under DIR, exports DOCKER_HOST
#   rv_dockerd_stop DIR        stop it, its containerd/shims/containers, its bridge, unmount DIR
#   rv_etcd35                  etcd 3.5 (Debian sid's etcd-server, else trixie's) unpacked
#                              into a cache; exports RV_ETCD35 (its etcd binary)
#   rv_test_image NAME         busybox-static image built with `docker import`
#   rv_registry_start DIR      docker-registry on 127.0.0.1:5000, storage in DIR
#   rv_registry_stop DIR
#
# Knobs: RV_STORAGE_DRIVER (overlay2; vfs also works, slower), RV_DOCKERD_TIMEOUT (60 s),
# RV_ENGINE_CACHE (/var/tmp/rustvlan-docker28: where Docker 28 is unpacked).
# A dockerd playing another host: RV_DOCKERD_NETNS=NAME runs it (and its bridge) inside
# that network namespace, and RV_DOCKERD_PLUGIN_DIR=DIR shows it DIR as its
# /run/docker/plugins (a bind mount in its own mount namespace), so it sees only the
# plugin sockets put there and no other dockerd sees them.
# Every private dockerd gets a bridge of its own (rvb-<hash of DIR>) for its default
# network: `--bridge=none` would make dockerd delete the host's docker0, any Docker's.
# Host state we cannot avoid: legacy and managed plugin sockets live in the fixed
# /run/docker/plugins, and containerd shims put their sockets in /run/containerd/s.
# Without --ip-forward, `docker run` warns "IPv4 forwarding is disabled"; macvlan
# traffic does not need it.
#
# /usr/local/bin/docker is a newer client that may shadow Debian's; always use ours.
RV_ENGINE=${RV_ENGINE:-20.10}
RV_DOCKER=${RV_DOCKER:-/usr/bin/docker}
RV_DOCKERD=${RV_DOCKERD:-/usr/sbin/dockerd}
# Directories searched first for containerd, runc, docker-init and docker-proxy.
RV_ENGINE_PATH=${RV_ENGINE_PATH:-}
RV_REGISTRY_ADDR=127.0.0.1:5000

rv_log() { printf '[rv-env] %s\n' "$*" >&2; }
rv_fail() { printf '[rv-env] FAILED: %s\n' "$*" >&2; return 1; }

# Seconds since the epoch with decimals, for the timing lines.
rv__now() { date +%s.%N; }
rv__since() { awk -v a="$1" -v b="$(rv__now)" 'BEGIN { printf "%.2f", b - a }'; }

rv_need_pkgs() {
    local p missing=()
    for p in "$@"; do
        # dpkg -s also succeeds for removed packages that left config files behind.
        [[ $(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null) == installed ]] || missing+=("$p")
    done
    ((${#missing[@]})) || return 0
    rv_log "apt-get install ${missing[*]}"
    # Lock timeout: another apt run (e.g. the machine's own provisioning) may hold the lock.
    local apt=(apt-get -q -y -o DPkg::Lock::Timeout=600 --no-install-recommends)
    export DEBIAN_FRONTEND=noninteractive
    "${apt[@]}" install "${missing[@]}" >&2 && return 0
    # Usually a stale or never-fetched package list.
    rv_log "install failed; apt-get update and retry"
    "${apt[@]}" update >&2 || rv_fail "apt-get update failed" || return 1
    "${apt[@]}" install "${missing[@]}" >&2 || rv_fail "apt-get install ${missing[*]} failed" || return 1
}

# Debian sid's Docker 28 and what it runs (containerd 2, runc 1.3, tini), unpacked into
# RV_ENGINE_CACHE with a private apt configuration: the system's sources stay as they are.
# sid's runc needs a newer glibc than Debian 12's, so it gets sid's libc6 beside it.
RV_ENGINE28_PKGS=(docker.io docker-cli containerd runc tini libc6)
rv__engine28_install() {
    local cache=$1 work
    [[ -x $cache/bin/dockerd && -x $cache/bin/runc && -s $cache/versions ]] && return 0
    rv_need_pkgs patchelf ca-certificates || return 1
    rv_log "fetching Debian sid's ${RV_ENGINE28_PKGS[*]} into $cache"
    work=$(mktemp -d /tmp/rvengine.XXXXXX) || return 1
    rv__fetch_debs sid "$work" "${RV_ENGINE28_PKGS[@]}" || { rm -rf "$work"; return 1; }
    rm -rf "$cache" && mkdir -p "$cache/bin" "$cache/lib"
    local r=$work/root
    cp -a "$r/usr/lib/x86_64-linux-gnu/." "$cache/lib/"
    cp "$r/usr/sbin/dockerd" "$r/usr/sbin/docker-proxy" "$r/usr/bin/docker" "$r/usr/bin/containerd" \
        "$r/usr/bin/containerd-shim-runc-v2" "$r/usr/sbin/runc" "$cache/bin/"
    # docker-init is a link to tini-static, which Debian no longer ships; tini does the job.
    cp "$r/usr/bin/tini" "$cache/bin/docker-init"
    patchelf --set-interpreter "$cache/lib/ld-linux-x86-64.so.2" --set-rpath "$cache/lib" "$cache/bin/runc" ||
        { rm -rf "$work"; rv_fail "patchelf of sid's runc failed"; return 1; }
    (cd "$work/debs" && ls ./*.deb | sed 's|^\./||') >"$cache/versions"
    rm -rf "$work"
    local v
    # Not `| head -n1`: under pipefail, runc killed by SIGPIPE writing its second line
    # would fail the check at random.
    v=$("$cache/bin/runc" --version 2>&1) || { rv_fail "sid's runc does not run: $v"; return 1; }
    v=${v%%$'\n'*}
    rv_log "Docker 28 ready in $cache ($(tr '\n' ' ' <"$cache/versions"))"
}

# Debian packages of SUITE downloaded (not installed) into DIR with a private apt
# configuration and unpacked into DIR/root: the system's sources stay as they are.
rv__fetch_debs() {
    local suite=$1 dir=$2 apt
    shift 2
    rm -rf "$dir" && mkdir -p "$dir/lists/partial" "$dir/cache/archives/partial" "$dir/debs" "$dir/root"
    echo "deb http://deb.debian.org/debian $suite main" >"$dir/sources.list"
    apt=(apt-get -q -o "Dir::Etc::sourcelist=$dir/sources.list" -o Dir::Etc::sourceparts=/nonexistent
        -o "Dir::State::Lists=$dir/lists" -o "Dir::Cache=$dir/cache" -o Dir::State::status=/dev/null
        -o APT::Architecture=amd64 -o Debug::NoLocking=1 -o APT::Sandbox::User=root
        -o Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false
        -o Acquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled=false
        -o Acquire::IndexTargets::deb::DEP-11-icons-small::DefaultEnabled=false
        -o Acquire::IndexTargets::deb::Contents-deb::DefaultEnabled=false)
    if ! "${apt[@]}" update >"$dir/apt.log" 2>&1 ||
        ! (cd "$dir/debs" && "${apt[@]}" download "$@" >>"$dir/apt.log" 2>&1); then
        tail -n 20 "$dir/apt.log" >&2
        rv_fail "could not fetch $* from Debian $suite (log above)"
        return 1
    fi
    local pkg
    for pkg in "$dir"/debs/*.deb; do dpkg-deb -x "$pkg" "$dir/root" || { rv_fail "dpkg-deb -x $pkg"; return 1; }; done
}

# etcd 3.5 for the shared-pool fault harness (tests/faults.rs), beside Debian 12's 3.4:
# Debian sid's etcd-server, or trixie's if sid has moved past 3.5. Go builds it
# statically, so the binary runs on Debian 12 as it is.
rv_etcd35() {
    local cache=${RV_ETCD35_CACHE:-/var/tmp/rustvlan-etcd35} suite work v
    if [[ ! -x $cache/etcd ]]; then
        rv_need_pkgs ca-certificates || return 1
        for suite in sid trixie; do
            work=$(mktemp -d /tmp/rvetcd.XXXXXX) || return 1
            if rv__fetch_debs "$suite" "$work" etcd-server; then
                v=$("$work/root/usr/bin/etcd" --version 2>&1 | sed -n 's/^etcd Version: //p')
                if [[ $v == 3.5.* ]]; then
                    mkdir -p "$cache" && cp "$work/root/usr/bin/etcd" "$cache/etcd"
                    rm -rf "$work"
                    break
                fi
                rv_log "Debian $suite's etcd-server is $v, not 3.5"
            fi
            rm -rf "$work"
        done
        [[ -x $cache/etcd ]] || { rv_fail "no etcd 3.5 from Debian sid or trixie"; return 1; }
    fi
    export RV_ETCD35=$cache/etcd
    rv_log "etcd 3.5 ready: $("$RV_ETCD35" --version 2>&1 | sed -n 1p)"
}

rv_engine() {
    local engine=${1:?usage: rv_engine 20.10|28}
    case $engine in
    20.10 | 20)
        rv_need_pkgs docker.io || return 1
        export RV_ENGINE=20.10 RV_DOCKER=/usr/bin/docker RV_DOCKERD=/usr/sbin/dockerd RV_ENGINE_PATH=
        ;;
    28)
        local cache=${RV_ENGINE_CACHE:-/var/tmp/rustvlan-docker28}
        rv__engine28_install "$cache" || return 1
        export RV_ENGINE=28 RV_DOCKER=$cache/bin/docker RV_DOCKERD=$cache/bin/dockerd RV_ENGINE_PATH=$cache/bin
        ;;
    *) rv_fail "unknown engine '$engine': 20.10 or 28" || return 1 ;;
    esac
    rv_log "engine $RV_ENGINE: $("$RV_DOCKERD" --version)"
}

# The bridge a private dockerd uses for its default network, named after DIR, with an
# address in 198.18.0.0/15 (benchmarking range) that no other link of the host has.
rv__bridge_name() { echo "rvb-$(printf %s "$1" | md5sum | cut -c1-8)"; }
rv__bridge_up() {
    local br n i ip=(ip ${RV_DOCKERD_NETNS:+-n "$RV_DOCKERD_NETNS"})
    br=$(rv__bridge_name "$1")
    if ! "${ip[@]}" link show "$br" >/dev/null 2>&1; then
        "${ip[@]}" link add "$br" type bridge || rv_fail "cannot make bridge $br" || return 1
    fi
    if [[ -z $("${ip[@]}" -4 -o addr show dev "$br") ]]; then
        n=$((0x$(printf %s "$1" | md5sum | cut -c1-2)))
        for ((i = 0; i < 256; i++, n = (n + 1) % 256)); do
            "${ip[@]}" -4 -o addr show | grep -q " 198\.18\.$n\." || break
        done
        "${ip[@]}" addr add "198.18.$n.1/24" dev "$br" || rv_fail "cannot address bridge $br" || return 1
    fi
    "${ip[@]}" link set "$br" up
    echo "$br"
}

rv__pid_alive() { [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

# One cgroup parent per DIR, so stopping one dockerd can remove it without racing another.
rv__cgroup() { echo "rustvlan-$(printf %s "$1" | md5sum | cut -c1-12)"; }

rv__docker_ok() { timeout 10 "$RV_DOCKER" info >/dev/null 2>&1; }

rv_dockerd_start() {
    local dir=${1:?usage: rv_dockerd_start DIR} t0 deadline bridge
    t0=$(rv__now)
    [[ $RV_ENGINE == 20.10 ]] && { rv_need_pkgs docker.io || return 1; }
    mkdir -p "$dir" && dir=$(realpath "$dir") || rv_fail "cannot create $dir" || return 1
    # The longest socket is DIR/exec/containerd/containerd.sock.ttrpc and sun_path holds
    # 107 bytes; whitespace would break the mountinfo parsing in rv_dockerd_stop.
    ((${#dir} <= 64)) || rv_fail "DIR longer than 64 chars, too long for unix sockets: $dir" || return 1
    [[ $dir != *[[:space:]]* ]] || rv_fail "DIR must not contain whitespace: '$dir'" || return 1
    export DOCKER_HOST=unix://$dir/docker.sock
    if rv__pid_alive "$dir/dockerd.pid" && rv__docker_ok; then
        rv_log "dockerd already running in $dir"
        return 0
    fi
    # A dockerd that was SIGKILLed leaves its pid file, and dockerd refuses to start
    # while that pid is alive: a zombie nobody reaped yet counts.
    # Its containerd dies with it (parent-death signal) and leaves a pid file too, which
    # makes the next dockerd wait for a containerd that is not there.
    local old pidfile
    for pidfile in "$dir/dockerd.pid" "$dir/exec/containerd/containerd.pid"; do
        [[ -s $pidfile ]] || continue
        old=$(cat "$pidfile")
        if ! kill -0 "$old" 2>/dev/null || [[ $(awk '{print $3}' "/proc/$old/stat" 2>/dev/null) == Z ]]; then
            rv_log "removing the stale pid file $pidfile"
            rm -f "$pidfile"
        fi
    done
    mkdir -p "$dir/data" "$dir/exec"
    # Our own config file so /etc/docker/daemon.json cannot leak in; the key path keeps
    # dockerd from writing /etc/docker/key.json.
    printf '{ "deprecated-key-path": "%s/key.json" }\n' "$dir" >"$dir/daemon.json"
    local args=(
        --config-file "$dir/daemon.json"
        --data-root "$dir/data" --exec-root "$dir/exec"
        --pidfile "$dir/dockerd.pid" -H "unix://$dir/docker.sock"
        # Leave the host's firewall, sysctls and bridges alone (and allow several dockerds).
        --iptables=false --ip6tables=false --ip-forward=false --ip-masq=false
        --storage-driver "${RV_STORAGE_DRIVER:-overlay2}"
        # Relative: container cgroups nest under dockerd's own cgroup instead of /docker.
        --cgroup-parent "$(rv__cgroup "$dir")"
    )
    # A bridge of our own, never --bridge=none: that deletes the host's docker0.
    bridge=$(rv__bridge_up "$dir") || return 1
    args+=(--bridge "$bridge")
    # More flags for tests that restart dockerd differently (e.g. --live-restore).
    # shellcheck disable=SC2206
    args+=(${RV_DOCKERD_EXTRA_ARGS:-})
    local launch=()
    if [[ ${RV_DOCKERD_NETNS:-} ]]; then
        # Not `ip netns exec`: it remounts /sys, which hides the cgroup mounts under it.
        # A mount namespace of its own (whose mounts do not propagate back) holds the
        # plugin directory bound over /run/docker/plugins.
        launch=(nsenter "--net=/run/netns/$RV_DOCKERD_NETNS" unshare --mount --propagation slave)
        if [[ ${RV_DOCKERD_PLUGIN_DIR:-} ]]; then
            mkdir -p /run/docker/plugins "$RV_DOCKERD_PLUGIN_DIR"
            # shellcheck disable=SC2016
            launch+=(sh -c 'mount --bind "$0" /run/docker/plugins && exec "$@"' "$(realpath "$RV_DOCKERD_PLUGIN_DIR")")
        fi
    elif [[ ${RV_DOCKERD_PLUGIN_DIR:-} ]]; then
        rv_fail "RV_DOCKERD_PLUGIN_DIR needs RV_DOCKERD_NETNS" || return 1
    fi
    rv_log "starting dockerd $RV_ENGINE in $dir${RV_DOCKERD_NETNS:+ in netns $RV_DOCKERD_NETNS} (log $dir/dockerd.log)"
    # No --containerd: dockerd supervises its own containerd under the exec-root, so the
    # host's /run/containerd/containerd.sock is neither needed nor touched.
    PATH=${RV_ENGINE_PATH:+$RV_ENGINE_PATH:}$PATH setsid "${launch[@]}" "$RV_DOCKERD" "${args[@]}" </dev/null >>"$dir/dockerd.log" 2>&1 &
    deadline=$((SECONDS + ${RV_DOCKERD_TIMEOUT:-60}))
    until rv__docker_ok; do
        if grep -q 'failed to start daemon' "$dir/dockerd.log" || ((SECONDS > deadline)); then
            grep -v module=grpc "$dir/dockerd.log" | tail -n 20 >&2
            rv_fail "dockerd in $dir did not come up (log above)"
            return 1
        fi
        sleep 0.2
    done
    rv_log "dockerd up in $(rv__since "$t0")s; DOCKER_HOST=$DOCKER_HOST"
}

# Managed plugins run under dockerd's containerd too, but in a cgroup named by their id
# (relative to dockerd's) and with their socket dir in the fixed /run/docker/plugins/<id>.
rv__plugin_ids() {
    local d
    for d in "$1"/data/plugins/*; do
        [[ ${d##*/} =~ ^[0-9a-f]{64}$ ]] && echo "${d##*/}"
    done
}

# Our cgroup directories in every hierarchy, deepest first.
rv__cgroup_dirs() {
    local n
    for n in "$(rv__cgroup "$1")" $(rv__plugin_ids "$1"); do
        find /sys/fs/cgroup -maxdepth 6 -depth -type d -path "*/$n*" 2>/dev/null
    done
}

# Processes we started that may outlive dockerd: its containerd and shims name DIR on
# their command line; containers and plugins sit in our cgroups (/proc/PID/root says "/").
rv__dir_pids() {
    local dir=$1 p cmd
    for p in /proc/[0-9]*; do
        cmd=$(tr '\0' ' ' <"$p/cmdline" 2>/dev/null) || continue
        [[ $cmd == *"$dir/"* && ${p#/proc/} != "$$" ]] && echo "${p#/proc/}"
    done
    rv__cgroup_dirs "$dir" | while read -r p; do cat "$p/cgroup.procs" 2>/dev/null; done
}

# A SIGKILLed shim leaves its socket in the host's /run/containerd/s, named after
# sha256(containerd address/namespace/id) (containerd 1.6 runtime/v2/shim).
rv__shim_socket() {
    local a i ns='' id='' addr=''
    mapfile -d '' a <"/proc/$1/cmdline" 2>/dev/null || return 0
    for ((i = 0; i + 1 < ${#a[@]}; i++)); do
        case ${a[i]} in -namespace) ns=${a[i + 1]} ;; -id) id=${a[i + 1]} ;; -address) addr=${a[i + 1]} ;; esac
    done
    [[ $ns && $id && $addr ]] || return 0
    echo "/run/containerd/s/$(printf %s "$addr/$ns/$id" | sha256sum | cut -c1-64)"
}

# Mount points under DIR or our plugins' socket dirs, deepest first.
rv__dir_mounts() {
    local prefixes=("$1/") id
    for id in $(rv__plugin_ids "$1"); do prefixes+=("/run/docker/plugins/$id"); done
    awk -v p="${prefixes[*]}" 'BEGIN { n = split(p, a, " ") }
        { for (i = 1; i <= n; i++) if (index($5, a[i]) == 1) print $5 }' /proc/self/mountinfo | sort -r
}

rv_dockerd_stop() {
    local dir=${1:?usage: rv_dockerd_stop DIR} pid i m id pids=() socks=() ids=()
    # Works on a DIR already deleted too: the leftovers are found by name and cgroup.
    dir=$(realpath -m "$dir")
    if rv__pid_alive "$dir/dockerd.pid"; then
        pid=$(cat "$dir/dockerd.pid")
        rv_log "stopping dockerd $pid in $dir"
        # SIGKILL containers first: busybox as PID 1 ignores SIGTERM, so dockerd's own
        # shutdown would wait 10 s for them.
        mapfile -t ids < <(DOCKER_HOST=unix://$dir/docker.sock timeout 10 "$RV_DOCKER" ps -q 2>/dev/null)
        ((${#ids[@]} == 0)) || DOCKER_HOST=unix://$dir/docker.sock timeout 20 "$RV_DOCKER" kill "${ids[@]}" >/dev/null 2>&1
        kill -TERM "$pid" 2>/dev/null
        for ((i = 0; i < 150; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        if kill -0 "$pid" 2>/dev/null; then
            rv_log "dockerd $pid ignored SIGTERM for 30 s; SIGKILL"
            kill -KILL "$pid" 2>/dev/null
        fi
    fi
    mapfile -t pids < <(rv__dir_pids "$dir" | sort -un)
    if ((${#pids[@]})); then
        rv_log "killing leftover processes of $dir: ${pids[*]}"
        mapfile -t socks < <(for pid in "${pids[@]}"; do rv__shim_socket "$pid"; done)
        kill -KILL "${pids[@]}" 2>/dev/null
        for ((i = 0; i < 50; i++)); do [[ -z $(rv__dir_pids "$dir") ]] && break; sleep 0.1; done
        ((${#socks[@]} == 0)) || rm -f "${socks[@]}"
    fi
    # Lazy, so a busy mount cannot block removing DIR.
    rv__dir_mounts "$dir" | while read -r m; do umount -l "$m" || true; done
    m=$(rv__dir_mounts "$dir")
    [[ -z $m ]] || rv_fail "mounts remain: ${m//$'\n'/ }" || return 1
    # Docker removes each container's cgroup but never the parent; SIGKILL skips even that.
    rv__cgroup_dirs "$dir" | xargs -r rmdir 2>/dev/null
    for id in $(rv__plugin_ids "$dir"); do rm -rf "/run/docker/plugins/$id"; done
    rm -f "$dir/dockerd.pid"
    ip ${RV_DOCKERD_NETNS:+-n "$RV_DOCKERD_NETNS"} link del "$(rv__bridge_name "$dir")" 2>/dev/null
    [[ ${DOCKER_HOST:-} != "unix://$dir/docker.sock" ]] || unset DOCKER_HOST
    rv_log "dockerd in $dir stopped"
}

# rv_test_image NAME [BINARY...]: busybox, plus host binaries with their libraries.
rv_test_image() {
    local name=${1:?usage: rv_test_image NAME [BINARY...]} t0 root b lib
    shift
    t0=$(rv__now)
    if "$RV_DOCKER" image inspect "$name" >/dev/null 2>&1; then
        rv_log "image $name already present"
        return 0
    fi
    rv_need_pkgs busybox-static || return 1
    rv_log "building image $name from busybox-static"
    root=$(mktemp -d) || return 1
    mkdir -p "$root"/{bin,etc,proc,sys,dev,tmp,root,usr/share/udhcpc}
    ln -s bin "$root/sbin"
    ln -s ../bin "$root/usr/bin"
    ln -s ../bin "$root/usr/sbin"
    cp /bin/busybox "$root/bin/busybox"
    # Relative symlinks by hand: `busybox --install -s` would link to the host path.
    local a
    for a in $(/bin/busybox --list); do [[ -e $root/bin/$a ]] || ln -s busybox "$root/bin/$a"; done
    # udhcpc does nothing useful without a script that applies the lease.
    cat >"$root/usr/share/udhcpc/default.script" <<'EOF'
#!/bin/sh
case "$1" in
bound|renew)
    ip addr flush dev "$interface"
    ip addr add "$ip/${mask:-24}" dev "$interface"
    [ -n "$router" ] && ip route replace default via "${router%% *}" dev "$interface"
    ;;
deconfig) ip addr flush dev "$interface" ;;
esac
exit 0
EOF
    chmod 755 "$root/usr/share/udhcpc/default.script"
    for b in "$@"; do
        cp -L "$b" "$root/bin/" || { rm -rf "$root"; rv_fail "cannot copy $b"; return 1; }
        for lib in $(ldd "$b" | awk '/=> \//{print $3} /^\t\/lib/{print $1}'); do
            cp -L --parents "$lib" "$root/"
        done
    done
    echo 'root:x:0:0:root:/root:/bin/sh' >"$root/etc/passwd"
    echo 'root:x:0:' >"$root/etc/group"
    if ! tar -C "$root" --numeric-owner --owner=0 --group=0 -c . |
        "$RV_DOCKER" import -c 'ENV PATH=/bin' -c 'CMD ["sh"]' - "$name" >/dev/null; then
        rm -rf "$root"
        rv_fail "docker import of $name failed"
        return 1
    fi
    rm -rf "$root"
    "$RV_DOCKER" run --rm --net none "$name" true || rv_fail "image $name built but 'docker run $name true' fails" || return 1
    rv_log "image $name built and checked in $(rv__since "$t0")s"
}

rv__registry_ok() { curl -fsS -o /dev/null --max-time 2 "http://$RV_REGISTRY_ADDR/v2/" 2>/dev/null; }

rv_registry_start() {
    local dir=${1:?usage: rv_registry_start DIR} i
    rv_need_pkgs docker-registry curl || return 1
    mkdir -p "$dir/storage" && dir=$(realpath "$dir") || rv_fail "cannot create $dir" || return 1
    if rv__pid_alive "$dir/registry.pid" && rv__registry_ok; then
        rv_log "registry already running from $dir"
        return 0
    fi
    rv__registry_ok && rv_fail "something else already answers on $RV_REGISTRY_ADDR" && return 1
    # Debian's /etc/docker/registry/config.yml turns on htpasswd auth: use our own.
    cat >"$dir/config.yml" <<EOF
version: 0.1
log:
  level: info
storage:
  filesystem:
    rootdirectory: $dir/storage
  delete:
    enabled: true
http:
  addr: $RV_REGISTRY_ADDR
EOF
    rv_log "starting docker-registry on $RV_REGISTRY_ADDR (log $dir/registry.log)"
    # sh writes its own pid then execs, so the pid file is right whether or not setsid forks.
    # shellcheck disable=SC2016
    setsid sh -c 'echo $$ >"$1"; shift; exec "$@"' sh "$dir/registry.pid" \
        /usr/bin/docker-registry serve "$dir/config.yml" </dev/null >>"$dir/registry.log" 2>&1 &
    for ((i = 0; i < 100; i++)); do
        rv__registry_ok && { rv_log "registry up"; return 0; }
        # e.g. "address already in use" from a non-registry listener on the port.
        ((i < 5)) || rv__pid_alive "$dir/registry.pid" || break
        sleep 0.1
    done
    tail -n 20 "$dir/registry.log" >&2
    rv_fail "registry did not answer on http://$RV_REGISTRY_ADDR/v2/ (log above)"
}

rv_registry_stop() {
    local dir=${1:?usage: rv_registry_stop DIR} pid i
    rv__pid_alive "$dir/registry.pid" || { rm -f "$dir/registry.pid"; return 0; }
    pid=$(cat "$dir/registry.pid")
    rv_log "stopping registry $pid"
    kill -TERM "$pid"
    for ((i = 0; i < 50; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
        rv_log "registry $pid ignored SIGTERM for 5 s; SIGKILL"
        kill -KILL "$pid"
    fi
    rm -f "$dir/registry.pid"
}
