#!/usr/bin/env bash
# Coverage-guided fuzzing of relay's parsers of untrusted bytes (libFuzzer via
# cargo-fuzz, on the stable toolchain). See docs/FUZZING.md.
#
#   scripts/fuzz.sh smoke [secs]        # build, then every target for secs (default 4) each
#   scripts/fuzz.sh long <secs> [t...]  # every (or the named) target for secs each, one at a
#                                       # time at nice 19; new inputs go to fuzz/corpus/<t>
#   scripts/fuzz.sh cmin [t...]         # minimise the committed corpora
#   scripts/fuzz.sh seed                # regenerate seed inputs and merge them into the corpora
#   scripts/fuzz.sh repro <t> <file>    # run one input (a crash artifact, a regression)
#   scripts/fuzz.sh list                # the targets
#
# Environment: FUZZ_SANITIZER (default none: safe Rust needs no ASan),
# FUZZ_TARGET_DIR (default fuzz/target), FUZZ_JOBS_NICE (default 19).
# Exits non-zero when a target crashes, hangs or breaks an invariant; the
# input is left in fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
FUZZ=$ROOT/fuzz
TARGETS=(stream_entry sse_client http_front ids scan_api)
SANITIZER=${FUZZ_SANITIZER:-none}
TARGET_DIR=${FUZZ_TARGET_DIR:-$FUZZ/target}
NICE=${FUZZ_JOBS_NICE:-19}
TRIPLE=$(rustc -vV | sed -n 's/^host: //p')
BIN=$TARGET_DIR/$TRIPLE/release

# libFuzzer's instrumentation needs -Z flags; RUSTC_BOOTSTRAP lets the stable
# compiler accept them (no nightly toolchain is needed or fetched).
export RUSTC_BOOTSTRAP=1
# One LLVM unit per crate (cargo-fuzz's default) makes the cold build much
# slower on small machines for a few percent of speed: use 16.
CODEGEN_UNITS=${FUZZ_CODEGEN_UNITS:-16}

log() { printf '\n==> %s\n' "$*" >&2; }

ensure_cargo_fuzz() {
  if ! cargo fuzz --version >/dev/null 2>&1; then
    log "installing cargo-fuzz"
    cargo install --locked cargo-fuzz
  fi
}

build() {
  ensure_cargo_fuzz
  log "building fuzz targets (sanitizer: $SANITIZER)"
  (cd "$FUZZ" && cargo fuzz build --sanitizer "$SANITIZER" --codegen-units "$CODEGEN_UNITS" \
    --target-dir "$TARGET_DIR")
}

# run <target> <max_total_time> <writable corpus dir> [extra libFuzzer args...]
run() {
  local t=$1 secs=$2 corpus=$3
  shift 3
  local dict=()
  [ -f "$FUZZ/dicts/$t.dict" ] && dict=(-dict="$FUZZ/dicts/$t.dict")
  mkdir -p "$FUZZ/artifacts/$t" "$corpus"
  local dirs=("$corpus") d
  for d in "$FUZZ/corpus/$t" "$FUZZ/regressions/$t"; do
    [ "$d" != "$corpus" ] && [ -d "$d" ] && dirs+=("$d")
  done
  nice -n "$NICE" "$BIN/$t" "${dirs[@]}" "${dict[@]}" \
    -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -max_len=8192 \
    -artifact_prefix="$FUZZ/artifacts/$t/" -print_final_stats=1 "$@"
}

# "execs cov ft" from a libFuzzer log.
stats() {
  local execs cov ft
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$1" | tail -1)
  cov=$(grep -Eo 'cov: [0-9]+' "$1" | tail -1 | cut -d' ' -f2)
  ft=$(grep -Eo 'ft: [0-9]+' "$1" | tail -1 | cut -d' ' -f2)
  echo "${execs:-0} ${cov:-0} ${ft:-0}"
}

