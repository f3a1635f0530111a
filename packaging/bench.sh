#!/usr/bin/env bash
# keyward overhead, measured side by side: watched (hook + daemon) against
# unwatched (same container, no hook, no daemon), alternating A B A B.
#
#   bash packaging/bench.sh       (as root)
#
# Knobs (environment): ROUNDS=5 (per arm) EXEC_ROUNDS=$ROUNDS (rounds of the
# exec workloads) EXECS=2000 CATS=1000 FILES=10000 OPENS=5000
# STARTS=20 (start pairs per round: ROUNDS x STARTS pairs) CONTAINERS=50 (kept alive
# for the RSS figure) CYCLES=200 (start/stop cycles for the leak check)
# HOST_REPS=5 (host open loops per round) REPS=3 (each workload, per bench
# container) CATCH=300 (runs per exec-path catch-rate case; 0 skips them)
# KEYWARD=/path/to/keyward (skip `packaging/build-release.sh`) KEEP=1 (keep the
# work dir, daemon log included)
# BENCH_TIMEOUT=3600 (seconds for the whole run).
#
# What it does, all under `timeout`, on loopback only, with no fanotify
# marks of its own (the daemon marks each registered container, nothing
# else):
#   1. builds keyward (release) and a busybox-static (every applet a
#      link in /bin) + GNU tar/gzip/zip/7z/xz/bzip2/cpio/date rootfs (ldd
#      libraries copied; those the host lacks are left out), plus a tiny static C helper
#      (`kwb`: monotonic clock, open(2) latency percentiles);
#   2. starts its own daemon with a private socket, runtime dir and alert
#      file under a temp dir, syslog off; stops it by pid;
#   3. A rounds: daemon up, hook in config.json; B rounds: daemon down, no
#      hook. Each round runs one bench container (REPS times: exec storm, tar over
#      FILES files, OPENS opens of /etc/passwd by the shell and by cat, open
#      latency percentiles; then REPS times FILES small files written and
#      closed, before and after a process in it read a credential and stayed
#      alive, which arms keyward's close-after-write mark on the container;
#      wall time and the writing shell's own on-CPU time, from schedstat)
#      and HOST_REPS host open loops;
#   4. container starts: ROUNDS x STARTS pairs, one start with the hook
#      and one without, daemon up, the order swapped every pair;
#   5. exec workloads in that image on an overlay, one detached container
#      per workload, told to start through a FIFO: the busybox storm, the
#      busybox cat loop, a GNU true storm; arms A (watched), B and C (both
#      unwatched: B against C is the noise floor of the same run), ROUNDS
#      each, the order turned every round. Per workload: wall time, the
#      container cgroup's CPU time, and in A the daemon's CPU time (all
#      threads, and the exec thread alone) per exec and its exec events;
#   6. exec-path catch rate (CATCH runs a case, file rule off, on an overlay);
#   7. memory: daemon VmRSS with 0 and CONTAINERS live containers (own
#      overlay rootfs each when overlayfs works), and before/after CYCLES
#      start/stop cycles;
#   8. prints medians and watched/unwatched ratios.
# Idempotent: everything lives under a fresh mktemp dir that is removed on
# exit; containers are named kwbench-<pid>-*, and leftovers of an earlier run
# whose script is gone are deleted first.
set -euo pipefail

if [ -z "${KWBENCH_TIMED:-}" ]; then
    export KWBENCH_TIMED=1
    exec timeout -s TERM -k 30 "${BENCH_TIMEOUT:-3600}" bash "$0" "$@"
fi

ROUNDS=${ROUNDS:-5}
EXECS=${EXECS:-2000}
CATS=${CATS:-1000}
EXEC_ROUNDS=${EXEC_ROUNDS:-$ROUNDS}
FILES=${FILES:-10000}
OPENS=${OPENS:-5000}
STARTS=${STARTS:-20}
HOST_REPS=${HOST_REPS:-5}
REPS=${REPS:-3}
CATCH=${CATCH:-300}
CONTAINERS=${CONTAINERS:-50}
CYCLES=${CYCLES:-200}
CHURN_STARTS=${CHURN_STARTS:-30}
CHURN_HOMES=${CHURN_HOMES:-1000}
# Which parts run (all by default): rounds starts churn exec catch memory
# (and profile, with PROFILE=1).
PHASES=${PHASES:-rounds starts churn exec catch memory profile}
phase() { case " $PHASES " in *" $1 "*) return 0 ;; esac; return 1; }
RUNC_TIMEOUT=120
DAEMON_TIMEOUT=$(( ${BENCH_TIMEOUT:-3600} + 60 ))

die() { echo "bench: $*" >&2; exit 1; }
say() { echo "bench: $*" >&2; }

[ "$(id -u)" = 0 ] || die "must run as root (runc, fanotify)"
for t in runc busybox tar gzip date ldd timeout cc awk sort mount; do
    command -v "$t" >/dev/null || die "missing $t (as root: bash .ci/deps; apt-get install gcc libc6-dev)"
done

REPO=$(cd "$(dirname "$0")/.." && pwd)
if [ -n "${KEYWARD:-}" ]; then
    KW=$KEYWARD
else
    say "packaging/build-release.sh (the static binary the .deb ships)"
    (cd "$REPO" && timeout 1800 bash packaging/build-release.sh --quiet)
    KW="${CARGO_TARGET_DIR:-$REPO/target}/release/keyward"
fi
[ -x "$KW" ] || die "no keyward binary at $KW"
KW=$(readlink -f "$KW")

