#!/usr/bin/env bash
# Fetches llama.cpp's source from the PyPI source package of llama-cpp-python
# (vendor/llama.cpp inside it) and builds llama-bench and llama-quantize only.
# Cached under ${FEDGE_LLAMA_CPP_CACHE:-/var/cache/fedge/llama-cpp}/<version>.
# Never part of the build or CI: callers skip when this exits 2.
#
# Prints two lines on stdout, LLAMA_CPP_BUILD=<dir holding bin/llama-bench and
# bin/llama-quantize> and LLAMA_CPP_SRC=<vendor/llama.cpp>. Exit 0 on success, 2 when the source cannot be had (no pip, no
# registry), 1 when the build fails.
set -euo pipefail
version="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
cache="${FEDGE_LLAMA_CPP_CACHE:-/var/cache/fedge/llama-cpp}"
mkdir -p "$cache" 2>/dev/null || cache="$HOME/.cache/fedge/llama-cpp"
mkdir -p "$cache"
sdist="$cache/llama_cpp_python-$version.tar.gz"
src="$cache/src/llama_cpp_python-$version/vendor/llama.cpp"
build="$cache/build-$version"

exec 9>"$cache/.lock"
flock 9

if [[ ! -f "$sdist" ]]; then
  if ! command -v pip >/dev/null 2>&1 && ! command -v pip3 >/dev/null 2>&1; then
    echo "skip: pip is not installed, cannot fetch llama-cpp-python $version's source" >&2
    exit 2
  fi
  pipcmd=$(command -v pip || command -v pip3)
  if ! timeout 600 "$pipcmd" download --no-binary :all: --no-deps "llama-cpp-python==$version" \
      -d "$cache" >&2; then
    echo "skip: could not download the llama-cpp-python $version source package from PyPI" >&2
    exit 2
  fi
fi
if [[ ! -f "$src/CMakeLists.txt" ]]; then
  mkdir -p "$cache/src"
  tar -xzf "$sdist" -C "$cache/src"
fi
# The CPU's own ISA flags rather than GGML_NATIVE: a native build on a CPU with
# AMX compiles ggml's AMX matmul, which segfaults in prompt processing of Q8_0
# models on this (virtualised) machine (ggml_backend_amx_mul_mat, 2026-12-03).
flags=$(grep -m1 '^flags' /proc/cpuinfo || true)
isa=(-DGGML_NATIVE=OFF)
for pair in avx:GGML_AVX avx2:GGML_AVX2 fma:GGML_FMA f16c:GGML_F16C bmi2:GGML_BMI2 \
    avx512f:GGML_AVX512 avx512_vnni:GGML_AVX512_VNNI avx512vbmi:GGML_AVX512_VBMI \
    avx512_bf16:GGML_AVX512_BF16 avx_vnni:GGML_AVX_VNNI; do
  if [[ " $flags " == *" ${pair%%:*} "* ]]; then isa+=("-D${pair##*:}=ON"); else isa+=("-D${pair##*:}=OFF"); fi
done
config="${isa[*]}"
if [[ ! -x "$build/bin/llama-bench" || ! -x "$build/bin/llama-quantize" ||
      "$(cat "$build/.fedge-config" 2>/dev/null)" != "$config" ]]; then
  # CPU only, static, no network code; -j2 under nice: the machine is shared.
  nice -n 10 cmake -S "$src" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DBUILD_SHARED_LIBS=OFF -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_TOOLS=ON \
    "${isa[@]}" >&2
  nice -n 10 cmake --build "$build" -j2 --target llama-bench llama-quantize >&2
  echo "$config" >"$build/.fedge-config"
fi
echo "LLAMA_CPP_BUILD=$build"
echo "LLAMA_CPP_SRC=$src"
