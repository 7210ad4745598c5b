#!/usr/bin/env bash
# The operator scale benchmark against a real API server, in one command (issue 14 item 3):
# starts (or reuses) a private control plane, installs the CRD, runs fedge_bench_operator at
# 1/10/100 nodes (--runs each, p50) and at 1,000 nodes (once), and prints the load average
# and the control plane's CPU seconds around each run, so the figures can be quoted with
# the conditions they were measured in.
#
#   flock /tmp/fedge-ninja.lock ninja -C build -j2 fedge_bench_operator
#   bench/operator_bench.sh                 # 1,10,100 x5 then 1000 x1
#   RUNS=3 SIZES=100 BIG= bench/operator_bench.sh
#
# Environment: FEDGE_CP_DIR (default /tmp/fedge-cp-opbench; stopped afterwards only if
# this script started it), BUILD (default build), SIZES (1,10,100), RUNS (5), BIG (1000;
# empty skips it), CONCURRENCY (the operator's --apply-concurrency default when empty),
# NODES_KIND (ready: Nodes registered as kubelets do - Ready, capacity, Leases renewed -
# the default; bare: Node objects without status, the figures before session 14).
set -euo pipefail
HERE="$(cd "$(dirname "$0")/.." && pwd)"
export FEDGE_CP_DIR="${FEDGE_CP_DIR:-/tmp/fedge-cp-opbench}"
BUILD="${BUILD:-$HERE/build}"
SIZES="${SIZES:-1,10,100}"
RUNS="${RUNS:-5}"
BIG="${BIG-1000}"
BENCH="$BUILD/bench/fedge_bench_operator"
[[ -x "$BENCH" ]] || { echo "build $BENCH first: ninja -C build fedge_bench_operator" >&2; exit 2; }

started=0
# Stop what this script started also when a run fails (set -e ends the script there).
trap '[[ "$started" == 1 ]] && "$HERE/scripts/cluster/stop-control-plane.sh" >&2' EXIT
if ! [[ -f "$FEDGE_CP_DIR/run/kube-apiserver.pid" ]] || ! kill -0 "$(cat "$FEDGE_CP_DIR/run/kube-apiserver.pid")" 2>/dev/null; then
  "$HERE/scripts/cluster/start-control-plane.sh" >&2
  started=1
fi
KUBECTL=/var/cache/fedge/control-plane/v1.36.3/bin/kubectl
command -v kubectl >/dev/null && [[ ! -x "$KUBECTL" ]] && KUBECTL=kubectl
"$KUBECTL" --kubeconfig "$FEDGE_CP_DIR/kubeconfig" apply -f "$HERE/crds/" >&2
"$KUBECTL" --kubeconfig "$FEDGE_CP_DIR/kubeconfig" wait --for=condition=Established \
  crd/federatedtrainingjobs.fedge.io --timeout=60s >&2

cpu() {  # CPU seconds (user+system) of a control-plane process
  local f="$FEDGE_CP_DIR/run/$1.pid"
  [[ -f "$f" ]] && awk '{printf "%.1f", ($14+$15)/100}' "/proc/$(cat "$f")/stat" 2>/dev/null || echo 0
}
run() {  # run <sizes> <runs>
  local names=(kube-apiserver etcd kube-controller-manager kube-scheduler) before=() i
  for i in "${!names[@]}"; do before[$i]=$(cpu "${names[$i]}"); done
  echo "== $(date -u +%H:%M:%S) UTC, load average $(cut -d' ' -f1-3 /proc/loadavg), nodes $1, runs $2"
  local extra=()
  [[ -n "${CONCURRENCY:-}" ]] && extra=(--concurrency "$CONCURRENCY")
  extra+=(--nodes-kind "${NODES_KIND:-ready}")
  nice -n 10 "$BENCH" --kubeconfig "$FEDGE_CP_DIR/kubeconfig" --nodes "$1" --runs "$2" "${extra[@]}"
  echo "== $(date -u +%H:%M:%S) UTC, load average $(cut -d' ' -f1-3 /proc/loadavg)"
  local line="control plane CPU during it (s):"
  for i in "${!names[@]}"; do
    line+=" ${names[$i]} $(awk -v a="$(cpu "${names[$i]}")" -v b="${before[$i]}" 'BEGIN{printf "%.1f", a-b}')"
  done
  echo "$line"
}
run "$SIZES" "$RUNS"
if [[ -n "$BIG" ]]; then run "$BIG" 1; fi