PREFIX="kwbench-$$"
# Leftovers of an interrupted earlier run (its script pid is gone).
for id in $(timeout 30 runc list -q 2>/dev/null | grep '^kwbench-' || true); do
    owner=${id#kwbench-}; owner=${owner%%-*}
    if ! kill -0 "$owner" 2>/dev/null; then
        timeout 30 runc delete -f "$id" >/dev/null 2>&1 || true
    fi
done

WORK=$(mktemp -d /tmp/keyward-bench.XXXXXX)
DPID=""
TPID=""
IDS="$WORK/ids"
MOUNTS="$WORK/mounts"
: >"$IDS"
: >"$MOUNTS"

stop_daemon() {
    [ -n "$DPID" ] || return 0
    kill -TERM "$DPID" 2>/dev/null || true
    for _ in $(seq 100); do
        kill -0 "$DPID" 2>/dev/null || break
        sleep 0.05
    done
    kill -0 "$DPID" 2>/dev/null && kill -KILL "$DPID" 2>/dev/null || true
    wait "$TPID" 2>/dev/null || true
    DPID=""
    TPID=""
}

cleanup() {
    set +e
    # Containers first, while the daemon is up to drop them.
    while read -r id; do
        timeout 30 runc delete -f "$id" >/dev/null 2>&1
    done <"$IDS"
    stop_daemon
    tac "$MOUNTS" | while read -r m; do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null; done
    if [ "${KEEP:-0}" = 1 ]; then
        say "kept $WORK (KEEP=1)"
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- rootfs --

copy_with_libs() { # bin root dest
    local bin=$1 root=$2 dest=$3 lib
    mkdir -p "$root$(dirname "$dest")"
    cp -L "$bin" "$root$dest"
    for lib in $(ldd "$bin" 2>/dev/null | grep -o '/[^ ]*' || true); do
        [ -e "$root$lib" ] && continue
        mkdir -p "$root$(dirname "$lib")"
        cp -L "$lib" "$root$lib"
    done
}

build_rootfs() { # dir
    local root=$1 bb a
    mkdir -p "$root"/{bin,sbin,usr/bin,tmp,proc,dev,sys,etc,root,app,home/alice}
    chmod 1777 "$root/tmp"
    bb=$(command -v busybox)
    cp -L "$bb" "$root/bin/busybox"
    for a in $(busybox --list); do
        [ -e "$root/bin/$a" ] || ln -s busybox "$root/bin/$a"
    done
    copy_with_libs "$(command -v tar)" "$root" /usr/bin/tar
    copy_with_libs "$(command -v gzip)" "$root" /usr/bin/gzip
    copy_with_libs "$(command -v date)" "$root" /usr/bin/date
    # The rest of the GNU archivers an image like this carries, where the
    # host has them (apt-get install zip p7zip-full xz-utils bzip2 cpio).
    for a in zip xz bzip2 cpio; do
        command -v "$a" >/dev/null && copy_with_libs "$(command -v "$a")" "$root" "/usr/bin/$a"
    done
    if [ -x /usr/lib/p7zip/7z ]; then
        copy_with_libs /usr/lib/p7zip/7z "$root" /usr/lib/p7zip/7z
        cp -a /usr/lib/p7zip/. "$root/usr/lib/p7zip/"
        printf '#!/bin/sh\nexec /usr/lib/p7zip/7z "$@"\n' >"$root/usr/bin/7z"
        chmod +x "$root/usr/bin/7z"
    fi
    # coreutils true: what /bin/true is in a glibc image (Debian, Ubuntu,
    # UBI); /bin/true stays busybox's, as in an Alpine or busybox image.
    copy_with_libs /usr/bin/true "$root" /usr/bin/gnu-true
    cp "$WORK/kwb" "$root/usr/bin/kwb"
    printf 'root:x:0:0:root:/root:/bin/sh\nalice:x:1000:1000::/home/alice:/bin/sh\n' >"$root/etc/passwd"
    printf 'root:x:0:\nalice:x:1000:\n' >"$root/etc/group"
    printf '127.0.0.1 localhost\n' >"$root/etc/hosts"
    printf 'root:$6$BENCH:19000:0:99999:7:::\n' >"$root/etc/shadow"
    mkdir -p "$root/root/.ssh" "$root/root/.aws" "$root/home/alice/.ssh"
    echo FAKE-KEY >"$root/root/.ssh/id_rsa"
    echo FAKE-AWS >"$root/root/.aws/credentials"
    echo FAKE-KEY >"$root/home/alice/.ssh/id_ed25519"
    echo "print('hello')" >"$root/app/main.py"
}

# A static helper: `kwb now` prints CLOCK_MONOTONIC in ns; `kwb open PATH N`
# opens PATH N times and prints the total and percentiles of open(2) time.
cat >"$WORK/kwb.c" <<'EOF'
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
static long long now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000000000LL + t.tv_nsec;
}
static int cmp(const void *a, const void *b) {
    long long x = *(const long long *)a, y = *(const long long *)b;
    return x < y ? -1 : x > y;
}
int main(int argc, char **argv) {
    if (argc == 2 && !strcmp(argv[1], "now")) {
        printf("%lld\n", now());
        return 0;
    }
    if (argc != 4 || strcmp(argv[1], "open")) {
        fprintf(stderr, "usage: kwb now | kwb open PATH N\n");
        return 2;
    }
    int n = atoi(argv[3]);
    long long *d = malloc(sizeof *d * (n > 0 ? n : 1));
    long long t0 = now();
    for (int i = 0; i < n; i++) {
        long long a = now();
        int fd = open(argv[2], O_RDONLY | O_CLOEXEC);
        long long b = now();
        if (fd < 0) { perror(argv[2]); return 1; }
        close(fd);
        d[i] = b - a;
    }
    long long total = now() - t0;
    qsort(d, n, sizeof *d, cmp);
    printf("n=%d total_ns=%lld p50_ns=%lld p90_ns=%lld p99_ns=%lld max_ns=%lld\n", n, total,
           d[n / 2], d[n * 9 / 10], d[n * 99 / 100], d[n - 1]);
    return 0;
}
EOF
cc -O2 -static -o "$WORK/kwb" "$WORK/kwb.c" 2>/dev/null || die "cannot build the static helper (apt-get install libc6-dev)"

say "building rootfs under $WORK"
BASE="$WORK/base"
build_rootfs "$BASE"
DATA_ROOT="$WORK/data-rootfs"
cp -a "$BASE" "$DATA_ROOT"
mkdir -p "$DATA_ROOT/data"
for ((d = 0; d < (FILES + 99) / 100; d++)); do
    mkdir -p "$DATA_ROOT/data/d$d"
    for ((f = 0; f < 100 && d * 100 + f < FILES; f++)); do
        printf 'file %d %d\n' "$d" "$f" >"$DATA_ROOT/data/d$d/f$f"
    done
done

# The host loop's container runs on an overlay over BASE, as container
# engines run theirs. On a rootfs that is a plain directory of the host's
# filesystem, the daemon's marks sit on that filesystem, and the kernel then
# runs its fsnotify hooks for every open and close on it, by any process:
# about 10 ns (1 %) on a host open(2) here (docs/performance.md). An
# engine's overlay keeps the marks on the overlay.
SLEEP_ROOT="$WORK/sleeper-root"
mkdir -p "$SLEEP_ROOT/upper" "$SLEEP_ROOT/work" "$SLEEP_ROOT/merged"
if mount -t overlay overlay -o "lowerdir=$BASE,upperdir=$SLEEP_ROOT/upper,workdir=$SLEEP_ROOT/work" \
    "$SLEEP_ROOT/merged" 2>/dev/null; then
    echo "$SLEEP_ROOT/merged" >>"$MOUNTS"
    SLEEP_ROOTFS="$SLEEP_ROOT/merged"
    SLEEP_FS="an overlay"
else
    SLEEP_ROOTFS="$BASE"
    SLEEP_FS="a plain directory (no overlayfs)"
    say "overlayfs unavailable: the host loop's container runs on a plain directory"
fi

# ---------------------------------------------------------------- config --

SOCK="$WORK/keyward.sock"
cat >"$WORK/keyward.toml" <<EOF
socket = "$SOCK"
[daemon]
runtime_dir = "$WORK/run"
[alerts]
json = "$WORK/alerts.json"
[alerts.syslog]
enabled = false
EOF

json_string() { # stdin -> one JSON string literal (scripts here have no \ or ")
    awk 'BEGIN {ORS = ""; print "\""} {if (NR > 1) print "\\n"; print} END {print "\""}'
}

# write_config BUNDLE ROOTFS HOOK(0|1) SCRIPT: an OCI config like `runc
# spec`'s default (new pid, net, ipc, uts, mount and cgroup namespaces;
# loopback only), running `sh -c SCRIPT`, with or without the keyward hook.
write_config() {
    local bundle=$1 rootfs=$2 hook=$3 script hooks=""
    case $4 in *'"'* | *\\*) die "container scripts must not contain \" or \\" ;; esac
    script=$(printf '%s' "$4" | json_string)
    if [ "$hook" = 1 ]; then
        local h="{\"path\": \"$KW\", \"args\": [\"keyward\", \"hook\", \"--socket\", \"$SOCK\"], \"timeout\": 10}"
        # As the shipped hooks.d file: createRuntime only (the daemon drops
        # a container when its init exits).
        hooks="\"hooks\": {\"createRuntime\": [$h]},"
    fi
    cat >"$bundle/config.json" <<EOF
{
  "ociVersion": "1.0.2-dev",
  "process": {
    "terminal": false,
    "user": {"uid": 0, "gid": 0},
    "args": ["/bin/sh", "-c", $script],
    "env": ["PATH=/usr/bin:/bin", "HOME=/root"],
    "cwd": "/",
    "capabilities": {
      "bounding": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"],
      "effective": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"],
      "permitted": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"],
      "ambient": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
    },
    "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
    "noNewPrivileges": true
  },
  "root": {"path": "$rootfs", "readonly": false},
  "hostname": "kwbench",
  $hooks
  "mounts": [
    {"destination": "/proc", "type": "proc", "source": "proc"},
    {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
    {"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
    {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
    {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]},
    {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
    {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}
  ],
  "linux": {
    "resources": {"devices": [{"allow": false, "access": "rwm"}]},
    "namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}, {"type": "cgroup"}],
    "maskedPaths": ["/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware", "/proc/scsi"],
    "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
  }
}
EOF
}

NEXT=0
# new_id KIND: sets ID (no subshell, so the counter advances).
new_id() { NEXT=$((NEXT + 1)); ID="$PREFIX-$1-$NEXT"; }

# run_container BUNDLE ID: foreground `runc run`, stdout to stdout.
run_container() {
    local bundle=$1 id=$2 rc=0
    echo "$id" >>"$IDS"
    timeout -s KILL "$RUNC_TIMEOUT" runc run --bundle "$bundle" "$id" </dev/null || rc=$?
    timeout 30 runc delete -f "$id" >/dev/null 2>&1 || true
    return $rc
}

start_daemon() { # [config]
    local log="$WORK/daemon.log"
    : >"$log"
    timeout -s KILL "$DAEMON_TIMEOUT" "$KW" daemon --config "${1:-$WORK/keyward.toml}" >"$log" 2>&1 &
    TPID=$!
    for _ in $(seq 300); do
        grep -q serving "$log" && break
        kill -0 "$TPID" 2>/dev/null || die "daemon died: $(cat "$log")"
        sleep 0.05
    done
    grep -q serving "$log" || die "daemon did not start: $(cat "$log")"
    DPID=$(awk '{print $1}' "/proc/$TPID/task/$TPID/children")
    [ -n "$DPID" ] || die "no daemon pid"
}

# On-CPU ns of every daemon thread (schedstat), for CPU per event.
daemon_cpu_ns() { cat /proc/"$DPID"/task/*/schedstat 2>/dev/null | awk '{s += $1} END {printf "%d", s}'; }
rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$DPID/status"; }
# The daemon's own decision-latency histogram (power-of-two buckets; the
# percentiles are bucket upper bounds), cumulative since the daemon started.
status_field() {
    local v
    v=$(timeout 10 "$KW" status --json --socket "$SOCK" | grep -o "\"$1\": *[0-9]*" | sed -n '1s/.*: *//p') || true
    echo "${v:-0}"
}
perm_events() { timeout 10 "$KW" status --json --socket "$SOCK" | grep -o '"perm_events": *[0-9]*' | grep -o '[0-9]*$'; }
ncontainers() { timeout 10 "$KW" containers --json --socket "$SOCK" | grep -c '"id"' || true; }

# ---------------------------------------------------------------- bundles --

# The in-container workload. Times come from the monotonic clock inside
# the container, so container start is excluded.
# Each workload runs REPS times a round: with one sample per round and
# arm, a run with no keyward at all (daemon up, nothing registered, against
# no daemon) read 0.97 to 1.08 on these rows.
BENCH_SCRIPT="T() { /usr/bin/kwb now; }
r=0; while [ \$r -lt $REPS ]; do r=\$((r+1))
a=\$(T); i=0; while [ \$i -lt $EXECS ]; do /usr/bin/gnu-true; i=\$((i+1)); done; b=\$(T); echo exec_storm_ns=\$((b-a))
a=\$(T); i=0; while [ \$i -lt $EXECS ]; do /bin/true; i=\$((i+1)); done; b=\$(T); echo exec_storm_bb_ns=\$((b-a))
a=\$(T); /usr/bin/tar cf - -C / data | cat >/dev/null; b=\$(T); echo tar_files_ns=\$((b-a))
a=\$(T); i=0; while [ \$i -lt $OPENS ]; do read -r l </etc/passwd; i=\$((i+1)); done; b=\$(T); echo opens_shell_ns=\$((b-a))
a=\$(T); i=0; while [ \$i -lt $OPENS ]; do cat /etc/passwd >/dev/null; i=\$((i+1)); done; b=\$(T); echo opens_cat_ns=\$((b-a))
/usr/bin/kwb open /etc/passwd $OPENS
done
W() { mkdir -p /tmp/w; read c0 _ </proc/self/schedstat; a=\$(T); i=0; while [ \$i -lt $FILES ]; do echo x >/tmp/w/\$i; i=\$((i+1)); done; b=\$(T); read c1 _ </proc/self/schedstat; echo \$1=\$((b-a)); echo \${1%_ns}_cpu_ns=\$((c1-c0)); rm -rf /tmp/w; }
r=0; while [ \$r -lt $REPS ]; do r=\$((r+1)); W writes_ns; done
(read -r k </root/.ssh/id_rsa; sleep 600) & reader=\$!
sleep 0.2
r=0; while [ \$r -lt $REPS ]; do r=\$((r+1)); W writes_reader_ns; done
kill \$reader"

BENCH_BUNDLE="$WORK/bench"
START_BUNDLE="$WORK/start"
NOHOOK_BUNDLE="$WORK/start-nohook"
SLEEP_BUNDLE="$WORK/sleeper"
mkdir -p "$BENCH_BUNDLE" "$START_BUNDLE" "$NOHOOK_BUNDLE" "$SLEEP_BUNDLE"

# Host loop: the same OPENS opens, by a host shell, of a host file.
host_opens() {
    local a b
    a=$("$WORK/kwb" now)
    busybox sh -c "i=0; while [ \$i -lt $OPENS ]; do read -r l </etc/passwd; i=\$((i+1)); done"
    b=$("$WORK/kwb" now)
    echo "host_opens_ns=$((b - a))"
    "$WORK/kwb" open /etc/passwd "$OPENS" | sed 's/^/host_/'
}

RES="$WORK/results"
: >"$RES"
# record ARM KEY VALUE
record() { echo "$1 $2 $3" >>"$RES"; }

one_round() { # arm: A (watched) or B (unwatched)
    local arm=$1 hook=0 out id k a b line
    if [ "$arm" = A ]; then hook=1; start_daemon; fi
    write_config "$BENCH_BUNDLE" "$DATA_ROOT" "$hook" "$BENCH_SCRIPT"
    local ev0=0 cpu0=0 ev
    if [ "$arm" = A ]; then ev0=$(perm_events); cpu0=$(daemon_cpu_ns); fi
    new_id bench
    out=$(run_container "$BENCH_BUNDLE" "$ID")
    if [ "$arm" = A ]; then
        ev=$(( $(perm_events) - ev0 ))
        record A perm_events_per_round "$ev"
        record A daemon_cpu_ns_per_round $(( $(daemon_cpu_ns) - cpu0 ))
        record A hist_p50_us "$(status_field p50_us)"
        record A hist_p99_us "$(status_field p99_us)"
    fi
    for k in exec_storm_ns exec_storm_bb_ns tar_files_ns opens_shell_ns opens_cat_ns writes_ns writes_reader_ns writes_cpu_ns writes_reader_cpu_ns; do
        [ "$(echo "$out" | grep -c "^$k=[0-9]")" = "$REPS" ] || die "not $REPS x $k in: $out"
        for line in $(echo "$out" | grep -o "^$k=[0-9]*"); do
            record "$arm" "$k" "${line#*=}"
        done
    done
    [ "$(echo "$out" | grep -c '^n=')" = "$REPS" ] || die "not $REPS open latency lines in: $out"
    for k in p50_ns p99_ns; do
        for v in $(echo "$out" | grep '^n=' | grep -o "$k=[0-9]*" | cut -d= -f2); do
            record "$arm" "open_$k" "$v"
        done
    done
    # Host loop, while a container runs in both arms (registered in A
    # only), so the arms differ by keyward alone.
    write_config "$SLEEP_BUNDLE" "$SLEEP_ROOTFS" "$hook" "sleep 600"
    new_id sleeper
    id=$ID
    echo "$id" >>"$IDS"
    timeout -s KILL "$RUNC_TIMEOUT" runc run -d --bundle "$SLEEP_BUNDLE" "$id" \
        </dev/null >/dev/null 2>"$WORK/runc.err" || die "detached container failed: $(cat "$WORK/runc.err")"
    if [ "$arm" = A ]; then
        [ "$(ncontainers)" -ge 1 ] || die "sleeper not registered"
    fi
    # HOST_REPS loops a round: one 0.1 s loop a round let a single
    # hiccup of the shared VM move the host ratio by 2-3 %.
    [ "$arm" = A ] && ev0=$(perm_events)
    for _ in $(seq "$HOST_REPS"); do
        out=$(host_opens)
        record "$arm" host_opens_ns "$(echo "$out" | grep -o '^host_opens_ns=[0-9]*' | cut -d= -f2)"
        record "$arm" host_open_p50_ns "$(echo "$out" | grep -o 'p50_ns=[0-9]*' | cut -d= -f2)"
    done
    [ "$arm" = A ] && record A host_perm_events $(( $(perm_events) - ev0 ))
    timeout 30 runc delete -f "$id" >/dev/null 2>&1 || true
    if [ "$arm" = A ]; then stop_daemon; fi
}

if phase rounds; then
    say "A/B rounds: $ROUNDS each (A = watched, B = unwatched)"
    for r in $(seq "$ROUNDS"); do
        for arm in A B; do
            one_round "$arm"
            say "round $r $arm done"
        done
    done
fi

# Container starts: wall time of `runc run` of `true` (create, hook, run,
# delete), in pairs with and without the hook, one after the other, the
# order swapped every pair. A start varies from 20 to 50 ms on a shared
# two-core machine, more than the hook costs: blocks of starts per round
# let drift between blocks pass for hook cost (the earlier blocks of 20
# gave +2 to +7 ms over the same tree). The daemon runs throughout; a
# container without the hook is not registered, so the daemon has nothing
# to do for it (the host loop above shows 0 events outside containers).
PAIRS=$((ROUNDS * STARTS))
if phase starts; then
    say "container starts: $PAIRS pairs, with and without the hook"
    start_daemon
    write_config "$START_BUNDLE" "$BASE" 1 "true"
    write_config "$NOHOOK_BUNDLE" "$BASE" 0 "true"
    for p in $(seq "$PAIRS"); do
        if [ $((p % 2)) = 1 ]; then order="A B"; else order="B A"; fi
        for arm in $order; do
            if [ "$arm" = A ]; then bundle=$START_BUNDLE; else bundle=$NOHOOK_BUNDLE; fi
            a=$("$WORK/kwb" now)
            new_id start
            run_container "$bundle" "$ID" >/dev/null
            b=$("$WORK/kwb" now)
            record "$arm" start_ns $((b - a))
            [ "$arm" = A ] && ta=$((b - a)) || tb=$((b - a))
        done
        record D start_diff_ns $((ta - tb))
    done
    stop_daemon
fi

# ----------------------------------------------------------------- churn --

# A neighbour that churns its credential directories: CHURN_HOMES homes,
# each `mkdir -p /home/uN/.ssh` and an authorized_keys written, then all
# removed, over and over, in a detached container on its own overlay.
# Two such neighbours, one watched (hook) and one not, both frozen
# (`runc pause`) between their turns. Each triple of starts of an
# unrelated watched container (the start bundle above, `true`): one with
# both neighbours frozen (idle), one with the watched neighbour churning,
# one with the unwatched neighbour churning (what the churn itself costs
# two shared cores, keyward or not), the order rotated every triple. The
# daemon's own figure for each registration (its log's "in N us") comes
# beside the wall times.
CHURN_SCRIPT="n=0; while :; do i=0; while [ \$i -lt $CHURN_HOMES ]; do mkdir -p /home/u\$i/.ssh; echo k >/home/u\$i/.ssh/authorized_keys; i=\$((i+1)); done; rm -rf /home/u*; n=\$((n+1)); echo \$n >/rounds; done"
churn_neighbour() { # name hook -> sets ID; the container is left frozen
    local dir="$WORK/churn-$1" m
    m="$dir/merged"
    mkdir -p "$dir/upper" "$dir/work" "$m"
    # A lower layer of their own: BASE is the start container's plain
    # rootfs, whose credential files the daemon marks as real inodes.
    [ -d "$WORK/churn-base" ] || cp -a "$BASE" "$WORK/churn-base"
    mount -t overlay overlay -o "lowerdir=$WORK/churn-base,upperdir=$dir/upper,workdir=$dir/work" "$m" ||
        die "the churn phase needs overlayfs"
    echo "$m" >>"$MOUNTS"
    write_config "$dir" "$m" "$2" "$CHURN_SCRIPT"
    new_id "churn-$1"
    echo "$ID" >>"$IDS"
    timeout -s KILL "$RUNC_TIMEOUT" runc run -d --bundle "$dir" "$ID" </dev/null >/dev/null 2>"$WORK/runc.err" ||
        die "churn container failed: $(cat "$WORK/runc.err")"
    # One full turn first, so the daemon has met every home once.
    for _ in $(seq 600); do [ -s "$m/rounds" ] && break; sleep 0.1; done
    [ -s "$m/rounds" ] || die "churn neighbour $1 made no round in 60 s"
    timeout 30 runc pause "$ID" || die "cannot freeze $ID (freezer cgroup)"
}
# The daemon's registration time for container ID, from its log.
registered_us() {
    grep -o "watching container $1 (.* in [0-9]* us" "$WORK/daemon.log" | grep -o '[0-9]* us$' | cut -d' ' -f1 | tail -1
}
if phase churn; then
    say "churn: $CHURN_STARTS triples of starts beside an idle and a churning neighbour ($CHURN_HOMES homes)"
    start_daemon
    write_config "$START_BUNDLE" "$BASE" 1 "true"
    churn_neighbour watched 1
    CW=$ID
    churn_neighbour unwatched 0
    CU=$ID
    [ "$(ncontainers)" = 1 ] || die "expected the watched neighbour alone registered"
    r0=$(status_field rescans)
    for p in $(seq "$CHURN_STARTS"); do
        case $((p % 3)) in
            1) order="I W U" ;;
            2) order="W U I" ;;
            0) order="U I W" ;;
        esac
        for arm in $order; do
            case $arm in
                W) timeout 30 runc resume "$CW" ;;
                U) timeout 30 runc resume "$CU" ;;
            esac
            # Churning for a while (or, idle, the daemon done with what
            # the last turn left) before the start.
            sleep 0.5
            a=$("$WORK/kwb" now)
            new_id start
            # A start that fails (its hook timed out, say) is counted,
            # and its time kept: it is what the neighbour cost.
            run_container "$START_BUNDLE" "$ID" >/dev/null || record "$arm" churn_failed 1
            b=$("$WORK/kwb" now)
            record "$arm" churn_start_ns $((b - a))
            us=$(registered_us "$ID")
            [ -n "$us" ] && record "$arm" churn_register_us "$us"
            case $arm in
                W) timeout 30 runc pause "$CW"; tw=$((b - a)) ;;
                U) timeout 30 runc pause "$CU"; tu=$((b - a)) ;;
                I) ti=$((b - a)) ;;
            esac
        done
        record D churn_ratio_w "$(awk -v a="$tw" -v b="$ti" 'BEGIN {printf "%.4f", a / b}')"
        record D churn_ratio_u "$(awk -v a="$tu" -v b="$ti" 'BEGIN {printf "%.4f", a / b}')"
    done
    CHURN_RESCANS=$(( $(status_field rescans) - r0 ))
    CHURN_ROUNDS_W=$(cat "$WORK/churn-watched/merged/rounds")
    CHURN_ROUNDS_U=$(cat "$WORK/churn-unwatched/merged/rounds")
    CHURN_MARKS=$(timeout 10 "$KW" containers --json --socket "$SOCK" | grep -o '"marks": *[0-9]*' | head -1 | grep -o '[0-9]*$')
    for id in "$CW" "$CU"; do timeout 30 runc delete -f "$id" >/dev/null 2>&1 || true; done
    stop_daemon
