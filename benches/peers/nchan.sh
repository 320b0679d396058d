#!/usr/bin/env bash
# SSE fan-out side by side: relay vs nginx + the Nchan module (messages in
# Nchan's shared memory, and in Redis), same machine, same Rust subscribers,
# same run (`relay-load fanout`; what each case measures is documented in
# relay-load/src/fanout/mod.rs).
#
#   benches/peers/nchan.sh                      # every target × every case
#   benches/peers/nchan.sh --cases a-1k,e-restart --duration-secs 10
#
# Extra arguments go to `relay-load fanout`. It:
#   1. installs the peer if it is missing (Debian/Ubuntu: nginx-light and
#      libnginx-mod-nchan through apt-get; needs root). No system nginx
#      config is read or changed: each nginx runs from a configuration
#      relay-load generates in a private directory, on a free loopback
#      port, in the foreground, and is killed when its run ends;
#   2. builds the release binaries it needs (relay-load, relay-router,
#      relay-sse);
#   3. runs the cases, prints the tables and writes the JSON report to
#      $OUT (default target/bench-peers/nchan.json).
# On exit (also on Ctrl-C or error) any nginx this run started is killed
# by the pid it recorded, and its files are removed.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
OUT="${OUT:-$root/target/bench-peers/nchan.json}"
NCHAN_MODULE="${NCHAN_MODULE:-}"

work="$(mktemp -d -t relay-nchan-bench.XXXXXX)"
load_pid=""
# Every descendant of pid $1 (children first listed after their own).
descendants() {
    local c
    for c in $(ps -o pid= --ppid "$1" 2>/dev/null || true); do
        echo "$c"
        descendants "$c"
    done
}
cleanup() {
    # relay-load kills what it started when it ends normally. If this
    # script is interrupted first, kill relay-load and every process it
    # started (redis-server, relay-router, relay-sse, nginx and its
    # workers) by pid, then any nginx recorded in this run's own
    # directories (one orphaned by a relay-load killed earlier).
    local pids pidfile pid
    if [ -n "$load_pid" ] && kill -0 "$load_pid" 2>/dev/null; then
        pids="$(descendants "$load_pid")"
        kill -KILL "$load_pid" 2>/dev/null || true
        for pid in $pids; do kill -KILL "$pid" 2>/dev/null || true; done
    fi
    for pidfile in "$work"/nchan-*/nginx.pid; do
        [ -f "$pidfile" ] || continue
        pid="$(cat "$pidfile" 2>/dev/null || true)"
        [ -n "$pid" ] || continue
        pids="$(descendants "$pid")"
        kill -KILL "$pid" 2>/dev/null || true
        for p in $pids; do kill -KILL "$p" 2>/dev/null || true; done
    done
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

find_module() {
    local m
    for m in "$NCHAN_MODULE" /usr/lib/nginx/modules/ngx_nchan_module.so \
        /usr/lib64/nginx/modules/ngx_nchan_module.so \
        /usr/share/nginx/modules/ngx_nchan_module.so; do
        if [ -n "$m" ] && [ -f "$m" ]; then
            echo "$m"
            return 0
        fi
    done
    return 1
}

if ! command -v nginx >/dev/null 2>&1 || ! find_module >/dev/null; then
    echo "nchan.sh: installing nginx-light and libnginx-mod-nchan (apt-get)" >&2
    if [ "$(id -u)" -ne 0 ]; then
        echo "nchan.sh: need root to install the peer (or install nginx + the Nchan module and set NCHAN_MODULE)" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y --no-install-recommends nginx-light libnginx-mod-nchan >&2
fi
module="$(find_module)" || {
    echo "nchan.sh: ngx_nchan_module.so not found (set NCHAN_MODULE)" >&2
    exit 1
}
nginx_bin="$(command -v nginx)"

if ! command -v redis-server >/dev/null 2>&1; then
    echo "nchan.sh: installing redis-server (apt-get)" >&2
    [ "$(id -u)" -eq 0 ] || { echo "nchan.sh: need redis-server" >&2; exit 1; }
    apt-get install -y --no-install-recommends redis-server >&2
fi

echo "nchan.sh: building release binaries" >&2
CARGO_INCREMENTAL=0 cargo build --release -p relay-load -p relay-router -p relay-sse >&2

mkdir -p "$(dirname "$OUT")"
echo "nchan.sh: $(date -u +%FT%TZ), load average $(cut -d' ' -f1-3 /proc/loadavg), $(nproc) cores" >&2
# In the background, so a signal to this script runs the cleanup at once.
"$root/target/release/relay-load" --json "$OUT" fanout \
    --nginx "$nginx_bin" --nchan-module "$module" --work-dir "$work" "$@" &
load_pid=$!
wait "$load_pid"
load_pid=""
