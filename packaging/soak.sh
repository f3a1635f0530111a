#!/usr/bin/env bash
# keyward soak: N runc containers (default 20) for D seconds (default 60),
# each hammering its credential directory with opens by a non-archiver
# (every one a fanotify permission event) while it runs tar over /root/.ssh
# once a second. At the end it checks that nothing was lost: every tar run
# has its alert, no permission event was released by the watchdog, no
# finding was dropped, no queue overflowed; and it prints the daemon's RSS
# before and after, the decision latency and the event rate.
#
# With FAULTS=1 (the default) the run also goes through faults while the
# containers work: alerts go to a private rsyslogd over TCP on loopback,
# which is stopped and started again twice; the JSON alert file sits on a
# small tmpfs that is filled to ENOSPC for 10 s; and the daemon upgrades
# itself once (SIGUSR2: re-exec in place). Every tar run must still have
# its alert, in the JSON file and in syslog, delivered once the fault
# cleared; every JSON line must be whole; and no permission event may be
# released by the watchdog.
#
#   bash packaging/soak.sh [CONTAINERS] [SECONDS]      (as root)
#   FAULTS=0 bash packaging/soak.sh 20 60              (no faults)
#
# Everything runs under timeouts; the daemon and rsyslogd it starts are
# killed by pid; the only network used is loopback.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "soak: run as root" >&2; exit 1; }
N=${1:-20}
SECS=${2:-60}
FAULTS=${FAULTS:-1}
command -v runc >/dev/null && command -v busybox >/dev/null && command -v rsyslogd >/dev/null || bash .ci/deps
[ "$FAULTS" = 0 ] || [ "$SECS" -ge 50 ] || { echo "soak: the faults need SECONDS >= 50" >&2; exit 1; }
bash packaging/build-release.sh --locked --quiet
KW="$PWD/target/release/keyward"
W=$(mktemp -d /tmp/keyward-soak.XXXXXX)
DAEMON=""
SYSLOGD=""
PIDS=()
cleanup() {
    for i in $(seq "$N"); do runc delete -f "soak-$$-$i" >/dev/null 2>&1 || true; done
    [ -n "$DAEMON" ] && { kill "$DAEMON" 2>/dev/null || true; wait "$DAEMON" 2>/dev/null || true; }
    [ -n "$SYSLOGD" ] && { kill "$SYSLOGD" 2>/dev/null || true; wait "$SYSLOGD" 2>/dev/null || true; }
    [ -n "${KEEP:-}" ] && cp "$W/jsonfs/alerts.json" "$W/alerts.json" 2>/dev/null
    mountpoint -q "$W/jsonfs" 2>/dev/null && umount "$W/jsonfs"
    if [ -n "${KEEP:-}" ]; then echo "soak: kept $W" >&2; else rm -rf "$W"; fi
}
trap cleanup EXIT

JSON="$W/alerts.json"
SYSLOG_TABLE="enabled = false"
PORT=0
if [ "$FAULTS" != 0 ]; then
    # The JSON file on a small filesystem of its own, to fill it.
    mkdir -p "$W/jsonfs"
    mount -t tmpfs -o size=8m tmpfs "$W/jsonfs"
    JSON="$W/jsonfs/alerts.json"
    # A private rsyslogd on a free loopback port, writing what it receives.
    PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    mkdir -p "$W/rsyslog"
    cat >"$W/rsyslog/rsyslog.conf" <<EOF
global(workDirectory="$W/rsyslog")
# Each record written out as it is read: an in-memory main queue would drop
# what it still holds when the collector stops, which no sender can see
# over plain TCP (RELP exists for that; keyward does not speak it).
main_queue(queue.type="Direct")
module(load="imtcp")
input(type="imtcp" address="127.0.0.1" port="$PORT" SupportOctetCountedFraming="on")
template(name="soak" type="string" string="%structured-data% %msg%\n")
action(type="omfile" file="$W/rsyslog/received" template="soak")
EOF
    SYSLOG_TABLE="server = \"tcp://127.0.0.1:$PORT\""
fi
start_syslogd() {
    timeout -s KILL $((SECS + 300)) rsyslogd -n -f "$W/rsyslog/rsyslog.conf" -i "$W/rsyslog/pid" \
        >>"$W/rsyslog/log" 2>&1 &
    SYSLOGD=$!
    for _ in $(seq 100); do
        python3 -c "import socket; socket.create_connection(('127.0.0.1', $PORT), 1)" 2>/dev/null && return
        sleep 0.1
    done
    echo "soak: rsyslogd did not listen: $(cat "$W/rsyslog/log")" >&2
    exit 1
}
stop_syslogd() {
    kill "$SYSLOGD" 2>/dev/null || true
    wait "$SYSLOGD" 2>/dev/null || true
    SYSLOGD=""
}
[ "$FAULTS" = 0 ] || start_syslogd

