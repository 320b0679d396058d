#!/usr/bin/env bash
# Side-by-side bench: Eco²'s Python event router (a faithful model of it,
# benches/peers/eco2_router/router.py) against `relay-router --profile eco2`,
# on one private redis-server, the same prefilled events, in one run.
#
#   benches/peers/eco2-router.sh
#
# What it does: builds relay-router (release), creates a venv under target/
# with redis-py, starts a private redis-server on a free loopback port, then
# benches/peers/eco2_router/bench.py:
#   1. check: a small prefill routed by each router while a subscriber
#      listens on sse:events:*; states and published messages must be
#      byte-identical between the Python router and relay (else it fails);
#   2. timed: per router, FLUSHALL, prefill (Eco²'s producer script), run
#      the router until every entry is acked; events/s, router-process CPU
#      and Redis CPU (INFO cpu) per event over that window.
# Prints a table with the ratio and writes JSON to target/peers/. Stops
# everything it started on exit.
#
# Knobs (environment): ECO2_BENCH_PY_JOBS (default 6000 jobs × 10 events,
# ~7–20 s per Python router), ECO2_BENCH_RELAY_JOBS (default 20000 jobs
# × 10 events, ≥ 2 s for relay), ECO2_BENCH_CHECK_JOBS (default 200),
# ECO2_BENCH_PYTHON_MODES (default "sync,asyncio").
# Needs: cargo, python3 (with venv), redis-server and redis-cli (installed with apt when
# missing, as scripts/test.sh does).
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_INCREMENTAL=0
# No __pycache__ left in the source tree.
export PYTHONDONTWRITEBYTECODE=1

log() { printf '==> %s\n' "$*"; }

SUDO=""
if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi
missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || missing+=(redis-tools)
python3 -c 'import ensurepip' >/dev/null 2>&1 || missing+=(python3-venv)
if [ ${#missing[@]} -gt 0 ]; then
  log "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

peer_dir=benches/peers/eco2_router
venv=target/peers-venv
req="$peer_dir/requirements.txt"
if ! cmp -s "$req" "$venv/requirements.installed" 2>/dev/null; then
  log "venv with redis-py at $venv"
  python3 -m venv --clear "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$req"
  cp "$req" "$venv/requirements.installed"
fi

log "cargo build --release -p relay-router"
cargo build --release -p relay-router
relay_router="$(pwd)/target/release/relay-router"

stamp="$(date -u +%Y%m%dT%H%M%SZ)"
out_dir=target/peers
mkdir -p "$out_dir"
run_dir="$(mktemp -d)"
log_dir="$(pwd)/$out_dir/eco2-router-$stamp-logs"
mkdir -p "$log_dir"
redis_pid=""
bench_pid=""

cleanup() {
  # bench.py, the routers it started (it records their pids), then Redis.
  if [ -n "$bench_pid" ]; then
    kill "$bench_pid" 2>/dev/null || true
    wait "$bench_pid" 2>/dev/null || true
  fi
  if [ -f "$log_dir/pids" ]; then
    while read -r pid; do
      kill "$pid" 2>/dev/null || true
    done <"$log_dir/pids"
  fi
  if [ -n "$redis_pid" ]; then
    kill "$redis_pid" 2>/dev/null || true
    wait "$redis_pid" 2>/dev/null || true
  fi
  rm -rf "$run_dir"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
log "private redis-server on 127.0.0.1:$port"
# No persistence; Pub/Sub output buffers unbounded for the check's subscriber.
redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no \
  --dir "$run_dir" --client-output-buffer-limit "pubsub 0 0 0" \
  --logfile "$log_dir/redis.log" &
redis_pid=$!
for _ in $(seq 1 100); do
  redis-cli -p "$port" ping >/dev/null 2>&1 && break
  sleep 0.1
done
redis-cli -p "$port" ping >/dev/null

rev="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
json="$(pwd)/$out_dir/eco2-router-$stamp.json"
"$venv/bin/python" "$peer_dir/bench.py" \
  --redis-url "redis://127.0.0.1:$port" \
  --relay-router "$relay_router" \
  --python "$(pwd)/$venv/bin/python" \
  --py-jobs "${ECO2_BENCH_PY_JOBS:-6000}" \
  --relay-jobs "${ECO2_BENCH_RELAY_JOBS:-20000}" \
  --check-jobs "${ECO2_BENCH_CHECK_JOBS:-200}" \
  --python-modes "${ECO2_BENCH_PYTHON_MODES:-sync,asyncio}" \
  --json-out "$json" \
  --log-dir "$log_dir" \
  --meta "{\"git_rev\": \"$rev\", \"host_cores\": $(nproc)}" &
# In the background so that a TERM to this script stops it at once (trap).
bench_pid=$!
status=0
wait "$bench_pid" || status=$?
bench_pid=""
exit "$status"
