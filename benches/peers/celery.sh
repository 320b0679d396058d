#!/usr/bin/env bash
# relay's typed stage pipeline vs Celery 5, side by side, over the same RabbitMQ.
#
# Both sides run a chain of 4 no-op stages, closed loop (N jobs in flight, a
# new one submitted as one finishes), at 1, 100 and 1,000 jobs in flight:
#   - Celery: a prefork worker `-c 2`, acks_late=True,
#     worker_prefetch_multiplier=100, no result backend; the 4th task pushes
#     the job id to a list on the side's own redis-server, the driver pops it
#     (benches/peers/celery/{tasks,driver}.py).
#   - relay: pipeline-scan's generic pipeline over AMQP (4 `stage_fn` no-ops,
#     one worker process), progress events on (appended to relay's shard
#     streams on the side's own redis-server, relay-router routing them);
#     the driver subscribes to each job's live channel and the job is done
#     when the router publishes its terminal event
#     (pipeline-scan/examples/noop_chain.rs).
# Prints a table (jobs/s, p50/p99 submit → done, ratios relay/Celery, CPU per
# job of each side's processes incl. RabbitMQ's beam.smp) and writes JSON.
#
# Run from anywhere in a clone (RabbitMQ must be up, guest/guest):
#   benches/peers/celery.sh            # installs Celery in target/peers/celery-venv, builds, runs
#   benches/peers/celery.sh --no-build # skip the cargo build
# Settings (environment): CELERY_BENCH_CONCURRENCY (1,100,1000),
#   CELERY_BENCH_WARMUP (8 s), CELERY_BENCH_DURATION (15 s per point),
#   CELERY_BENCH_JSON (target/peers/celery.json), RELAY_PREFETCH (256, per
#   stage consumer), AMQP_HOST (127.0.0.1), AMQP_PORT (5672), AMQP_USER /
#   AMQP_PASS (guest), CELERY_BENCH_CONFIRM_PUBLISH (0; 1 = Celery waits for
#   publisher confirms like relay's transport, not the issue's configuration).
#
# It uses private redis-servers on free ports, queue and exchange names
# unique to the run, and on exit (trap) stops every process it started,
# deletes every queue and exchange it created and checks that
# `rabbitmqctl list_queues` / `list_exchanges` show what they showed before.
set -euo pipefail
# The Python files are imported from the tree: leave no __pycache__ there.
export PYTHONDONTWRITEBYTECODE=1

cd "$(dirname "${BASH_SOURCE[0]}")/../.."
ROOT=$PWD
HERE=$ROOT/benches/peers/celery

BUILD=1
for arg in "$@"; do
    case $arg in
        --no-build) BUILD=0 ;;
        -h | --help) sed -n '2,32p' "$0"; exit 0 ;;
        *) echo "unknown argument: $arg" >&2; exit 2 ;;
    esac
done

CONCURRENCY=${CELERY_BENCH_CONCURRENCY:-1,100,1000}
WARMUP=${CELERY_BENCH_WARMUP:-8}
DURATION=${CELERY_BENCH_DURATION:-15}
JSON_OUT=${CELERY_BENCH_JSON:-$ROOT/target/peers/celery.json}
PREFETCH=${RELAY_PREFETCH:-256}
AMQP_HOST=${AMQP_HOST:-127.0.0.1}
AMQP_PORT=${AMQP_PORT:-5672}
AMQP_USER=${AMQP_USER:-guest}
AMQP_PASS=${AMQP_PASS:-guest}
# The default vhost "/" as each client spells it.
CELERY_BROKER="amqp://$AMQP_USER:$AMQP_PASS@$AMQP_HOST:$AMQP_PORT//"
RELAY_AMQP="amqp://$AMQP_USER:$AMQP_PASS@$AMQP_HOST:$AMQP_PORT/%2f"

for tool in redis-server redis-cli rabbitmqctl python3 cargo; do
    command -v "$tool" > /dev/null || { echo "missing: $tool" >&2; exit 1; }
done

RUN=$(date +%s)-$$
CELERY_QUEUE=relaybench-celery-$RUN
RELAY_PREFIX=relaybench-relay-$RUN
WORK=$ROOT/target/peers/celery-run-$RUN
mkdir -p "$WORK"

VENV=$ROOT/target/peers/celery-venv
PIDS=()            # every process started here, stopped in reverse order
CELERY_PID=
RELAY_WORKER_PID=
QUEUES_BEFORE=$WORK/queues.before
EXCHANGES_BEFORE=$WORK/exchanges.before

