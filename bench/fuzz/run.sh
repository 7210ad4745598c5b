#!/usr/bin/env bash
# Builds fedge's libFuzzer targets with clang and runs each for MINUTES minutes.
#
#   bench/fuzz/run.sh MINUTES [TARGET...]     fuzz (default: every target, one after another)
#   bench/fuzz/run.sh 0 [TARGET...]           replay only: every seed and every committed
#                                             crash reproducer once (a regression check)
#
# Targets are bench/fuzz/fuzz_<name>.cpp; seeds bench/fuzz/corpus/<name>/; reproducers of
# past findings bench/fuzz/crashes/<name>/. Each run works in a copy of the seeds
# ($WORK/<name>/corpus, kept between runs) so the repo's seed corpus stays small, and
# writes findings to $WORK/<name>/artifacts/. After a crash the target is restarted for
# the rest of its time, so one bug does not end the run; the report counts artifacts.
#
# Environment: FEDGE_FUZZ_BUILD (build dir, default build/fuzz), FEDGE_FUZZ_WORK (work
# dir, default $FEDGE_FUZZ_BUILD/work), FEDGE_FUZZ_RSS_MB (default 2048).
# The fuzzers run under `nice -n 10`, one process each (no -jobs/-fork): the machines are
# shared. Installs clang-14 + libclang-rt-14-dev (libFuzzer) when missing; they are not
# in scripts/install-deps.sh because the fuzz build is not part of the test command.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
HERE="$ROOT/bench/fuzz"
BUILD="${FEDGE_FUZZ_BUILD:-$ROOT/build/fuzz}"
WORK="${FEDGE_FUZZ_WORK:-$BUILD/work}"
RSS_MB="${FEDGE_FUZZ_RSS_MB:-2048}"

