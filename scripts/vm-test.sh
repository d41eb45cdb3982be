#!/usr/bin/env bash
# vm-test.sh - rustvlan's real-kernel rig: runs one command inside a throw-away QEMU VM
# that boots a stock Debian kernel (linux-image-amd64 from apt). This machine's kernel
# has no ipvlan, 802.1Q or dummy links; the Debian kernel users run has all three, so
# rustvlan's tests for them run here. Exits with the command's exit status.
#
#   scripts/vm-test.sh [options] [--] COMMAND [ARGS...]
#   scripts/vm-test.sh --selftest
#   CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER="$PWD/scripts/vm-test.sh --" cargo test --test vm
#
# Options:
#   -m MB            guest memory in MiB                   (default 1024, $VMTEST_MEM)
#   -c N             guest vCPUs                           (default 2,    $VMTEST_CPUS)
#   -t SECONDS       wall-clock limit for the whole VM run (default 900,  $VMTEST_TIMEOUT)
#   -C DIR           directory shared read-write into the guest at the same
#                    absolute path (default: the git work tree around $PWD, else
#                    $PWD). COMMAND starts in $PWD if that is inside DIR, else in DIR.
#   -S DIR           extra directory shared read-only at the same path (repeatable)
#   -e NAME[=VALUE]  pass an environment variable to COMMAND (repeatable);
#                    RUST_*, CARGO_* and RUSTVLAN_* variables are passed automatically
#   --copy PATH      copy a host file/dir into the guest (same path, guest-private
#                    copy) - for kernels without 9p such as linux-image-cloud-amd64
#   --bare           do not chroot into the host's /usr + /etc; run COMMAND in
#                    the initramfs (busybox, host's bash + iproute2 'ip', glibc,
#                    libgcc_s, libm). Use bash, not sh: busybox sh runs its own
#                    applets (e.g. a limited 'ip') in preference to PATH.
#   --accel A        kvm | tcg | auto                       (default auto, $VMTEST_ACCEL)
#   -v               kernel console live on stdout (boot messages, timings)
#   --build-only     only download / build the cached kernel + initramfs
#   --selftest       run the built-in ipvlan / vlan / dummy / macvlan self-test
#
# Default mode ("hostfs"): the guest mounts the host's /usr and /etc read-only
# over 9p and chroots into them (merged-/usr layout), so every binary installed
# on the host - bash, iproute2, dynamically linked glibc test binaries - runs
# unchanged in the guest. /tmp, /run, /root, /var are guest-private tmpfs.
# The guest has no network device at all (-nodefaults); only loopback.
# COMMAND's stdin is /dev/null; its stdout+stderr arrive on stdout (serial port,
# ~150 KB/s under TCG: write big logs to a file in the shared directory).
# The guest kernel has ipvlan, 8021q, dummy, macvlan, veth, bridge, vxlan, tun
# loaded; other modules autoload (or add them with VMTEST_MODULES). IN_VMTEST=1 is
# set for COMMAND.
#
# The exit status is the guest command's, read from a serial line of its own; a VM
# that does not boot or report one fails with 125 (124: timeout), never 0.
#
# Environment: VMTEST_CACHE (default /var/tmp/rustvlan-vm), VMTEST_KERNEL_PKG (default
#   linux-image-amd64; e.g. linux-image-6.1.0-56-amd64 to pin), VMTEST_MODULES (extra
#   kernel modules to preload, space separated). Needs root (apt-get install /
#   download) the first time; afterwards only qemu + the cache are used. Exit codes
#   besides COMMAND's: 124 timeout, 125 VM/infrastructure failure, 2 usage.
#   VMTEST_KEEP=1 keeps the run directory.

set -euo pipefail

MEM=${VMTEST_MEM:-1024}
CPUS=${VMTEST_CPUS:-2}
TIMEOUT=${VMTEST_TIMEOUT:-900}
ACCEL=${VMTEST_ACCEL:-auto}
CACHE=${VMTEST_CACHE:-/var/tmp/rustvlan-vm}
KPKG=${VMTEST_KERNEL_PKG:-linux-image-amd64}
WORKDIR=
MODE=hostfs
VERBOSE=0
BUILD_ONLY=0
SELFTEST=0
RO_SHARES=()
ENVS=()
COPIES=()
# modules preloaded in the guest (their dependencies are added automatically)
MODULES="8021q ipvlan ipvtap macvlan macvtap dummy veth bridge vxlan tun \
9p 9pnet_virtio virtio_pci ${VMTEST_MODULES:-}"