list_queues() { rabbitmqctl list_queues -q --no-table-headers name 2> /dev/null | sort; }
list_exchanges() { rabbitmqctl list_exchanges -q --no-table-headers name 2> /dev/null | sort; }

stop_pid() { # pid: TERM, up to 15 s, then KILL
    local pid=$1 i
    kill -0 "$pid" 2> /dev/null || return 0
    kill -TERM "$pid" 2> /dev/null || true
    for i in $(seq 150); do
        kill -0 "$pid" 2> /dev/null || return 0
        sleep 0.1
    done
    kill -KILL "$pid" 2> /dev/null || true
}

cleanup() {
    local rc=$? i
    set +e
    trap - EXIT INT TERM
    echo "cleaning up…" >&2
    # Celery's prefork children: the main process stops them on TERM; any
    # left are killed by pid.
    local children=()
    if [ -n "$CELERY_PID" ]; then
        children=($(ps -o pid= --ppid "$CELERY_PID" 2> /dev/null))
    fi
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
        stop_pid "${PIDS[i]}"
    done
    for pid in "${children[@]}"; do stop_pid "$pid"; done
    if [ -x "$ROOT/target/release/examples/noop_chain" ]; then
        "$ROOT/target/release/examples/noop_chain" --amqp-url "$RELAY_AMQP" \
            --queue-prefix "$RELAY_PREFIX" cleanup
    fi
    if [ -x "$VENV/bin/python" ] && [ -f "$EXCHANGES_BEFORE" ]; then
        # Our queue and exchange, and whatever else Celery declared that was
        # not there before (e.g. its `celeryev` event exchange).
        local extra=()
        for x in $(comm -13 "$EXCHANGES_BEFORE" <(list_exchanges)); do
            case $x in "$CELERY_QUEUE" | celeryev | celery.pidbox | reply.celery.pidbox) extra+=(--exchange "$x") ;; esac
        done
        "$VENV/bin/python" "$HERE/broker.py" "$CELERY_BROKER" --queue "$CELERY_QUEUE" \
            --exchange "$CELERY_QUEUE" "${extra[@]}" > /dev/null
    fi
    if [ -f "$QUEUES_BEFORE" ]; then
        local q_diff x_diff
        q_diff=$(diff "$QUEUES_BEFORE" <(list_queues))
        x_diff=$(diff "$EXCHANGES_BEFORE" <(list_exchanges))
        if [ -z "$q_diff$x_diff" ]; then
            echo "RabbitMQ queues and exchanges: as before the run" >&2
        else
            echo "RabbitMQ queues/exchanges differ from before the run (another user of the broker?):" >&2
            echo "$q_diff$x_diff" >&2
            if echo "$q_diff$x_diff" | grep -q "relaybench-.*-$RUN"; then
                echo "ERROR: this run's queues or exchanges are left" >&2
                rc=1
            fi
        fi
    fi
    exit "$rc"
}
trap cleanup EXIT INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

wait_for() { # description, seconds, command...
    local what=$1 secs=$2 i
    shift 2
    for i in $(seq $((secs * 5))); do
        if "$@" > /dev/null 2>&1; then return 0; fi
        sleep 0.2
    done
    echo "timed out waiting for $what" >&2
    return 1
}

consumers_on() { # queue-name-regex, count: true when that many consumers are attached
    local n
    n=$(rabbitmqctl list_queues -q --no-table-headers name consumers 2> /dev/null |
        awk -v re="$1" '$1 ~ re { s += $2 } END { print s + 0 }')
    [ "$n" -ge "$2" ]
}

# --- Celery, in a private venv ------------------------------------------------
if [ ! -x "$VENV/bin/celery" ]; then
    echo "installing Celery into $VENV" >&2
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --upgrade pip
    "$VENV/bin/pip" install -q 'celery>=5,<6' redis
fi
CELERY_VERSION=$("$VENV/bin/python" -c 'import celery; print(celery.__version__)')
KOMBU_VERSION=$("$VENV/bin/python" -c 'import kombu; print(kombu.__version__)')

# --- relay, release build -----------------------------------------------------
if [ "$BUILD" = 1 ]; then
    cargo build --release -p relay-router --bin relay-router
    cargo build --release -p pipeline-scan --example noop_chain
fi
ROUTER_BIN=$ROOT/target/release/relay-router
NOOP_BIN=$ROOT/target/release/examples/noop_chain

list_queues > "$QUEUES_BEFORE"
list_exchanges > "$EXCHANGES_BEFORE"

