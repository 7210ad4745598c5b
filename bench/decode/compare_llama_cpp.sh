#!/usr/bin/env bash
# Decode and prefill tokens/s of fedge's Llama against llama.cpp, side by side, on
# one random-weight model with SmolLM2-135M's shape (bench/decode/make_model.py):
# fedge fp32 / int8 (and optionally the op-by-op libtorch path) vs llama.cpp F32,
# F16 and Q8_0, same prompt length, generated tokens and thread counts. Runs are
# interleaved (every configuration once per round, N rounds) and the summary is
# the median per configuration, with fedge/llama.cpp ratios.
#
#   bench/decode/compare_llama_cpp.sh [--runs 5] [--threads "1 2"] [--prompt 128]
#                                     [--gen 128] [--kernels f32,int8] [--build DIR]
#                                     [--csv FILE]
#
# llama.cpp is built from the llama-cpp-python source package on PyPI
# (build_llama_cpp.sh); when that cannot be fetched the script says so and exits 0
# without measuring anything. Never part of the build or CI. Needs
# build/bench/fedge_bench_decode:
#   flock /tmp/fedge-ninja.lock ninja -C build -j2 fedge_bench_decode
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
runs=5 threads="1 2" prompt=128 gen=128 kernels="f32,int8" build="$root/build" csv=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --runs) runs=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --prompt) prompt=$2; shift 2 ;;
    --gen) gen=$2; shift 2 ;;
    --kernels) kernels=$2; shift 2 ;;
    --build) build=$2; shift 2 ;;
    --csv) csv=$2; shift 2 ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
fedge_bench="$build/bench/fedge_bench_decode"
if [[ ! -x "$fedge_bench" ]]; then
  echo "$fedge_bench is missing: flock /tmp/fedge-ninja.lock ninja -C $build -j2 fedge_bench_decode" >&2
  exit 1
fi

set +e
paths=$("$root/bench/decode/build_llama_cpp.sh")
rc=$?
set -e
if [[ $rc -eq 2 ]]; then
  echo "SKIP: llama.cpp's source could not be fetched; nothing measured"
  exit 0
elif [[ $rc -ne 0 ]]; then
  echo "building llama.cpp failed (see above)" >&2
  exit 1
fi
eval "$paths"  # LLAMA_CPP_BUILD, LLAMA_CPP_SRC
llama_bench="$LLAMA_CPP_BUILD/bin/llama-bench"
llama_quantize="$LLAMA_CPP_BUILD/bin/llama-quantize"

cache="${FEDGE_DECODE_BENCH_CACHE:-/var/cache/fedge/decode-bench}"
mkdir -p "$cache" 2>/dev/null || cache="$HOME/.cache/fedge/decode-bench"
mkdir -p "$cache"
venv="$cache/venv"
if [[ ! -x "$venv/bin/python" ]] || ! "$venv/bin/python" -c "import numpy" 2>/dev/null; then
  python3 -m venv "$venv" && "$venv/bin/pip" install -q numpy pyyaml || {
    echo "SKIP: could not install numpy for the GGUF writer; nothing measured"
    exit 0
  }
fi
model="$cache/smollm2-135m-shape-seed0"
if [[ ! -f "$model/model-f16.gguf" || ! -f "$model/fedge/model.safetensors" ]]; then
  nice -n 5 "$venv/bin/python" "$root/bench/decode/make_model.py" --out "$model" --seed 0 \
    --gguf-py "$LLAMA_CPP_SRC/gguf-py"
fi
if [[ ! -f "$model/model-q8_0.gguf" ]]; then
  nice -n 5 "$llama_quantize" "$model/model-f32.gguf" "$model/model-q8_0.gguf.tmp" Q8_0 >/dev/null 2>&1
  mv "$model/model-q8_0.gguf.tmp" "$model/model-q8_0.gguf"
fi

[[ -n "$csv" ]] || csv=$(mktemp /tmp/decode-compare.XXXXXX.csv)
echo "engine,weights,threads,prefill_tps,decode_tps" >"$csv"
# avg_ts of llama-bench's one CSV row.
llama_ts() {
  nice -n 5 "$llama_bench" "$@" -r 1 -o csv 2>/dev/null |
    python3 -c 'import csv,sys; print(next(csv.DictReader(sys.stdin))["avg_ts"])'
}
echo "model: $model ($(date -u +%FT%TZ), load $(cut -d' ' -f1 /proc/loadavg))" >&2
echo "prompt $prompt tokens, $gen generated, threads: $threads, $runs interleaved rounds" >&2
for ((r = 1; r <= runs; ++r)); do
  for t in $threads; do
    OMP_NUM_THREADS=$t nice -n 5 "$fedge_bench" --compare --model "$model/fedge" --threads "$t" \
      --prompt-tokens "$prompt" --tokens "$gen" --kernels "$kernels" --runs 1 2>/dev/null >>"$csv"
    for w in f32 f16 q8_0; do
      pp=$(llama_ts -m "$model/model-$w.gguf" -t "$t" -p "$prompt" -n 0)
      tg=$(llama_ts -m "$model/model-$w.gguf" -t "$t" -p 0 -n "$gen" -d "$prompt")
      echo "llama.cpp,$w,$t,$pp,$tg" >>"$csv"
    done
  done
  echo "round $r/$runs done (load $(cut -d' ' -f1 /proc/loadavg))" >&2
done
python3 "$root/bench/decode/summarize.py" "$csv"
echo "raw measurements: $csv"