log() { printf 'vm-test: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 125; }
usage() { sed -n '2,/^$/s/^# \{0,1\}//p' "$0" >&2; exit 2; }

while [ $# -gt 0 ]; do
  case $1 in
    -m) MEM=$2; shift 2;;
    -c) CPUS=$2; shift 2;;
    -t) TIMEOUT=$2; shift 2;;
    -C) WORKDIR=$(cd "$2" && pwd -P); shift 2;;
    -S) RO_SHARES+=("$(cd "$2" && pwd -P)"); shift 2;;
    -e) ENVS+=("$2"); shift 2;;
    --copy) COPIES+=("$(readlink -f "$2")"); shift 2;;
    --bare) MODE=bare; shift;;
    --accel) ACCEL=$2; shift 2;;
    -v) VERBOSE=1; shift;;
    --build-only) BUILD_ONLY=1; shift;;
    --selftest) SELFTEST=1; shift;;
    -h|--help) usage;;
    --) shift; break;;
    -*) log "unknown option $1"; usage;;
    *) break;;
  esac
done
[ $# -gt 0 ] || [ $SELFTEST = 1 ] || [ $BUILD_ONLY = 1 ] || usage

CWD=$(pwd -P)
[ -n "$WORKDIR" ] || WORKDIR=$(git -C "$CWD" rev-parse --show-toplevel 2>/dev/null || echo "$CWD")
case $CWD/ in "$WORKDIR"/*) ;; *) CWD=$WORKDIR;; esac

# ---------------------------------------------------------------- host tools
need_pkgs=()
command -v qemu-system-x86_64 >/dev/null || need_pkgs+=(qemu-system-x86)
bb=$(command -v busybox || true)
if [ -z "$bb" ] || ldd "$bb" >/dev/null 2>&1; then
  need_pkgs+=(busybox-static)      # the initramfs needs a *static* busybox
fi
if [ ${#need_pkgs[@]} -gt 0 ]; then
  log "installing ${need_pkgs[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y --no-install-recommends "${need_pkgs[@]}" >/dev/null 2>&1 || {
    apt-get update >/dev/null 2>&1 || true
    apt-get install -y --no-install-recommends "${need_pkgs[@]}" >/dev/null || die "apt-get install ${need_pkgs[*]} failed"; }
fi
BUSYBOX=$(command -v busybox)

# ---------------------------------------------------------------- kernel
# resolve the meta package (linux-image-amd64) to the real image package + version;
# the answer is cached until apt's lists change (apt-cache costs ~2 s per call set)
resolve_kernel() {
  local p=$KPKG dep ver
  dep=$(apt-cache depends "$p" 2>/dev/null | awk '$1=="Depends:" && $2 ~ /^linux-image-[0-9]/ {print $2; exit}')
  [ -n "$dep" ] && p=$dep
  ver=$(apt-cache policy "$p" 2>/dev/null | awk '/Candidate:/ {print $2}')
  [ -n "$ver" ] && [ "$ver" != "(none)" ] || return 1
  echo "$p $ver"
}
mkdir -p "$CACHE"
resolved=$CACHE/resolved-$KPKG
if ! { [ -s "$resolved" ] && [ "$resolved" -nt /var/lib/apt/lists ] && read -r KIMG KVER_PKG < "$resolved" \
       && [ -f "$CACHE/$KIMG-$KVER_PKG/ok" ]; }; then
  r=$(resolve_kernel) || { apt-get update >/dev/null 2>&1 || true; r=$(resolve_kernel); } \
    || die "cannot resolve kernel package $KPKG (apt-cache)"
  read -r KIMG KVER_PKG <<<"$r"
  echo "$r" > "$resolved"
fi
KDIR=$CACHE/$KIMG-$KVER_PKG
exec 9>"$CACHE/.lock"; flock 9     # concurrent runs share the cache safely

extract_vmlinux() {  # bzImage out: find the compressed payload and unpack it
  local magic cmd off
  for magic in $'\xfd7zXZ:xz -dc' $'\x28\xb5\x2f\xfd:zstd -dcq' $'\x02\x21\x4c\x18:lz4 -dc' \
               $'\x1f\x8b\x08:gzip -dc'; do
    cmd=${magic#*:}; command -v "${cmd%% *}" >/dev/null || continue
    for off in $(LC_ALL=C grep -aboF "${magic%%:*}" "$1" 2>/dev/null | cut -d: -f1 | head -5); do
      tail -c +$((off + 1)) "$1" | $cmd > "$2" 2>/dev/null
      [ "$(head -c 4 "$2" | od -An -c | tr -d ' ')" = '177ELF' ] && return 0
    done
  done
  rm -f "$2"; return 1
}
if [ "$(cat "$KDIR/ok" 2>/dev/null)" != "$MODULES" ]; then   # (re)build when the module list changes
  log "fetching $KIMG $KVER_PKG"
  tmp=$(mktemp -d "$CACHE/tmp.XXXXXX")
  if ! ( cd "$tmp" && apt-get download "$KIMG=$KVER_PKG" >/dev/null 2>&1 ); then
    apt-get update >/dev/null 2>&1 || true       # stale lists: the mirror moved on
    r=$(resolve_kernel) && read -r KIMG KVER_PKG <<<"$r" && echo "$r" > "$resolved" && KDIR=$CACHE/$KIMG-$KVER_PKG
    ( cd "$tmp" && apt-get download "$KIMG=$KVER_PKG" >/dev/null 2>&1 ) || { rm -rf "$tmp"; die "apt-get download $KIMG failed"; }
  fi
  dpkg -x "$tmp"/*.deb "$tmp/x"
  kv=$(ls "$tmp/x/lib/modules" | head -1)
  "$BUSYBOX" depmod -b "$tmp/x" "$kv"
  # dependency closure of $MODULES, from modules.dep
  closure=$(awk -v want="$MODULES" '
    function base(p) { sub(/.*\//, "", p); sub(/\.ko(\.[a-z]+)?$/, "", p); gsub(/-/, "_", p); return p }
    function add(m,   i, n, d) { if (m in seen) return; seen[m]=1
      if (!(m in path)) { print "MISSING " m; return }
      n = split(deps[m], d, " "); for (i = 1; i <= n; i++) add(base(d[i])); print path[m] }
    { f=$1; sub(/:$/, "", f); m=base(f); path[m]=f; $1=""; deps[m]=$0 }
    END { n = split(want, w, " "); for (i = 1; i <= n; i++) { x=w[i]; gsub(/-/, "_", x); add(x) } }
  ' "$tmp/x/lib/modules/$kv/modules.dep")
  if grep -q '^MISSING' <<<"$closure"; then
    log "warning: modules not in $KIMG: $(grep '^MISSING' <<<"$closure" | cut -d' ' -f2 | tr '\n' ' ')"
  fi
  rm -rf "$KDIR.new"; mkdir -p "$KDIR.new/modules/lib/modules/$kv"
  # Boot the uncompressed ELF vmlinux (PVH entry): under TCG this saves ~3 s per
  # run that the bzImage stub would spend decompressing itself.
  extract_vmlinux "$tmp/x/boot/vmlinuz-$kv" "$KDIR.new/vmlinux" \
    || { log "cannot extract vmlinux, booting bzImage (slower)"; cp "$tmp/x/boot/vmlinuz-$kv" "$KDIR.new/vmlinuz"; }
  cp "$tmp/x/boot/config-$kv" "$KDIR.new/config"
  for f in $(grep -v '^MISSING' <<<"$closure"); do
    mkdir -p "$KDIR.new/modules/lib/modules/$kv/$(dirname "$f")"
    cp "$tmp/x/lib/modules/$kv/$f" "$KDIR.new/modules/lib/modules/$kv/$f"
  done
  cp "$tmp/x/lib/modules/$kv"/modules.{builtin,order} "$KDIR.new/modules/lib/modules/$kv/" 2>/dev/null || true
  "$BUSYBOX" depmod -b "$KDIR.new/modules" "$kv"
  grep -v '^MISSING' <<<"$closure" | sed 's,.*/,,; s,\.ko.*,,' > "$KDIR.new/modules.load"
  echo "$kv" > "$KDIR.new/kver"
  rm -rf "$tmp" "$KDIR"; mv "$KDIR.new" "$KDIR"; printf '%s\n' "$MODULES" > "$KDIR/ok"
fi

# ---------------------------------------------------------------- initramfs
read -r -d '' GUEST_INIT <<'INIT' || true
#!/bin/sh
# /init of the vmtest initramfs (busybox sh, PID 1)
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
mkdir -p /dev/pts /dev/shm /dev/mqueue
mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm; mount -t tmpfs tmpfs /run; chmod 1777 /tmp
mount -t cgroup2 cgroup2 /sys/fs/cgroup 2>/dev/null
mount -t bpf bpf /sys/fs/bpf 2>/dev/null
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
OUT=/dev/ttyS0   # the command's stdout+stderr; kernel/init messages go to the console (ttyS2)
stty -F $OUT -onlcr 2>/dev/null; stty -onlcr 2>/dev/null    # no \r\n
finish() { echo "VMTEST_RC=$1" > /dev/ttyS1; echo "VMTEST_RC=$1"; sync; poweroff -f; sleep 10; }
. /vmtest/conf
hostname vmtest
grep -qx dummy /etc/vmtest-modules && modprobe dummy numdummies=0   # no auto-created dummy0
modprobe -a $(cat /etc/vmtest-modules) || echo "vmtest: some modules failed to load"
ip link set lo up
mount9p() {  # tag dir opts
  mkdir -p "$2" && mount -t 9p -o "trans=virtio,version=9p2000.L,msize=262144,$3" "$1" "$2" \
    || { echo "vmtest: cannot mount 9p $1 on $2"; finish 125; }
}
R=
if [ "$VMTEST_MODE" = hostfs ]; then
  R=/hostroot
  mkdir -p $R && mount -t tmpfs -o mode=755 tmpfs $R
  for d in proc sys dev tmp run root var/tmp var/lib var/cache var/log home usr etc; do mkdir -p $R/$d; done
  chmod 1777 $R/tmp $R/var/tmp
  ln -s /run $R/var/run; ln -s /run/lock $R/var/lock
  for l in bin sbin lib lib64 lib32 libx32; do
    case " $VMTEST_HOST_LINKS " in *" $l "*) ln -s usr/$l $R/$l;; esac
  done
  mount9p hostusr $R/usr ro,cache=loose
  mount9p hostetc $R/etc ro,cache=loose
  mount --rbind /proc $R/proc; mount --rbind /sys $R/sys; mount --rbind /dev $R/dev
  mount -t tmpfs -o mode=1777 tmpfs $R/tmp; mount -t tmpfs -o mode=755 tmpfs $R/run
  mkdir -p $R/run/lock