# --- private redis-servers (one per side) ---------------------------------------
start_redis() { # name port
    redis-server --port "$2" --bind 127.0.0.1 --save "" --appendonly no \
        --daemonize no --logfile "$WORK/$1.log" &
    PIDS+=($!)
    wait_for "redis-server :$2" 20 redis-cli -p "$2" ping
}
RELAY_REDIS_PORT=$(free_port)
start_redis redis-relay "$RELAY_REDIS_PORT"
RELAY_REDIS_PID=${PIDS[-1]}
CELERY_REDIS_PORT=$(free_port)
start_redis redis-celery "$CELERY_REDIS_PORT"
CELERY_REDIS_PID=${PIDS[-1]}

# --- relay: router and the stage worker ------------------------------------------
RELAY_REDIS=redis://127.0.0.1:$RELAY_REDIS_PORT
ROUTER_METRICS=127.0.0.1:$(free_port)
"$ROUTER_BIN" --redis-url "$RELAY_REDIS" --domain bench --shards 4 \
    --metrics-addr "$ROUTER_METRICS" > "$WORK/relay-router.log" 2>&1 &
PIDS+=($!)
ROUTER_PID=$!
wait_for relay-router 30 bash -c "exec 3<>/dev/tcp/${ROUTER_METRICS%:*}/${ROUTER_METRICS#*:}"

NOOP=("$NOOP_BIN" --redis-url "$RELAY_REDIS" --amqp-url "$RELAY_AMQP"
    --queue-prefix "$RELAY_PREFIX" --domain bench --shards 4)
"${NOOP[@]}" worker --prefetch "$PREFETCH" > "$WORK/relay-worker.log" 2>&1 &
PIDS+=($!)
RELAY_WORKER_PID=$!
wait_for "relay worker consumers" 60 consumers_on "^$RELAY_PREFIX\\.noop[1-4]\$" 4

# --- Celery worker ------------------------------------------------------------------
export CELERY_BENCH_BROKER=$CELERY_BROKER
export CELERY_BENCH_QUEUE=$CELERY_QUEUE
export CELERY_BENCH_REDIS=redis://127.0.0.1:$CELERY_REDIS_PORT/0
export CELERY_BENCH_DONE_KEY=celerybench:$RUN:done
(cd "$HERE" && exec "$VENV/bin/celery" -A tasks worker -P prefork -c 2 \
    --without-gossip --without-mingle --without-heartbeat \
    -Q "$CELERY_QUEUE" -n "relaybench-$RUN@%h" -l WARNING) > "$WORK/celery-worker.log" 2>&1 &
PIDS+=($!)
CELERY_PID=$!
wait_for "celery worker consumer" 60 consumers_on "^$CELERY_QUEUE\$" 1

BEAM_PID=$(pgrep -x beam.smp | head -1 || true)
beam=()
if [ -n "$BEAM_PID" ]; then beam=(",rabbitmq=$BEAM_PID"); else echo "beam.smp not found: RabbitMQ's CPU not counted" >&2; fi

META=$(python3 - "$CELERY_VERSION" "$KOMBU_VERSION" "$PREFETCH" "${CELERY_BENCH_CONFIRM_PUBLISH:-0}" <<'EOF'
import json, subprocess, sys
def out(*cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True).stdout.strip()
    except OSError:
        return None
print(json.dumps({
    "celery": sys.argv[1], "kombu": sys.argv[2],
    "celery_config": {"pool": "prefork", "concurrency": 2, "acks_late": True,
                      "worker_prefetch_multiplier": 100, "result_backend": None,
                      "confirm_publish": sys.argv[4] == "1"},
    "relay_config": {"stages": 4, "workers": 1, "prefetch_per_stage": int(sys.argv[3]),
                     "events": "on (shard streams, relay-router, live channel)", "shards": 4},
    "redis_server": out("redis-server", "--version"),
    "rabbitmq": out("rabbitmqctl", "version"),
    "relay_commit": out("git", "rev-parse", "--short", "HEAD"),
}))
EOF
)

"$VENV/bin/python" "$HERE/bench.py" \
    --concurrency "$CONCURRENCY" --warmup "$WARMUP" --duration "$DURATION" \
    --celery-driver "$VENV/bin/python $HERE/driver.py" \
    --relay-driver "${NOOP[*]} drive" \
    --celery-pids "celery-worker=$CELERY_PID+,redis=$CELERY_REDIS_PID${beam[*]}" \
    --relay-pids "relay-worker=$RELAY_WORKER_PID,relay-router=$ROUTER_PID,redis=$RELAY_REDIS_PID${beam[*]}" \
    --json "$JSON_OUT" --meta "$META"
