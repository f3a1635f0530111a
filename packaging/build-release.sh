#!/usr/bin/env bash
# Build the release binary that the .deb ships, target/release/keyward,
# linked statically (a static-pie against glibc). Every container start
# runs `keyward hook` once; statically linked it starts about 0.5 ms
# sooner (no dynamic loader, no shared libraries to map; see
# docs/performance.md). `cargo rustc` gives the flag to the final binary
# only, so the proc-macro crates still build as the host's dylibs.
#
#   bash packaging/build-release.sh [cargo options]   # then: cargo deb --no-build
#
# glibc since 2.34 carries its files and dns resolvers itself, so a syslog
# server named by host name still resolves; other NSS modules
# (/etc/nsswitch.conf) are not loaded by a static binary.
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo rustc --release --bin keyward "$@" -- -C target-feature=+crt-static