cmd=${1:-smoke}
shift || true
case "$cmd" in
  list)
    printf '%s\n' "${TARGETS[@]}"
    ;;
  smoke)
    secs=${1:-4}
    start=$(date +%s)
    build
    built=$(date +%s)
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    failed=()
    for t in "${TARGETS[@]}"; do
      # New inputs go to a scratch dir: the committed corpus is only read.
      if run "$t" "$secs" "$tmp/$t" >"$tmp/$t.log" 2>&1; then
        read -r execs cov ft < <(stats "$tmp/$t.log")
        printf 'fuzz %-13s ok   %8s execs  cov %5s  ft %6s\n' "$t" "$execs" "$cov" "$ft"
      else
        printf 'fuzz %-13s FAILED (log: fuzz/artifacts/%s/smoke.log)\n' "$t" "$t"
        cp "$tmp/$t.log" "$FUZZ/artifacts/$t/smoke.log"
        grep -E -A12 'panicked|ERROR: libFuzzer|SUMMARY' "$tmp/$t.log" | head -40 >&2 || tail -n 20 "$tmp/$t.log" >&2
        grep -E 'Test unit written' "$tmp/$t.log" >&2 || true
        failed+=("$t")
      fi
    done
    end=$(date +%s)
    echo "fuzz smoke: build $((built - start))s, runs $((end - built))s"
    if [ ${#failed[@]} -gt 0 ]; then
      echo "fuzz smoke failed: ${failed[*]} (reproduce: scripts/fuzz.sh repro <target> <artifact>)" >&2
      exit 1
    fi
    ;;
  long)
    secs=${1:?usage: scripts/fuzz.sh long <secs> [targets...]}
    shift
    [ $# -gt 0 ] && TARGETS=("$@")
    build
    mkdir -p "$FUZZ/logs"
    summary=$FUZZ/logs/long-$(date +%Y%m%d-%H%M%S).tsv
    printf 'target\tsecs\tcpu_s\texecs\tcov\tft\tcorpus\tresult\n' >"$summary"
    rc=0
    for t in "${TARGETS[@]}"; do
      log "$t for ${secs}s"
      lf=$FUZZ/logs/$t-$(date +%Y%m%d-%H%M%S).log
      result=ok
      /usr/bin/time -f 'cpu_s %U %S' -o "$lf.time" \
        "$0" _run "$t" "$secs" >"$lf" 2>&1 || { result=CRASH; rc=1; }
      cpu=$(awk '/^cpu_s/ {printf "%.0f", $2 + $3}' "$lf.time" 2>/dev/null || echo "?")
      read -r execs cov ft < <(stats "$lf")
      n=$(find "$FUZZ/corpus/$t" -type f | wc -l)
      printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$t" "$secs" "$cpu" "$execs" "$cov" "$ft" "$n" "$result" >>"$summary"
      [ "$result" = ok ] || grep -E -A12 'panicked|ERROR: libFuzzer' "$lf" | head -30 >&2 || true
    done
    column -t "$summary"
    echo "summary: $summary"
    exit $rc
    ;;
  _run)
    run "$1" "$2" "$FUZZ/corpus/$1"
    ;;
  cmin)
    [ $# -gt 0 ] && TARGETS=("$@")
    build
    for t in "${TARGETS[@]}"; do
      before=$(find "$FUZZ/corpus/$t" -type f | wc -l)
      tmp=$(mktemp -d)
      nice -n "$NICE" "$BIN/$t" -merge=1 -timeout=10 -max_len=8192 "$tmp" "$FUZZ/corpus/$t" >/dev/null 2>&1
      rm -rf "$FUZZ/corpus/$t"
      mv "$tmp" "$FUZZ/corpus/$t"
      echo "cmin $t: $before -> $(find "$FUZZ/corpus/$t" -type f | wc -l) inputs"
    done
    ;;
  seed)
    log "writing seeds"
    tmp=$(mktemp -d)
    (cd "$FUZZ" && cargo run --quiet --example seeds -- "$tmp")
    build
    for t in "${TARGETS[@]}"; do
      mkdir -p "$FUZZ/corpus/$t"
      nice -n "$NICE" "$BIN/$t" -merge=1 -timeout=10 "$FUZZ/corpus/$t" "$tmp/$t" >/dev/null 2>&1
    done
    rm -rf "$tmp"
    ;;
  repro)
    t=${1:?usage: scripts/fuzz.sh repro <target> <file>}
    build
    "$BIN/$t" "${2:?input file}"
    ;;
  *)
    echo "usage: scripts/fuzz.sh smoke|long|cmin|seed|repro|list" >&2
    exit 2
    ;;
esac