fi
i=0
for s in $VMTEST_RO_SHARES; do mount9p ro$i "$R$s" ro,cache=loose; i=$((i+1)); done
[ -d /vmtest/copy ] && cp -a /vmtest/copy/. "$R/"     # --copy'd files
if [ -d /sys/module/9pnet_virtio ]; then
  mount9p work "$R$VMTEST_WORKDIR" cache=mmap
else   # kernel without 9p (cloud flavour): only --copy'd files are there
  echo "vmtest: no 9p in this kernel, $VMTEST_WORKDIR is not shared"; mkdir -p "$R$VMTEST_WORKDIR"
fi
mkdir -p $R/run/vmtest && cp /vmtest/env /vmtest/cmd $R/run/vmtest/
if [ -n "$R" ]; then   # busybox applets as a fallback at the end of PATH (ping, ...)
  mkdir -p $R/run/vmtest/bin && mount --bind /bin $R/run/vmtest/bin
fi
[ "$VMTEST_VERBOSE" = 1 ] && echo "vmtest: kernel $(uname -r), mode $VMTEST_MODE, up $(cut -d' ' -f1 /proc/uptime)s"
SH=/bin/sh; [ -x $R/bin/bash ] && SH=/bin/bash
if [ -n "$R" ]; then
  chroot $R $SH -c '. /run/vmtest/env; cd "$VMTEST_CWD" && exec '$SH' /run/vmtest/cmd' </dev/null >$OUT 2>&1
