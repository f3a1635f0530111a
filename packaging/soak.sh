#!/usr/bin/env bash
# keyward soak: N runc containers (default 20) for D seconds (default 60),
# each hammering its credential directory with opens by a non-archiver
# (every one a fanotify permission event) while it runs tar over /root/.ssh
# once a second. At the end it checks that nothing was lost: every tar run
# has its alert, no permission event was released by the watchdog, no
# finding was dropped, no queue overflowed; and it prints the daemon's RSS
# before and after, the decision latency and the event rate.
#
#   bash packaging/soak.sh [CONTAINERS] [SECONDS]      (as root)
#
# Everything runs under timeouts; the daemon it starts is killed by pid;
# no network is used.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "soak: run as root" >&2; exit 1; }
N=${1:-20}
SECS=${2:-60}
command -v runc >/dev/null && command -v busybox >/dev/null || bash .ci/deps
cargo build --release --locked --quiet
KW="$PWD/target/release/keyward"
W=$(mktemp -d /tmp/keyward-soak.XXXXXX)
DAEMON=""
PIDS=()
cleanup() {
    for i in $(seq "$N"); do runc delete -f "soak-$$-$i" >/dev/null 2>&1 || true; done
    [ -n "$DAEMON" ] && { kill "$DAEMON" 2>/dev/null || true; wait "$DAEMON" 2>/dev/null || true; }
    rm -rf "$W"
}
trap cleanup EXIT

cat >"$W/keyward.toml" <<EOF
socket = "$W/keyward.sock"
[daemon]
runtime_dir = "$W/run"
[alerts]
json = "$W/alerts.json"
rate_limit_per_minute = 0
[alerts.syslog]
enabled = false
EOF
timeout $((SECS + 300)) "$KW" daemon --config "$W/keyward.toml" >"$W/daemon.log" 2>&1 &
DAEMON=$!
for _ in $(seq 100); do "$KW" status --socket "$W/keyward.sock" >/dev/null 2>&1 && break; sleep 0.1; done
# $DAEMON is timeout(1); the daemon is its child.
KPID=$(cat "/proc/$DAEMON/task/$DAEMON/children" | awk '{print $1}')
rss() { awk '/VmRSS/ {print $2}' "/proc/$KPID/status"; }
RSS0=$(rss)

# One rootfs, copied per container: busybox + GNU tar with its libraries.
B="$W/base"
mkdir -p "$B"/{bin,usr/bin,tmp,proc,dev,sys,etc,root/.ssh}
cp "$(command -v busybox)" "$B/bin/busybox"
for a in $(busybox --list); do [ -e "$B/bin/$a" ] || ln -s busybox "$B/bin/$a"; done
cp /usr/bin/tar "$B/usr/bin/tar"
for lib in $(ldd /usr/bin/tar | grep -o '/[^ ]*'); do
    mkdir -p "$B$(dirname "$lib")"; cp -Ln "$lib" "$B$lib" 2>/dev/null || true
done
echo "root:x:0:0:root:/root:/bin/sh" >"$B/etc/passwd"
echo "KEY" >"$B/root/.ssh/id_rsa"
echo "github.com ssh-ed25519 AAAA" >"$B/root/.ssh/known_hosts"
(cd "$W" && runc spec)
SCRIPT="end=\$((\$(date +%s) + $SECS))
( while [ \$(date +%s) -lt \$end ]; do read l < /root/.ssh/known_hosts; done ) &
n=0
while [ \$(date +%s) -lt \$end ]; do /usr/bin/tar cf /tmp/x.tar /root/.ssh 2>/dev/null; n=\$((n+1)); echo \$n > /tmp/tar-runs; sleep 1; done
wait"
for i in $(seq "$N"); do
    D="$W/c$i"
    mkdir -p "$D"
    cp -a "$B" "$D/rootfs"
    python3 - "$W/config.json" "$D/config.json" "$KW" "$W/keyward.sock" "$SCRIPT" <<'PY'
import json, sys
src, dst, kw, sock, script = sys.argv[1:]
c = json.load(open(src))
c["process"]["terminal"] = False
c["process"]["args"] = ["/bin/sh", "-c", script]
c["process"]["env"] = ["PATH=/usr/bin:/bin"]
c["root"] = {"path": "rootfs", "readonly": False}
hook = {"path": kw, "args": ["keyward", "hook", "--socket", sock], "timeout": 10}
c["hooks"] = {"createRuntime": [hook]}
json.dump(c, open(dst, "w"))
PY
    timeout $((SECS + 120)) runc run --bundle "$D" "soak-$$-$i" </dev/null >/dev/null 2>&1 &
    PIDS+=($!)
done
sleep 5
S0=$("$KW" status --json --socket "$W/keyward.sock")
RSS_MID=$(rss)
for p in "${PIDS[@]}"; do wait "$p" || true; done
sleep 2
S1=$("$KW" status --json --socket "$W/keyward.sock")
RSS1=$(rss)
EXPECTED=0
for i in $(seq "$N"); do EXPECTED=$((EXPECTED + $(cat "$W/c$i/rootfs/tmp/tar-runs" 2>/dev/null || echo 0))); done
GOT=$(grep -c '"/root/.ssh/id_rsa"' "$W/alerts.json" || true)
python3 - "$S0" "$S1" "$EXPECTED" "$GOT" "$RSS0" "$RSS_MID" "$RSS1" "$N" "$SECS" <<'PY'
import json, sys
s0, s1 = json.loads(sys.argv[1]), json.loads(sys.argv[2])
expected, got, rss0, rss_mid, rss1, n, secs = map(int, sys.argv[3:])
st = s1["stats"]
events = st["perm_events"] - s0["stats"]["perm_events"]
print(f"containers {n}, {secs} s")
print(f"permission events answered: {st['perm_events']} ({events / max(secs - 5, 1):.0f}/s after warm-up)")
print(f"tar runs {expected}, alerts {got}")
print(f"watchdog releases {st['deadline_releases']}, queue drops {st['queue_drops']}, overflows {st['overflows']}, respond errors {st['respond_errors']}, panics {st['panics']}")
print(f"decision latency p50 <= {st['latency']['p50_us']} us, p99 <= {st['latency']['p99_us']} us")
print(f"daemon RSS: start {rss0} kB, loaded {rss_mid} kB, end {rss1} kB")
ok = got >= expected and st["deadline_releases"] == 0 and st["queue_drops"] == 0 and st["overflows"] == 0 and st["respond_errors"] == 0
print("RESULT:", "nothing lost" if ok else "LOSS")
sys.exit(0 if ok else 1)
PY
