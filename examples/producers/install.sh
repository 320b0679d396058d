#!/usr/bin/env bash
# Installs what the producer examples need, where tests/producers.rs looks
# for it (scripts/test.sh runs this; run it by hand before
# `cargo test -p relay-suite --test producers`):
#
#   - a Python venv with examples/producers/python/requirements.txt
#     (redis-py), at $RELAY_PRODUCERS_VENV (default target/producers-venv);
#   - examples/producers/node/node_modules (npm ci: the `redis` package).
#
# Both are skipped when already installed at the pinned versions.
set -euo pipefail
cd "$(dirname "$0")/../.."

venv="${RELAY_PRODUCERS_VENV:-target/producers-venv}"
req=examples/producers/python/requirements.txt
# The requirements the venv was built from: rebuilt when they change.
stamp="$venv/requirements.installed"
if ! cmp -s "$req" "$stamp" 2>/dev/null; then
  echo "installing the Python producer's dependencies into $venv"
  python3 -m venv --clear "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$req"
  cp "$req" "$stamp"
fi

node_dir=examples/producers/node
lock_copy="$node_dir/node_modules/.package-lock.json"
if [ ! -d "$node_dir/node_modules/redis" ] || [ "$node_dir/package-lock.json" -nt "$lock_copy" ]; then
  echo "installing the Node producer's dependencies into $node_dir/node_modules"
  (cd "$node_dir" && npm ci --no-audit --no-fund --loglevel=error)
fi
