#!/usr/bin/env bash
# relay's test command: installs what a fresh Debian machine lacks, makes sure
# the services the tests talk to are up, then runs the whole workspace's tests.
#
#   scripts/test.sh              # everything (lint + tests)
#   RELAY_SKIP_LINT=1 scripts/test.sh
#
# Installed when missing (apt, no recommended packages): redis-server,
# redis-tools, rabbitmq-server, for the browser tests chromium, and for the
# browser tests and the Node producer example nodejs and npm; python3-venv
# for the Python producer example's venv (examples/producers/install.sh
# then installs both examples' pinned packages). The tests start their own private redis-server processes (from PATH or
# $REDIS_SERVER_BIN) on free ports; RabbitMQ is shared on 127.0.0.1:5672
# (guest/guest) and every test uses its own queue prefix.
set -euo pipefail
cd "$(dirname "$0")/.."
# A one-off build: incremental artifacts would only cost disk.
export CARGO_INCREMENTAL=0

log() { printf '\n==> %s\n' "$*"; }

SUDO=""
if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v redis-benchmark >/dev/null 2>&1 || missing+=(redis-tools)
command -v rabbitmq-server >/dev/null 2>&1 || missing+=(rabbitmq-server)
if [ -d tests/browser ] && [ ! -x /usr/bin/chromium ]; then missing+=(chromium); fi
if { [ -d tests/browser ] || [ -d examples/producers/node ]; } && ! command -v npm >/dev/null 2>&1; then missing+=(nodejs npm); fi
# Debian's python3 ships venv's ensurepip separately.
if [ -d examples/producers/python ] && ! python3 -c 'import ensurepip' >/dev/null 2>&1; then missing+=(python3-venv); fi
if [ ${#missing[@]} -gt 0 ]; then
  # redis-server/redis-tools: the tests' private servers and ceilings;
  # rabbitmq-server: the AMQP tests' broker; chromium + nodejs/npm: the
  # browser tests (tests/browser, Playwright driving the system chromium);
  # nodejs/npm and python3-venv: the producer examples (tests/producers.rs).
  # Only what is needed: no recommended packages (chromium would pull in
  # systemd, udev, avahi and printing), and apt's progress goes to a log
  # that is shown only when the install fails.
  log "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt_log="$(mktemp)"
  if ! { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"; } >"$apt_log" 2>&1; then
    cat "$apt_log" >&2
    exit 1
  fi
  rm -f "$apt_log"
fi

rabbit_up() { (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; }
if ! rabbit_up; then
  log "starting RabbitMQ"
  $SUDO rabbitmq-server -detached >/dev/null 2>&1 || true
  for _ in $(seq 1 90); do rabbit_up && break; sleep 1; done
  rabbit_up || { echo "RabbitMQ did not come up on 127.0.0.1:5672" >&2; exit 1; }
  $SUDO rabbitmqctl await_startup >/dev/null 2>&1 || true
fi

if [ -f tests/browser/package.json ] && [ ! -d tests/browser/node_modules ]; then
  log "installing browser-test dependencies"
  (cd tests/browser && { npm ci --no-audit --no-fund --loglevel=error || npm install --no-audit --no-fund --loglevel=error; })
fi

# redis-py in a venv under target/, node-redis in the example's node_modules.
log "producer examples' dependencies (examples/producers/install.sh)"
bash examples/producers/install.sh

if [ -z "${RELAY_SKIP_LINT:-}" ]; then
  log "cargo fmt --check"
  cargo fmt --all -- --check
  log "cargo clippy"
  cargo clippy --workspace --all-targets --all-features -- -D warnings
  log "module import cycles"
  python3 scripts/module_cycles.py
  log "documents cited exist in the repository"
  python3 scripts/doc_refs.py
  log "crate dependency cycles (dev-dependencies included)"
  python3 scripts/crate_cycles.py
  log "deployment manifests (docs/DEPLOYMENT.md)"
  python3 scripts/validate_manifests.py
  log "k6 scripts (self-test, k6 inspect; installs k6 into a venv if missing)"
  bash scripts/k6.sh check
fi

log "cargo test --workspace"
# Build every member's binaries first: end-to-end tests spawn them.
cargo build --workspace --bins
cargo test --workspace --no-fail-fast
# The fred backend (feature `fred`, off in the run above): the workspace
# again with `--features fred` (every binary with `--redis-client fred`),
# restricted to what the feature changes: the conformance suite's fred cases
# (standalone, Sentinel, Cluster) and the fred variants of the router's and
# the gateway's fault tests (`fred::…`, generated beside `redis_rs::…` by
# relay_testkit::per_redis_client!). The feature only adds code, so every
# other test would repeat the run above for nothing and about double CI's
# time; listing the targets also keeps cargo from building every other test
# binary a second time. These targets build relay-router's and relay-sse's
# binaries with fred, which the root e2e tests spawn.
log "cargo test --workspace --features fred (fred cases and fault-test variants)"
cargo test --workspace --features fred --no-fail-fast \
  --test conformance --test faults --test redis \
  --test e2e_sse --test e2e_sentinel --test e2e_cluster \
  -- fred

# A bounded run of every fuzz target (a few seconds each) plus a replay of
# every input a fuzzer ever found (fuzz/regressions); long runs are
# `scripts/fuzz.sh long <secs>` (docs/FUZZING.md).
log "fuzz smoke"
bash scripts/fuzz.sh smoke