cat >"$W/keyward.toml" <<EOF
socket = "$W/keyward.sock"
[daemon]
runtime_dir = "$W/run"
[alerts]
json = "$JSON"
rate_limit_per_minute = 0
[alerts.syslog]
$SYSLOG_TABLE
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
status() { timeout 10 "$KW" status --json --socket "$W/keyward.sock"; }
S0=$(status)
RSS_MID=$(rss)
SPRE='{"stats": {"perm_events": 0, "deadline_releases": 0, "queue_drops": 0, "overflows": 0, "respond_errors": 0, "panics": 0}}'
T0=$(date +%s)
say() { echo "soak: +$(( $(date +%s) - T0 ))s $*" >&2; }
if [ "$FAULTS" != 0 ]; then
    sleep 5; say "syslog server down for 3 s"; stop_syslogd; sleep 3; start_syslogd
    sleep 5; say "JSON filesystem full for 10 s"
    dd if=/dev/zero of="$W/jsonfs/fill" bs=64k 2>/dev/null || true
    sleep 10; rm -f "$W/jsonfs/fill"; say "JSON filesystem has room again"
    sleep 5; say "daemon upgrade (SIGUSR2)"
    SPRE=$(status)
    kill -USR2 "$KPID"
    for _ in $(seq 100); do
        grep -q "upgraded in place" "$W/daemon.log" && status >/dev/null 2>&1 && break
        sleep 0.1
    done
    grep -q "upgraded in place" "$W/daemon.log" || { echo "soak: the upgrade did not happen: $(tail "$W/daemon.log")" >&2; exit 1; }
    NEWPID=$(status | python3 -c 'import json, sys; print(json.load(sys.stdin)["pid"])')
    [ "$NEWPID" = "$KPID" ] || { echo "soak: pid $NEWPID after the upgrade, not $KPID" >&2; exit 1; }
    say "upgraded in place, same pid $KPID"
    sleep 5; say "syslog server down for 3 s"; stop_syslogd; sleep 3; start_syslogd
fi
for p in "${PIDS[@]}"; do wait "$p" || true; done
# Sinks retry every second: wait until every backlog is empty.
for _ in $(seq 60); do
    status | python3 -c 'import json, sys; s = json.load(sys.stdin)["sinks"]; sys.exit(0 if all(v["backlog"] == 0 for v in s.values()) else 1)' && break
    sleep 0.5
done
sleep 1
S1=$(status)
RSS1=$(rss)
EXPECTED=0
for i in $(seq "$N"); do EXPECTED=$((EXPECTED + $(cat "$W/c$i/rootfs/tmp/tar-runs" 2>/dev/null || echo 0))); done
python3 - "$S0" "$SPRE" "$S1" "$EXPECTED" "$JSON" "$W/rsyslog/received" "$FAULTS" "$RSS0" "$RSS_MID" "$RSS1" "$N" "$SECS" <<'PY'
import json, sys
s0, spre, s1 = (json.loads(a) for a in sys.argv[1:4])
expected = int(sys.argv[4])
json_path, syslog_path, faults = sys.argv[5], sys.argv[6], sys.argv[7] != "0"
rss0, rss_mid, rss1, n, secs = map(int, sys.argv[8:])
# Every line of the JSON file must be one whole object. A tar run is one
# keyward run (its id); an alert's later lines update the same run. Syslog
# over TCP is at least once, so it may hold a record twice: it must hold
# every run's (container, pid) at least once (host pids wrap within a
# minute here, so two runs can share one; they count once on both sides).
import re
bad = 0
runs, keys = set(), set()
for line in open(json_path, errors="replace"):
    try:
        a = json.loads(line)
    except ValueError:
        bad += 1
        continue
    if "/root/.ssh/id_rsa" in line:
        runs.add(a["keyward"]["run"]["id"])
        keys.add((a["container"]["id"], str(a["process"]["pid"])))
got = len(runs)
syslog_runs, syslog_lines = set(), 0
if faults:
    for l in open(syslog_path, errors="replace"):
        c, p = re.search(r'container_id="([^"]*)"', l), re.search(r' pid="(\d+)"', l)
        if "/root/.ssh/id_rsa" in l and c and p:
            syslog_lines += 1
            syslog_runs.add((c.group(1), p.group(1)))
syslog = len(syslog_runs & keys)
def total(k):
    # Counters start over in the upgraded process: before it, plus after.
    before = spre["stats"][k] if faults else 0
    warm = s0["stats"][k] if k == "perm_events" else 0
    return before + s1["stats"][k] - warm
st = s1["stats"]
events = total("perm_events")
print(f"containers {n}, {secs} s" + (", faults: syslog server restarted twice, JSON filesystem full for 10 s, one upgrade in place" if faults else ""))
print(f"permission events answered after warm-up: {events} ({events / max(secs - 5, 1):.0f}/s)")
print(f"tar runs {expected}, runs alerted in the JSON file {got}" + (f"; in syslog {syslog} of their {len(keys)} (container, pid) ({syslog_lines} records: at least once)" if faults else "") + f", broken JSON lines {bad}")
print("watchdog releases {}, queue drops {}, overflows {}, respond errors {}, panics {}".format(
    *(total(k) for k in ["deadline_releases", "queue_drops", "overflows", "respond_errors", "panics"])))
for name, sink in sorted(s1["sinks"].items()):
    print(f"sink {name}" + (" (since the upgrade)" if faults else "") + f": delivered {sink['delivered']}, failures {sink['failures']}, dropped {sink['dropped']}, backlog {sink['backlog']}")
print(f"decision latency p50 <= {st['latency']['p50_us']} us, p99 <= {st['latency']['p99_us']} us" + (" (since the upgrade)" if faults else ""))
print(f"daemon RSS: start {rss0} kB, loaded {rss_mid} kB, end {rss1} kB")
ok = got >= expected and bad == 0 and (not faults or syslog == len(keys))
ok = ok and all(total(k) == 0 for k in ["deadline_releases", "queue_drops", "overflows", "respond_errors"])
print("RESULT:", "nothing lost" if ok else "LOSS")
sys.exit(0 if ok else 1)
PY
