#!/usr/bin/env bash
# bench/peer.sh: what `make bench-peer` runs (after `make build`). choreo-bench
# and the Go peer of ../shared/peer-go side by side: the same configurations,
# run alternately (never at the same time), then one table of medians and
# ratios (bench/peer_table.py). Not part of `make test`.
#
#   PEER_ROUNDS=3 BENCH_N=5000 BENCH_N1=1000 bash bench/peer.sh
#
# A round is open c=16 and closed c=16 with BENCH_N orders, closed c=1 with
# BENCH_N1, each run by choreo, the peer with PUBLISH=sync and with
# PUBLISH=async, and (PEER_FLOOR=1, the default) choreo-bus-floor --pattern
# own: choreo's messages with no service behind them, its floor. Odd rounds
# start each configuration with choreo, even rounds end with it, so a drifting
# machine does not favour one side. Before every
# run the peer's quiet.sh waits (at most QUIET_MAX s, default 60) for an idle
# machine; PEER_QUIET=0 skips that.
#
# PEER_DIR (default ../shared/peer-go, relative to the repository) is where the
# peer lives; it is built from there into $BUILD_DIR/peer-go (its PEER_OUT), so
# nothing of it lands in the repository. Without it this says so and exits 0.
# Every run's summary line goes to $BUILD_DIR/bench-peer/<time>.tsv (path
# printed). Exits non-zero if any run failed or the peer does not build.
set -euo pipefail

cd "$(dirname "$0")/.."
BUILD_DIR=${BUILD_DIR:-build}
BIN=$BUILD_DIR/bench/choreo-bench
FLOOR_BIN=$BUILD_DIR/bench/choreo-bus-floor
PEER_DIR=${PEER_DIR:-../shared/peer-go}
ROUNDS=${PEER_ROUNDS:-3}
N=${BENCH_N:-5000}
N1=${BENCH_N1:-1000}
QUIET=${PEER_QUIET:-1}
FLOOR=${PEER_FLOOR:-1}

if [[ ! -x $PEER_DIR/run.sh || ! -x $PEER_DIR/build.sh ]]; then
  echo "bench-peer: no Go peer at $PEER_DIR (set PEER_DIR to compare with it); nothing to do"
  exit 0
fi
for knob in "PEER_ROUNDS=$ROUNDS" "BENCH_N=$N" "BENCH_N1=$N1"; do
  if [[ ! ${knob#*=} =~ ^[1-9][0-9]*$ ]]; then
    echo "bench/peer.sh: ${knob%%=*}: '${knob#*=}' is not a positive integer" >&2
    exit 2
  fi
done
for knob in "PEER_QUIET=$QUIET" "PEER_FLOOR=$FLOOR"; do
  if [[ ${knob#*=} != 0 && ${knob#*=} != 1 ]]; then
    echo "bench/peer.sh: ${knob%%=*}: '${knob#*=}' is not 0 or 1" >&2
    exit 2
  fi
done
for bin in "$BIN" "$FLOOR_BIN"; do
  if [[ ! -x $bin ]]; then
    echo "bench/peer.sh: $bin is missing: run \`make bench-peer\` (it builds first)" >&2
    exit 1
  fi
done

# The peer's scripts read PEER_OUT; its build.sh changes directory, so absolute.
PEER_OUT=$(realpath -m "$BUILD_DIR/peer-go")
export PEER_OUT QUIET_MAX=${QUIET_MAX:-60}
mkdir -p "$PEER_OUT" "$BUILD_DIR/bench-peer"
echo "== building the peer from $PEER_DIR into $PEER_OUT"
if ! "$PEER_DIR/build.sh"; then
  echo "bench/peer.sh: the peer at $PEER_DIR did not build" >&2
  exit 1
fi

RESULTS=$(realpath "$BUILD_DIR/bench-peer")/$(date +%Y%m%d-%H%M%S).tsv
{
  echo "# bench-peer $(date -u +%FT%TZ) choreo $(git rev-parse --short HEAD 2>/dev/null || echo '?')" \
    "peer $(realpath "$PEER_DIR") rounds=$ROUNDS n=$N n1=$N1"
  printf '# round\timpl\tmode\tc\tn\tsummary line of the run\n'
} >"$RESULTS"
echo "== raw lines go to $RESULTS"

rc=0
# Runs one implementation in one configuration and appends its summary line
# to the results file; a run that printed none gets a failed line instead.
#   run_one ROUND IMPL MODE C N
run_one() {
  local rnd=$1 impl=$2 mode=$3 c=$4 n=$5 out line status=0
  if [[ $QUIET == 1 && -x $PEER_DIR/quiet.sh ]]; then
    "$PEER_DIR/quiet.sh" || true
  fi
  echo "== round $rnd/$ROUNDS: $impl $mode c=$c n=$n"
  if [[ $impl == choreo ]]; then
    out=$("$BIN" -q -m "$mode" -n "$n" -c "$c") || status=$?
    line=$(grep '^bench:' <<<"$out" | tail -n 1 || true)
    line=${line:-"bench: mode=$mode n=$n c=$c checks=failed failed=no_summary_line"}
  elif [[ $impl == floor-own ]]; then
    out=$("$FLOOR_BIN" -q --pattern own -m "$mode" -n "$n" -c "$c") || status=$?
    line=$(grep '^floor:' <<<"$out" | tail -n 1 || true)
    line=${line:-"floor: mode=$mode n=$n c=$c checks=failed failed=no_summary_line"}
  else
    out=$(N=$n C=$c MODE=$mode PUBLISH=${impl#peer-} "$PEER_DIR/run.sh") || status=$?
    line=$(grep '^{' <<<"$out" | tail -n 1 || true)
    line=${line:-'{"ok": false, "error": "no JSON line"}'}
  fi
  echo "$line"
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$rnd" "$impl" "$mode" "$c" "$n" "$line" >>"$RESULTS"
  if ((status != 0)); then
    echo "bench/peer.sh: $impl $mode c=$c n=$n failed (exit $status)" >&2
    rc=1
  fi
}

for ((r = 1; r <= ROUNDS; r++)); do
  impls=(choreo peer-sync peer-async)
  if ((FLOOR)); then impls+=(floor-own); fi
  ((r % 2)) || mapfile -t impls < <(printf '%s\n' "${impls[@]}" | tac)
  for cfg in "open 16 $N" "closed 16 $N" "closed 1 $N1"; do
    read -r mode c n <<<"$cfg"
    for impl in "${impls[@]}"; do
      run_one "$r" "$impl" "$mode" "$c" "$n"
    done
  done
done

echo
python3 bench/peer_table.py "$RESULTS" || rc=1
echo "raw lines: $RESULTS"
exit "$rc"
