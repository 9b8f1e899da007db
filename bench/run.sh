#!/usr/bin/env bash
# bench/run.sh: what `make bench` runs (after `make build`). Runs the saga
# benchmark in open mode, then closed mode, each on a fresh nats-server and
# fresh services, and ends with both summary lines. Builds nothing itself.
#
#   BENCH_N=5000 BENCH_C=16 BENCH_MODES="open closed" bash bench/run.sh [choreo-bench args]
#
# BUILD_DIR (default build) says where choreo-bench is; extra arguments go to
# every choreo-bench run (e.g. -t 600, --keep). BENCH_FLOOR=1 also runs
# `choreo-bus-floor --full` after each mode, with the same -m, -n and -c, and
# adds its `floor:` line to the summary: the same messages with no service
# behind them (bench/README.md, "The floor"). Exits non-zero if any run fails.
set -uo pipefail

cd "$(dirname "$0")/.." || exit 1
BUILD_DIR=${BUILD_DIR:-build}
BIN=${BENCH_BIN:-$BUILD_DIR/bench/choreo-bench}
N=${BENCH_N:-5000}
C=${BENCH_C:-16}
MODES=${BENCH_MODES:-open closed}
FLOOR=${BENCH_FLOOR:-0}
FLOOR_BIN=$BUILD_DIR/bench/choreo-bus-floor

if [[ ! -x $BIN ]]; then
  echo "bench/run.sh: $BIN is missing: run \`make bench\` (it builds first); the bench needs all four services" >&2
  exit 1
fi
if [[ $FLOOR != 0 && $FLOOR != 1 ]]; then
  echo "bench/run.sh: BENCH_FLOOR: '$FLOOR' is not 0 or 1" >&2
  exit 2
fi
if [[ $FLOOR == 1 && ! -x $FLOOR_BIN ]]; then
  echo "bench/run.sh: $FLOOR_BIN is missing: run \`make bench\` (it builds first)" >&2
  exit 1
fi
for m in $MODES; do
  if [[ $m != open && $m != closed ]]; then
    echo "bench/run.sh: BENCH_MODES: '$m' is not open or closed" >&2
    exit 2
  fi
done

rc=0
summaries=()
out=$(mktemp) || exit 1
trap 'rm -f "$out"' EXIT
# Runs one benchmark with its output on the terminal and keeps its summary
# line (the last one starting with PREFIX:), or one saying it failed.
#   run_one PREFIX MODE COMMAND...
run_one() {
  local prefix=$1 mode=$2 status line
  shift 2
  echo "== ${*#"$BUILD_DIR"/bench/}"
  "$@" | tee "$out"
  status=${PIPESTATUS[0]}
  line=$(grep "^$prefix:" "$out" | tail -n 1)
  summaries+=("${line:-$prefix: mode=$mode n=$N c=$C checks=failed (no summary line)}")
  if ((status != 0)); then
    echo "bench/run.sh: ${1##*/} in $mode mode failed (exit $status)" >&2
    rc=1
  fi
  echo
}

for m in $MODES; do
  run_one bench "$m" "$BIN" -m "$m" -n "$N" -c "$C" "$@"
  if [[ $FLOOR == 1 ]]; then
    run_one floor "$m" "$FLOOR_BIN" --full -m "$m" -n "$N" -c "$C"
  fi
done

echo "== summary"
printf '%s\n' "${summaries[@]}"
exit "$rc"