else
  $SH -c '. /run/vmtest/env; cd "$VMTEST_CWD" && exec '$SH' /run/vmtest/cmd' </dev/null >$OUT 2>&1
fi
rc=$?
[ "$VMTEST_VERBOSE" = 1 ] && echo "vmtest: command done, up $(cut -d' ' -f1 /proc/uptime)s"
finish $rc
INIT

build_initramfs() {  # $1 = output file
  local st; st=$(mktemp -d "$CACHE/tmp.XXXXXX")
  mkdir -p "$st"/{bin,sbin,etc,proc,sys,dev,tmp,run,root,vmtest,usr/bin,usr/sbin,lib64,lib/x86_64-linux-gnu}
  cp "$BUSYBOX" "$st/bin/busybox"
  for a in $("$BUSYBOX" --list); do [ -e "$st/bin/$a" ] || ln -s busybox "$st/bin/$a"; done
  # iproute2's ip (busybox ip cannot create ipvlan/macvlan/netns) and bash (busybox
  # sh would run its own 'ip' applet in preference to PATH), with the glibc libs
  # they need, plus libgcc_s/libm so that simple glibc binaries run in --bare mode
  copy_bin() {  # host-binary dest
    local lib
    cp -L "$1" "$st$2"
    for lib in $(ldd "$1" | awk '/=> \//{print $3} /^\t\/lib/{print $1}'); do
      case $lib in /lib64/*) cp -L "$lib" "$st/lib64/";; *) cp -L "$lib" "$st/lib/x86_64-linux-gnu/";; esac
    done
  }
  local b
  b=$(command -v ip || true);   [ -n "$b" ] && ldd "$b" >/dev/null 2>&1 && { rm -f "$st/bin/ip"; copy_bin "$b" /sbin/ip; }
  b=$(command -v bash || true); [ -n "$b" ] && ldd "$b" >/dev/null 2>&1 && copy_bin "$b" /bin/bash
  for b in /lib/x86_64-linux-gnu/libgcc_s.so.1 /lib/x86_64-linux-gnu/libm.so.6; do
    [ -e "$b" ] && cp -L "$b" "$st/lib/x86_64-linux-gnu/"
  done
  [ -e "$st/lib64/ld-linux-x86-64.so.2" ] || cp -L /lib64/ld-linux-x86-64.so.2 "$st/lib64/" 2>/dev/null || true
  cp -a "$KDIR/modules/lib/modules" "$st/lib/"
  cp "$KDIR/modules.load" "$st/etc/vmtest-modules"
  printf 'root:x:0:0:root:/root:/bin/sh\n' > "$st/etc/passwd"
  printf 'root:x:0:\ntty:x:5:\n' > "$st/etc/group"
  printf '%s\n' "$GUEST_INIT" > "$st/init"; chmod 755 "$st/init"
  (cd "$st" && find . | LC_ALL=C sort | "$BUSYBOX" cpio -o -H newc 2>/dev/null) > "$1.tmp"  # uncompressed: faster under TCG
  mv "$1.tmp" "$1"; rm -rf "$st"
}
key=$( { printf '%s\n' "$GUEST_INIT" "$MODULES"; declare -f build_initramfs; cat "$KDIR/modules.load"
         for b in "$BUSYBOX" "$(command -v ip)" "$(command -v bash)"; do [ -e "$b" ] && sha256sum "$(readlink -f "$b")"; done
       } | sha256sum | cut -c1-16)
INITRD=$KDIR/initramfs-$key.cpio
[ -f "$INITRD" ] || { log "building initramfs"; build_initramfs "$INITRD"; }
flock -u 9
KERNEL=$KDIR/vmlinux; [ -f "$KERNEL" ] || KERNEL=$KDIR/vmlinuz
if [ $BUILD_ONLY = 1 ]; then log "ready: $KERNEL $INITRD"; exit 0; fi

# ---------------------------------------------------------------- self-test
if [ $SELFTEST = 1 ]; then
  set -- bash -c '
set -e
echo "== kernel $(uname -r)"
trap "echo VMTEST_SELFTEST_FAIL" EXIT
ip link add dummy0 type dummy; ip link set dummy0 up
ip link add link dummy0 name dummy0.10 type vlan id 10; ip link set dummy0.10 up
ip -d link show dummy0.10 | grep -q "vlan protocol 802.1Q id 10"
for mode in l2 l3 l3s; do
  ip link add link dummy0 name ipv$mode type ipvlan mode $mode
  ip -d link show ipv$mode | grep -q "ipvlan  mode $mode"
  ip link del ipv$mode
done
ip link add link dummy0.10 name ipvv type ipvlan mode l2; ip link del ipvv
ip link add dummy1 type dummy; ip link set dummy1 up   # macvlan and ipvlan cannot share a parent
ip link add link dummy1 name mv0 type macvlan mode bridge; ip link del mv0
ip netns add ns1; ip netns add ns2
# ipvlan l2: two children of dummy0 in two namespaces, same subnet
ip link add link dummy0 name ia type ipvlan mode l2; ip link add link dummy0 name ib type ipvlan mode l2
ip link set ia netns ns1; ip link set ib netns ns2
ip -n ns1 addr add 10.200.1.1/24 dev ia; ip -n ns1 link set ia up; ip -n ns1 link set lo up
ip -n ns2 addr add 10.200.1.2/24 dev ib; ip -n ns2 link set ib up; ip -n ns2 link set lo up
ip netns exec ns1 ping -c 1 -W 3 10.200.1.2
# ipvlan l3: different subnets, routed via device
ip link add link dummy0.10 name ja type ipvlan mode l3; ip link add link dummy0.10 name jb type ipvlan mode l3
ip link set ja netns ns1; ip link set jb netns ns2
ip -n ns1 addr add 10.201.1.1/24 dev ja; ip -n ns1 link set ja up; ip -n ns1 route add 10.202.1.0/24 dev ja
ip -n ns2 addr add 10.202.1.1/24 dev jb; ip -n ns2 link set jb up; ip -n ns2 route add 10.201.1.0/24 dev jb
ip netns exec ns1 ping -c 1 -W 3 10.202.1.1
# ipvlan l3s
ip link add link dummy0 name ka type ipvlan mode l3s; ip link add link dummy0 name kb type ipvlan mode l3s
ip link set ka netns ns1; ip link set kb netns ns2
ip -n ns1 addr add 10.203.1.1/24 dev ka; ip -n ns1 link set ka up; ip -n ns1 route add 10.204.1.0/24 dev ka
ip -n ns2 addr add 10.204.1.1/24 dev kb; ip -n ns2 link set kb up; ip -n ns2 route add 10.203.1.0/24 dev kb
ip netns exec ns1 ping -c 1 -W 3 10.204.1.1
# macvlan bridge mode between namespaces
ip link add link dummy1 name mva type macvlan mode bridge; ip link add link dummy1 name mvb type macvlan mode bridge
ip link set dev mva netns ns1; ip link set dev mvb netns ns2
ip -n ns1 addr add 10.205.1.1/24 dev mva; ip -n ns1 link set mva up
ip -n ns2 addr add 10.205.1.2/24 dev mvb; ip -n ns2 link set mvb up
ip netns exec ns1 ping -c 1 -W 3 10.205.1.2
# unshare / nsenter
unshare -n sh -c "ip link set lo up; ping -c 1 -W 1 127.0.0.1 >/dev/null"
ip netns del ns1; ip netns del ns2
trap - EXIT; echo VMTEST_SELFTEST_PASS
'
fi

# ---------------------------------------------------------------- run
[ -d "$WORKDIR" ] || die "no such directory $WORKDIR"
run=$(mktemp -d "${TMPDIR:-/tmp}/vmtest-run.XXXXXX")
[ -n "${VMTEST_KEEP:-}" ] || trap 'rm -rf "$run"' EXIT
mkdir -p "$run/root/vmtest"
links=""
for l in bin sbin lib lib64 lib32 libx32; do
  [ "$(readlink "/$l" 2>/dev/null)" = "usr/$l" ] && links="$links $l"
done
case " $links " in *" bin "*" lib "*) ;; *)
  [ $MODE = hostfs ] && die "hostfs mode needs a merged-/usr host (/bin, /lib -> usr/...); use --bare";;
esac
{
  printf 'VMTEST_MODE=%q\nVMTEST_WORKDIR=%q\nVMTEST_VERBOSE=%q\n' "$MODE" "$WORKDIR" "$VERBOSE"
  printf 'VMTEST_RO_SHARES=%q\nVMTEST_HOST_LINKS=%q\n' "${RO_SHARES[*]:-}" "$links"
} > "$run/root/vmtest/conf"
{
  printf 'export HOME=/root TERM=dumb LANG=C.UTF-8 PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:/run/vmtest/bin\n'
  printf 'export VMTEST_WORKDIR=%q VMTEST_CWD=%q IN_VMTEST=1\n' "$WORKDIR" "$CWD"
  for e in $(compgen -e | grep -E '^(RUST|CARGO|RUSTVLAN)_') "${ENVS[@]+"${ENVS[@]}"}"; do
    case $e in
      *=*) printf 'export %s=%q\n' "${e%%=*}" "${e#*=}";;
      *) [ -n "${!e+x}" ] && printf 'export %s=%q\n' "$e" "${!e}";;
    esac
  done
} > "$run/root/vmtest/env"
printf '%q ' "$@" > "$run/root/vmtest/cmd"; echo >> "$run/root/vmtest/cmd"
for c in "${COPIES[@]+"${COPIES[@]}"}"; do mkdir -p "$run/root/vmtest/copy"; tar -C / -cf - "${c#/}" | tar -C "$run/root/vmtest/copy" -xf -; done
(cd "$run/root" && find . | "$BUSYBOX" cpio -o -H newc 2>/dev/null) > "$run/extra.cpio"
cat "$INITRD" "$run/extra.cpio" > "$run/initrd"   # the kernel unpacks both archives

if [ "$ACCEL" = auto ]; then
  ACCEL=tcg
  # a real KVM host (kvm_intel / kvm_amd); KVM on a PVM host cannot boot a stock kernel
  if [ -w /dev/kvm ] && { [ -d /sys/module/kvm_intel ] || [ -d /sys/module/kvm_amd ]; } \
     && ! [ -d /sys/module/kvm_pvm ]; then ACCEL=kvm; fi
fi
case $ACCEL in
  kvm) accel_args=(-accel kvm -cpu host);;
  tcg) accel_args=(-accel tcg,thread=multi -cpu max);;
  *) die "bad --accel $ACCEL";;
esac
share_args=(-virtfs "local,path=$WORKDIR,mount_tag=work,security_model=none,multidevs=remap")
if [ $MODE = hostfs ]; then
  share_args+=(-virtfs "local,path=/usr,mount_tag=hostusr,security_model=none,readonly=on,multidevs=remap"
               -virtfs "local,path=/etc,mount_tag=hostetc,security_model=none,readonly=on,multidevs=remap")
fi
i=0
for s in "${RO_SHARES[@]+"${RO_SHARES[@]}"}"; do
  share_args+=(-virtfs "local,path=$s,mount_tag=ro$i,security_model=none,readonly=on,multidevs=remap"); i=$((i+1))
done
# ttyS0: the command's output -> stdout; ttyS1: exit status; ttyS2: kernel console
# (a file, shown when the VM fails; with -v the kernel console shares ttyS0, live)
kargs="panic=-1 oops=panic rdinit=/init mitigations=off"
if [ $VERBOSE = 1 ]; then kargs="$kargs console=ttyS0"; else kargs="$kargs console=ttyS2 loglevel=4"; fi

: > "$run/status"
start=$(date +%s.%N)
set +e
timeout -k 10 "$TIMEOUT" qemu-system-x86_64 -nodefaults -no-user-config -display none -monitor none \
  "${accel_args[@]}" -m "$MEM" -smp "$CPUS" -no-reboot \
  -kernel "$KERNEL" -initrd "$run/initrd" -append "$kargs" \
  -serial stdio -serial "file:$run/status" -serial "file:$run/console" \
  "${share_args[@]}" </dev/null
qrc=$?
set -e
elapsed=$(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN{printf "%.1f", e-s}')
rc=$(sed -n 's/^VMTEST_RC=\([0-9][0-9]*\).*/\1/p' "$run/status" | tail -1)
show_console() { log "last lines of the guest's kernel console:"; tr -d '\r' < "$run/console" | tail -n 40 | sed 's/^/  | /' >&2; }
if [ $qrc = 124 ] || [ $qrc = 137 ]; then show_console; log "timeout after ${TIMEOUT}s ($ACCEL)"; exit 124; fi
[ -n "$rc" ] || { show_console; die "VM ended without reporting a status (qemu rc $qrc, ${elapsed}s, $ACCEL)"; }
[ "$rc" != 125 ] || show_console
log "guest command exited $rc (${elapsed}s, $ACCEL, ${MEM}M, $CPUS vCPU, $KIMG $KVER_PKG)"
exit "$rc"
