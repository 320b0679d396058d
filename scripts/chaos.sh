#!/usr/bin/env bash
# relay's chaos soak: builds the release binaries and runs `relay-load chaos`
# (see docs/CHAOS.md). Every argument is passed on:
#
#   scripts/chaos.sh                      # the full soak: 600 s of faults
#   scripts/chaos.sh --secs 60            # the short mode
#   scripts/chaos.sh --secs 60 --seed 42 --log-dir /tmp/chaos --json chaos.json
#
# Needs redis-server on PATH (or $REDIS_SERVER_BIN) and RabbitMQ on
# 127.0.0.1:5672 (guest/guest; another broker: --amqp-url) with rabbitmqctl
# on PATH for the broker faults. Exits non-zero on any violation.
set -euo pipefail
cd "$(dirname "$0")/.."

command -v redis-server >/dev/null 2>&1 || [ -n "${REDIS_SERVER_BIN:-}" ] || {
  echo "chaos.sh: redis-server not found (install it or set REDIS_SERVER_BIN)" >&2
  exit 2
}
command -v rabbitmqctl >/dev/null 2>&1 || {
  echo "chaos.sh: rabbitmqctl not found: broker faults would fail (pass --amqp-close-every-secs 0 to skip them)" >&2
}

cargo build --release -p relay-load -p relay-router -p relay-sse -p pipeline-scan
target_dir="${CARGO_TARGET_DIR:-target}"
export RELAY_BIN_DIR="$target_dir/release"
exec "$target_dir/release/relay-load" chaos "$@"