fi

# -------------------------------------------------------- exec workloads --

# The image above on an overlay (as engines run it, and as the daemon then
# marks it: a filesystem mark on the container's own superblock), one
# detached container per workload and arm. The container waits on a FIFO
# (a shell `read`, no exec), so the daemon's CPU is read just before and
# after the workload itself; the result comes back in a file.
cg_cpu_ns() { # container id -> its cgroup's CPU time in ns (v1 cpuacct or v2)
    local f
    for f in "/sys/fs/cgroup/cpuacct/$1/cpuacct.usage" "/sys/fs/cgroup/cpu,cpuacct/$1/cpuacct.usage"; do
        [ -r "$f" ] && { cat "$f"; return; }
    done
    f="/sys/fs/cgroup/$1/cpu.stat"
    [ -r "$f" ] && { awk '$1 == "usage_usec" {printf "%d", $2 * 1000}' "$f"; return; }
    echo 0
}
exec_thread_ns() {
    local t
    for t in /proc/"$DPID"/task/*; do
        [ "$(cat "$t/comm" 2>/dev/null)" = keyward-exec ] && { awk '{printf "%d", $1}' "$t/schedstat"; return; }
    done
    echo 0
}
exec_workload() { # name -> the shell loop
    case $1 in
        bb_storm) echo "i=0; while [ \$i -lt $EXECS ]; do /bin/true; i=\$((i+1)); done" ;;
        bb_cat) echo "i=0; while [ \$i -lt $CATS ]; do cat /etc/passwd /etc/group /etc/hosts >/dev/null; i=\$((i+1)); done" ;;
        gnu_storm) echo "i=0; while [ \$i -lt $EXECS ]; do /usr/bin/gnu-true; i=\$((i+1)); done" ;;
    esac
}
exec_count() { case $1 in bb_cat) echo "$CATS" ;; *) echo "$EXECS" ;; esac; }
EXEC_WLS="bb_storm bb_cat gnu_storm"
EXEC_DIR="$WORK/execwl"
mkdir -p "$EXEC_DIR"
exec_one() { # arm workload
    local arm=$1 wl=$2 hook=0 m="$EXEC_DIR/merged" cg0 cg1 c0=0 c1=0 t0=0 t1=0 e0=0 e1=0 wall
    [ "$arm" = A ] && hook=1
    rm -rf "$EXEC_DIR/upper" "$EXEC_DIR/work"
    mkdir -p "$EXEC_DIR/upper" "$EXEC_DIR/work" "$m"
    mount -t overlay overlay -o "lowerdir=$BASE,upperdir=$EXEC_DIR/upper,workdir=$EXEC_DIR/work" "$m" ||
        die "the exec workloads need overlayfs"
    echo "$m" >>"$MOUNTS"
    mkfifo "$m/go"
    write_config "$EXEC_DIR" "$m" "$hook" "read -r x </go; a=\$(/usr/bin/kwb now); $(exec_workload "$wl"); b=\$(/usr/bin/kwb now); echo \$((b-a)) >/result.tmp; mv /result.tmp /result; sleep 600"
    new_id "exec-$wl"
    echo "$ID" >>"$IDS"
    timeout -s KILL "$RUNC_TIMEOUT" runc run -d --bundle "$EXEC_DIR" "$ID" </dev/null >/dev/null 2>"$WORK/runc.err" ||
        die "exec workload container failed: $(cat "$WORK/runc.err")"
    sleep 0.3 # registration and its first rescan are over
    if [ "$arm" = A ]; then
        # The daemon's floor: its CPU while the container waits.
        c0=$(daemon_cpu_ns)
        sleep 1
        record A x_idle_ns_per_s $(( $(daemon_cpu_ns) - c0 ))
        c0=$(daemon_cpu_ns); t0=$(exec_thread_ns); e0=$(status_field exec_events)
    fi
    cg0=$(cg_cpu_ns "$ID")
    echo go >"$m/go"
    for _ in $(seq 12000); do [ -e "$m/result" ] && break; sleep 0.01; done
    [ -e "$m/result" ] || die "exec workload $wl did not finish"
    if [ "$arm" = A ]; then c1=$(daemon_cpu_ns); t1=$(exec_thread_ns); e1=$(status_field exec_events); fi
    cg1=$(cg_cpu_ns "$ID")
    wall=$(cat "$m/result")
    timeout 30 runc delete -f "$ID" >/dev/null 2>&1 || true
    umount "$m" 2>/dev/null || umount -l "$m"
    record "$arm" "x_${wl}_wall" "$wall"
    record "$arm" "x_${wl}_cpu" $((cg1 - cg0))
    if [ "$arm" = A ]; then
        record A "x_${wl}_daemon" $((c1 - c0))
        record A "x_${wl}_thread" $((t1 - t0))
        record A "x_${wl}_events" $((e1 - e0))
    fi
    LAST_WALL=$wall
}
if phase exec; then
    say "exec workloads in the busybox + GNU archivers image, on an overlay: $EXEC_ROUNDS rounds of A B C"
    for r in $(seq "$EXEC_ROUNDS"); do
        if [ $((r % 2)) = 1 ]; then order="A B C"; else order="C B A"; fi
        for arm in $order; do
            [ "$arm" = A ] && start_daemon
            for wl in $EXEC_WLS; do
                exec_one "$arm" "$wl"
                eval "W_${arm}_$wl=$LAST_WALL"
            done
            [ "$arm" = A ] && stop_daemon
        done
        for wl in $EXEC_WLS; do
            eval "a=\$W_A_$wl b=\$W_B_$wl c=\$W_C_$wl"
            record D "x_${wl}_ratio" "$(awk -v a="$a" -v b="$b" 'BEGIN {printf "%.4f", a / b}')"
            record D "x_${wl}_noise" "$(awk -v c="$c" -v b="$b" 'BEGIN {printf "%.4f", c / b}')"
        done
        say "exec workloads round $r done"
    done
fi

# ------------------------------------------------------------ catch rate --

# What the exec path catches of archivers that exit at once: CATCH runs
# each of busybox gzip and GNU tar naming a credential file that does not
# exist (nothing is opened, so only the exec path can see them), with the
# file rule off. In a tight loop (a busybox loop is an exec storm, read a
# tick at a time) and 20 ms apart. One container per case; its alerts are
# counted by container id.
declare -A CAUGHT=()
CATCH_STORMS=0
if phase catch && [ "$CATCH" -gt 0 ]; then
    say "exec-path catch rate: $CATCH runs a case"
    cat >"$WORK/keyward-exec.toml" <<EOF
socket = "$SOCK"
[daemon]
runtime_dir = "$WORK/run"
[alerts]
json = "$WORK/alerts-catch.json"
rate_limit_per_minute = 1000000
[alerts.syslog]
enabled = false
[rules.file]
enabled = false
EOF
    : >"$WORK/alerts-catch.json"
    start_daemon "$WORK/keyward-exec.toml"
    CATCH_BUNDLE="$WORK/catch"
    mkdir -p "$CATCH_BUNDLE"
    for c in gzip-tight tar-tight gzip-spaced tar-spaced; do
        case $c in
            gzip-*) cmd="/bin/gzip -c /root/.ssh/id_ed25519 >/dev/null 2>/dev/null" ;;
            tar-*) cmd="/usr/bin/tar cf /dev/null /root/.aws/config 2>/dev/null" ;;
        esac
        case $c in *-spaced) cmd="$cmd; usleep 20000" ;; esac
        # Its own overlay, as engines run a container (and as the exec
        # loop's holds need: docs/design.md, "Exec storms").
        rm -rf "$CATCH_BUNDLE/upper" "$CATCH_BUNDLE/work"
        mkdir -p "$CATCH_BUNDLE/upper" "$CATCH_BUNDLE/work" "$CATCH_BUNDLE/merged"
        mount -t overlay overlay -o "lowerdir=$BASE,upperdir=$CATCH_BUNDLE/upper,workdir=$CATCH_BUNDLE/work" \
            "$CATCH_BUNDLE/merged" || die "the catch-rate phase needs overlayfs"
        echo "$CATCH_BUNDLE/merged" >>"$MOUNTS"
        write_config "$CATCH_BUNDLE" "$CATCH_BUNDLE/merged" 1 "i=0; while [ \$i -lt $CATCH ]; do $cmd; i=\$((i+1)); done"
        new_id "catch-$c"
        run_container "$CATCH_BUNDLE" "$ID" >/dev/null
        umount "$CATCH_BUNDLE/merged" 2>/dev/null || umount -l "$CATCH_BUNDLE/merged"
        sleep 1 # the alert thread writes after the decision
        CAUGHT[$c]=$(grep -c "\"id\":\"$ID\"" "$WORK/alerts-catch.json" || true)
    done
    CATCH_STORMS=$(status_field exec_storms)
    CATCH_HOLDS=$(status_field exec_holds)
    stop_daemon
fi

# ---------------------------------------------------------------- memory --

if phase memory; then
    say "memory: $CONTAINERS live containers, then $CYCLES start/stop cycles"
    start_daemon
    sleep 1
    RSS0=$(rss_kb)
    OVERLAY=1
    declare -a LIVE=()
    for n in $(seq "$CONTAINERS"); do
        b="$WORK/live/$n"
        mkdir -p "$b/upper" "$b/work" "$b/rootfs"
        root="$BASE"
        if [ "$OVERLAY" = 1 ]; then
            if mount -t overlay overlay -o "lowerdir=$BASE,upperdir=$b/upper,workdir=$b/work" "$b/rootfs" 2>/dev/null; then
                echo "$b/rootfs" >>"$MOUNTS"
                root="$b/rootfs"
            else
                OVERLAY=0
                say "overlayfs unavailable: live containers share one rootfs directory"
            fi
        fi
        write_config "$b" "$root" 1 "sleep 3600"
        new_id live
        id=$ID
        echo "$id" >>"$IDS"
        timeout -s KILL "$RUNC_TIMEOUT" runc run -d --bundle "$b" "$id" </dev/null >/dev/null 2>"$WORK/runc.err" \
            || die "live container $n failed: $(cat "$WORK/runc.err"; tail -5 "$WORK/daemon.log")"
        LIVE+=("$id")
    done
    sleep 1
    REGISTERED=$(ncontainers)
    RSSN=$(rss_kb)
    for id in "${LIVE[@]}"; do
        timeout 30 runc delete -f "$id" >/dev/null 2>&1 || true
    done
    sleep 3 # the reaper runs every 2 s
    RSS_AFTER_LIVE=$(rss_kb)
    LEFT=$(ncontainers)

    write_config "$START_BUNDLE" "$BASE" 1 "true"
    for _ in $(seq 20); do
        new_id warm
        run_container "$START_BUNDLE" "$ID" >/dev/null
    done
    RSS_C0=$(rss_kb)
    for c in $(seq "$CYCLES"); do
        new_id cycle
        run_container "$START_BUNDLE" "$ID" >/dev/null
        [ "$c" = $((CYCLES / 2)) ] && RSS_CHALF=$(rss_kb)
    done
    sleep 1
    RSS_C1=$(rss_kb)
    LEFT_CYCLES=$(ncontainers)
    stop_daemon
fi

# --------------------------------------------------------------- profile --

# PROFILE=1: where the daemon's time goes, per workload. strace -c counts
# the daemon's syscalls per permission/exec event; perf (when installed)
# samples it. Both attach to the daemon by pid only.
PROFILE_OUT=""
# profiled TOOL ARGS...: attach TOOL (under timeout) to the daemon, run the
# bench container once, then stop TOOL with SIGINT so it writes its report.
profiled() {
    local tpid
    timeout -s INT 300 "$@" >/dev/null 2>&1 &
    tpid=$!
    sleep 1
    new_id prof
    run_container "$BENCH_BUNDLE" "$ID" >/dev/null
    kill -INT "$tpid" 2>/dev/null || true
    wait "$tpid" 2>/dev/null || true
}
if phase profile && [ "${PROFILE:-0}" = 1 ]; then
    PROFILE_OUT="$WORK/profile.txt"
    : >"$PROFILE_OUT"
    start_daemon
    for w in opens exec; do
        case $w in
            opens) s="i=0; while [ \$i -lt $OPENS ]; do read -r l </etc/passwd; i=\$((i+1)); done" ;;
            exec) s="i=0; while [ \$i -lt $EXECS ]; do /bin/true; i=\$((i+1)); done" ;;
        esac
        write_config "$BENCH_BUNDLE" "$DATA_ROOT" 1 "$s"
        if command -v strace >/dev/null; then
            profiled strace -c -f -q -p "$DPID" -o "$WORK/strace.$w"
            { echo "== strace -c -f -p <daemon>, workload $w ($([ $w = opens ] && echo "$OPENS opens" || echo "$EXECS execs"))"
              head -20 "$WORK/strace.$w"; } >>"$PROFILE_OUT"
        fi
        if command -v perf >/dev/null; then
            profiled perf record -q -g -o "$WORK/perf.$w" -p "$DPID"
            { echo "== perf report (daemon, self time, top 25), workload $w"
              timeout 120 perf report -i "$WORK/perf.$w" --no-children --sort sym --stdio 2>/dev/null |
                  grep -E '^ +[0-9.]+%' | awk 'NR <= 25' || true; } >>"$PROFILE_OUT"
        fi
    done
    stop_daemon
fi

# ----------------------------------------------------------------- table --

median() { # arm key
    awk -v a="$1" -v k="$2" '$1 == a && $2 == k {print $3}' "$RES" | sort -n |
        awk '{v[NR] = $1} END {if (NR == 0) print "nan"; else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2}'
}

echo
echo "keyward bench: $(nproc) cores, $(uname -r), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
if phase rounds; then
    echo "rounds: $ROUNDS x A (watched: hook + daemon) / B (unwatched: no hook, no daemon), alternating, each workload $REPS times a round; medians of all samples"
    echo "host loops: beside a container on $SLEEP_FS in both arms"
fi
if phase starts; then
    echo "container starts: $PAIRS pairs, with (A) and without (B) the hook, daemon up, alternating per start"
fi
row() { # label key unit(ms|us)
    local a b div
    a=$(median A "$2"); b=$(median B "$2")
    case $3 in ms) div=1000000 ;; us) div=1000 ;; esac
    awk -v l="$1" -v a="$a" -v b="$b" -v d="$div" -v u="$3" \
        'BEGIN {printf "%-44s %11.2f %-2s %11.2f %-2s %9.3f\n", l, a / d, u, b / d, u, (b > 0 ? a / b : 0)}'
}
if phase rounds; then
    printf '%-44s %14s %14s %9s\n' metric watched unwatched ratio
    row "exec storm: $EXECS x true (coreutils, glibc)" exec_storm_ns ms
    row "exec storm: $EXECS x true (busybox applet)" exec_storm_bb_ns ms
    row "tar cf - over $FILES files" tar_files_ns ms
    row "$OPENS opens of /etc/passwd (shell read <)" opens_shell_ns ms
    row "$OPENS x cat /etc/passwd" opens_cat_ns ms
    row "$FILES small files written, no credential read" writes_ns ms
    row "$FILES small files written, a reader alive" writes_reader_ns ms
    row "  the same, writer's on-CPU time, no reader" writes_cpu_ns ms
    row "  the same, writer's on-CPU time, reader alive" writes_reader_cpu_ns ms
    awk -v r="$(median A writes_reader_cpu_ns)" -v n="$(median A writes_cpu_ns)" -v f="$FILES" \
        'BEGIN {printf "%-44s %11.2f us\n", "follow cost per file written once armed (A)", (r - n) / f / 1e3}'
    row "open(2) of /etc/passwd, p50 (kwb)" open_p50_ns us
    row "open(2) of /etc/passwd, p99 (kwb)" open_p99_ns us
    row "host: $OPENS opens of host /etc/passwd" host_opens_ns ms
    row "host: open(2) p50" host_open_p50_ns us
    awk -v a="$(median A opens_shell_ns)" -v b="$(median B opens_shell_ns)" -v n="$OPENS" \
        'BEGIN {printf "%-44s %11.2f us\n", "cost per permission event ((A-B)/opens)", (a - b) / n / 1e3}'
    awk -v a="$(median A open_p50_ns)" -v b="$(median B open_p50_ns)" \
        'BEGIN {printf "%-44s %11.2f us\n", "decision latency p50 (open p50 A - B)", (a - b) / 1e3}'
    awk -v a="$(median A open_p99_ns)" -v b="$(median B open_p50_ns)" \
        'BEGIN {printf "%-44s %11.2f us\n", "decision latency p99 (open p99 A - p50 B)", (a - b) / 1e3}'
    echo "decision latency from keyward status (daemon side, bucket upper bounds): p50 <= $(median A hist_p50_us) us, p99 <= $(median A hist_p99_us) us"
    echo "permission events caused by the host loop while a container was registered: $(median A host_perm_events)"
    awk -v e="$(median A perm_events_per_round)" -v c="$(median A daemon_cpu_ns_per_round)" \
        'BEGIN {printf "daemon per watched bench container: %d permission events, %.1f ms CPU (all threads, incl. exec loop), %.1f us CPU per permission event\n", e, c / 1e6, (e > 0 ? c / e / 1e3 : 0)}'
fi
if phase starts; then
    row "container start (runc run true; see below)" start_ns ms
    awk -v a="$(median A start_ns)" -v b="$(median B start_ns)" \
        'BEGIN {printf "%-44s %11.2f ms\n", "hook cost per start (difference of medians)", (a - b) / 1e6}'
    awk -v d="$(median D start_diff_ns)" \
        'BEGIN {printf "%-44s %11.2f ms\n", "hook cost per start (median of pair diffs)", d / 1e6}'
fi
if phase catch && [ "$CATCH" -gt 0 ]; then
    echo "exec-path catch rate, file rule off, archivers that exit at once on a missing key (alerts of $CATCH):"
    printf '  %-44s %5s tight loop, %5s 20 ms apart\n' "busybox gzip -c /root/.ssh/id_ed25519" "${CAUGHT[gzip-tight]}" "${CAUGHT[gzip-spaced]}"
    printf '  %-44s %5s tight loop, %5s 20 ms apart\n' "GNU tar cf /dev/null /root/.aws/config" "${CAUGHT[tar-tight]}" "${CAUGHT[tar-spaced]}"
    echo "  exec storms the daemon counted: $CATCH_STORMS, holds: $CATCH_HOLDS (a tight busybox loop is one: see docs/design.md)"
fi
echo
if phase churn; then
    echo "churn: $CHURN_STARTS triples of starts of a watched container (runc run true): neighbours frozen (I), a watched neighbour churning $CHURN_HOMES homes (W), an unwatched one churning (U); order rotated"
    for arm in I W U; do
        awk -v l="$arm" -v s="$(median "$arm" churn_start_ns)" -v r="$(median "$arm" churn_register_us)" \
            'BEGIN {printf "  %-2s start median %8.2f ms, daemon registration median %8.0f us\n", l, s / 1e6, r}'
    done
    awk -v w="$(median W churn_start_ns)" -v u="$(median U churn_start_ns)" -v i="$(median I churn_start_ns)" \
        -v pw="$(median D churn_ratio_w)" -v pu="$(median D churn_ratio_u)" \
        'BEGIN {printf "  W/I %.3f (median of triple ratios %.3f); U/I %.3f (%.3f): target W/I <= 1.5\n", w / i, pw, u / i, pu}'
    echo "  failed starts: watched neighbour $(awk '$1 == "W" && $2 == "churn_failed"' "$RES" | wc -l), unwatched $(awk '$1 == "U" && $2 == "churn_failed"' "$RES" | wc -l), idle $(awk '$1 == "I" && $2 == "churn_failed"' "$RES" | wc -l)"
    echo "  rescans during the phase: $CHURN_RESCANS; turns of $CHURN_HOMES homes: watched $CHURN_ROUNDS_W, unwatched $CHURN_ROUNDS_U; the watched neighbour's marks at the end: $CHURN_MARKS"
    echo
fi
if phase exec; then
    echo "exec workloads: busybox (all applet links) + GNU archivers image on an overlay, one container per workload; $EXEC_ROUNDS rounds of A (watched) / B, C (unwatched), medians"
    printf '%-34s %10s %10s %8s %8s %10s %10s %8s %9s %9s %8s\n' workload "A ms" "B ms" "A/B" "C/B" "A cpu ms" "B cpu ms" "cpu A/B" "dmn us/x" "thr us/x" "events"
    for wl in $EXEC_WLS; do
        n=$(exec_count "$wl")
        case $wl in
            bb_storm) label="$n x /bin/true (busybox)" ;;
            bb_cat) label="$n x busybox cat of 3 files" ;;
            gnu_storm) label="$n x true (coreutils, glibc)" ;;
        esac
        awk -v l="$label" -v n="$n" -v aw="$(median A "x_${wl}_wall")" -v bw="$(median B "x_${wl}_wall")" \
            -v r="$(median D "x_${wl}_ratio")" -v nz="$(median D "x_${wl}_noise")" \
            -v ac="$(median A "x_${wl}_cpu")" -v bc="$(median B "x_${wl}_cpu")" \
            -v d="$(median A "x_${wl}_daemon")" -v t="$(median A "x_${wl}_thread")" -v e="$(median A "x_${wl}_events")" \
            'BEGIN {printf "%-34s %10.1f %10.1f %8.3f %8.3f %10.1f %10.1f %8.3f %9.1f %9.1f %8d\n", l, aw / 1e6, bw / 1e6, r, nz, ac / 1e6, bc / 1e6, (bc > 0 ? ac / bc : 0), d / n / 1e3, t / n / 1e3, e}'
    done
    echo "  A/B, C/B: medians of the per-round ratios of wall time; C/B compares two unwatched runs (the noise floor)."
    echo "  cpu: the container cgroup's CPU time; dmn: the daemon's CPU (all threads) during the workload per exec; thr: the exec thread's."
    awk -v i="$(median A x_idle_ns_per_s)" 'BEGIN {printf "  the daemon idle, one container registered and waiting: %.2f ms CPU a second (in dmn above)\n", i / 1e6}'
    echo
    echo
fi
if phase memory; then
    echo "memory (daemon VmRSS)"
    printf '  %-50s %8d kB\n' "0 containers" "$RSS0"
    printf '  %-50s %8d kB\n' "$REGISTERED registered live containers$([ "$OVERLAY" = 1 ] && echo ' (own overlay each)')" "$RSSN"
    awk -v a="$RSSN" -v b="$RSS0" -v n="$REGISTERED" \
        'BEGIN {printf "  %-50s %8.1f kB\n", "per container", (n > 0 ? (a - b) / n : 0)}'
    printf '  %-50s %8d kB (%s left registered)\n' "after they stopped" "$RSS_AFTER_LIVE" "$LEFT"
    printf '  %-50s %8d kB\n' "before $CYCLES start/stop cycles" "$RSS_C0"
    printf '  %-50s %8d kB\n' "after $((CYCLES / 2)) cycles" "${RSS_CHALF:-0}"
    printf '  %-50s %8d kB (%s left registered)\n' "after $CYCLES cycles" "$RSS_C1" "$LEFT_CYCLES"
    echo
fi

if [ -n "$PROFILE_OUT" ]; then
    echo "profile (PROFILE=1):"
    cat "$PROFILE_OUT"
    echo
fi
echo "raw samples (arm key value):"
sort -k2,2 -k1,1 "$RES" | awk '{k = $1 " " $2; s[k] = s[k] " " $3} END {for (k in s) print "  " k ":" s[k]}' | sort
