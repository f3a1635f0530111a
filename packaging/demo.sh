#!/usr/bin/env bash
# keyward demo: run the daemon with its defaults, start a runc container with
# the hook wired in, run `tar czf /tmp/x.tgz /root/.ssh/id_rsa` inside it,
# and print the alert. Needs root. Cleans up after itself; the daemon it
# starts is stopped by pid.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
    echo "keyward demo: run as root (fanotify and runc need it)" >&2
    exit 1
fi
command -v runc >/dev/null && command -v busybox >/dev/null || bash .ci/deps
bash packaging/build-release.sh --locked --quiet
KW="$PWD/target/release/keyward"
SOCK=/run/keyward/keyward.sock
ALERTS=/var/log/keyward/alerts.json
WORK=$(mktemp -d /tmp/keyward-demo.XXXXXX)
ID="keyward-demo-$$"
DAEMON=""

cleanup() {
    runc delete -f "$ID" >/dev/null 2>&1 || true
    if [ -n "$DAEMON" ]; then kill "$DAEMON" 2>/dev/null || true; wait "$DAEMON" 2>/dev/null || true; fi
    rm -rf "$WORK"
}
trap cleanup EXIT

# 1. The daemon with defaults (unless one is already serving the socket).
if "$KW" status >/dev/null 2>&1; then
    echo "== using the keyward daemon already serving $SOCK"
else
    echo "== starting: keyward daemon (defaults: $SOCK, $ALERTS, syslog /dev/log)"
    timeout 600 "$KW" daemon >"$WORK/daemon.log" 2>&1 &
    DAEMON=$!
    for _ in $(seq 100); do "$KW" status >/dev/null 2>&1 && break; sleep 0.1; done
    "$KW" status >/dev/null || { cat "$WORK/daemon.log"; exit 1; }
fi
BEFORE=$( (wc -l <"$ALERTS") 2>/dev/null || echo 0)

# 2. A rootfs: busybox plus GNU tar/gzip with their libraries, and a key.
R="$WORK/bundle/rootfs"
mkdir -p "$R"/{bin,usr/bin,tmp,proc,dev,sys,etc,root/.ssh}
cp "$(command -v busybox)" "$R/bin/busybox"
for a in sh ls cat sleep echo; do ln -s busybox "$R/bin/$a"; done
for b in /usr/bin/tar /usr/bin/gzip; do
    cp "$b" "$R$b"
    for lib in $(ldd "$b" | grep -o '/[^ ]*'); do
        mkdir -p "$R$(dirname "$lib")"; cp -Ln "$lib" "$R$lib" 2>/dev/null || true
    done
done
echo "root:x:0:0:root:/root:/bin/sh" >"$R/etc/passwd"
echo "-----BEGIN OPENSSH PRIVATE KEY----- demo" >"$R/root/.ssh/id_rsa"

# 3. A bundle whose config.json runs the hook at createRuntime.
(cd "$WORK/bundle" && runc spec)
python3 - "$WORK/bundle/config.json" "$KW" "$SOCK" <<'PY'
import json, sys
path, kw, sock = sys.argv[1:]
c = json.load(open(path))
c["process"]["terminal"] = False
c["process"]["args"] = ["sh", "-c", "tar czf /tmp/x.tgz /root/.ssh/id_rsa && echo 'container: archive written'"]
c["process"]["env"] = ["PATH=/usr/bin:/bin"]
c["root"]["readonly"] = False
hook = {"path": kw, "args": ["keyward", "hook", "--socket", sock], "timeout": 10}
c["hooks"] = {"createRuntime": [hook]}
json.dump(c, open(path, "w"), indent=2)
PY

echo "== runc run $ID: tar czf /tmp/x.tgz /root/.ssh/id_rsa"
timeout 60 runc run --bundle "$WORK/bundle" "$ID" </dev/null

# 4. The alert.
for _ in $(seq 50); do
    [ "$( (wc -l <"$ALERTS") 2>/dev/null || echo 0)" -gt "$BEFORE" ] && break
    sleep 0.1
done
echo "== alert from $ALERTS:"
tail -n +"$((BEFORE + 1))" "$ALERTS" | python3 -m json.tool