if [[ $# -lt 1 || ! $1 =~ ^[0-9]+$ ]]; then
  sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
fi
MINUTES=$1
shift

# --- toolchain ------------------------------------------------------------------------
CXX=clang++-14
CC=clang-14
if ! command -v "$CXX" >/dev/null || ! ls /usr/lib/llvm-14/lib/clang/*/lib/linux/libclang_rt.fuzzer-x86_64.a \
  >/dev/null 2>&1; then
  echo "fuzz: installing clang-14 and libclang-rt-14-dev (libFuzzer)"
  SUDO=""
  [[ $(id -u) -ne 0 ]] && SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends clang-14 libclang-rt-14-dev
fi

# --- build ----------------------------------------------------------------------------
if [[ ! -f $BUILD/build.ninja ]]; then
  launcher=()
  command -v ccache >/dev/null && launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache -DCMAKE_C_COMPILER_LAUNCHER=ccache)
  cmake -S "$HERE" -B "$BUILD" -G Ninja -DCMAKE_CXX_COMPILER="$CXX" -DCMAKE_C_COMPILER="$CC" "${launcher[@]}" >/dev/null
fi
nice -n 10 ninja -C "$BUILD" -j2

# --- targets --------------------------------------------------------------------------
if [[ $# -gt 0 ]]; then
  targets=("$@")
else
  targets=()
  for src in "$HERE"/fuzz_*.cpp; do
    name=$(basename "$src" .cpp)
    targets+=("${name#fuzz_}")
  done
fi

replay() {  # replay <name>: every seed and committed reproducer once; fails on a crash
  local name=$1 bin="$BUILD/fuzz_$1" inputs=()
  [[ -d $HERE/corpus/$name ]] && inputs+=("$HERE/corpus/$name"/*)
  [[ -d $HERE/crashes/$name ]] && inputs+=($(find "$HERE/crashes/$name" -type f ! -name '*.md'))
  if "$bin" -runs=0 -rss_limit_mb="$RSS_MB" -timeout=10 "${inputs[@]}" >"$WORK/$name.replay.log" 2>&1; then
    printf '%-20s %4d inputs  ok\n' "$name" "${#inputs[@]}"
  else
    printf '%-20s %4d inputs  FAILED (%s)\n' "$name" "${#inputs[@]}" "$WORK/$name.replay.log"
    grep -m3 -E 'SUMMARY|PROPERTY|ERROR' "$WORK/$name.replay.log" | sed 's/^/    /'
    return 1
  fi
}

# Stack traces for UBSan reports; every sanitizer report ends the process (a finding).
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1${UBSAN_OPTIONS:+:$UBSAN_OPTIONS}"

mkdir -p "$WORK"
if [[ $MINUTES -eq 0 ]]; then
  status=0
  for t in "${targets[@]}"; do replay "$t" || status=1; done
  exit $status
fi

# fuzz <name>: runs the target until MINUTES are used up (restarting after a crash) and
# appends its summary row to $WORK/summary.txt.
fuzz() {
  local name=$1 bin="$BUILD/fuzz_$1"
  local dir="$WORK/$name"
  mkdir -p "$dir/corpus" "$dir/artifacts"
  cp -rn "$HERE/corpus/$name/." "$dir/corpus/"
  : >"$dir/fuzz.log"
  local budget=$((MINUTES * 60)) start now left runs=0 restarts=0
  start=$(date +%s)
  while :; do
    now=$(date +%s)
    left=$((budget - (now - start)))
    ((left >= 5)) || break
    echo "=== $(date -u +%FT%TZ) run $((restarts + 1)), ${left}s left" >>"$dir/fuzz.log"
    (cd "$dir" && nice -n 10 "$bin" -max_total_time="$left" -rss_limit_mb="$RSS_MB" -timeout=10 \
      -print_final_stats=1 -artifact_prefix="$dir/artifacts/" corpus >>"$dir/fuzz.log" 2>&1) || true
    restarts=$((restarts + 1))
    ((restarts < 50)) || break
  done
  local secs=$(($(date +%s) - start))
  # Executions summed over restarts; coverage and corpus from the last stats line.
  local execs cov corp crashes
  local last
  execs=$(awk '/^stat::number_of_executed_units/ {s += $NF} END {print s + 0}' "$dir/fuzz.log")
  last=$(grep -E '^#[0-9]+.*cov: ' "$dir/fuzz.log" | tail -1)
  cov=$(sed -E 's/.*cov: ([0-9]+).*/\1/' <<<"$last")
  corp=$(sed -E 's/.*corp: ([0-9]+)\/.*/\1/' <<<"$last")
  crashes=$(find "$dir/artifacts" -type f \( -name 'crash-*' -o -name 'leak-*' -o -name 'timeout-*' \
    -o -name 'oom-*' \) | wc -l)
  printf '%-20s %6.1f %12d %8d %7s %6s %8d\n' "$name" "$(awk -v s="$secs" 'BEGIN {print s / 60}')" "$execs" \
    "$((execs / (secs > 0 ? secs : 1)))" "${corp:-?}" "${cov:-?}" "$crashes" | tee -a "$WORK/summary.txt"
  grep -E '^SUMMARY: |PROPERTY VIOLATED|^==[0-9]+== ?ERROR: libFuzzer' "$dir/fuzz.log" | sed -E 's/^==[0-9]+==/==/' |
    sort | uniq -c |
    sed 's/^/    /' | tee -a "$WORK/summary.txt" || true
}

{
  echo "# $(date -u +%FT%TZ) bench/fuzz/run.sh $MINUTES ($(git -C "$ROOT" describe --always --dirty 2>/dev/null))"
  printf '%-20s %6s %12s %8s %7s %6s %8s\n' target min execs exec/s corpus cov crashes
} | tee -a "$WORK/summary.txt"
for t in "${targets[@]}"; do fuzz "$t"; done
echo "fuzz: logs and findings under $WORK/<target>/ (artifacts/: inputs that crashed)"
