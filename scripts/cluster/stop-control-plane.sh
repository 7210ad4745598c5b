#!/usr/bin/env bash
# Stops the control plane started by start-control-plane.sh (by its pid files) and, with
# --purge, deletes its state directory (certificates, etcd or kine data, logs).
set -euo pipefail
DIR="${FEDGE_CP_DIR:-/tmp/fedge-control-plane}"
for name in kube-scheduler kube-controller-manager kube-apiserver etcd kine; do
  f="$DIR/run/$name.pid"
  [[ -f "$f" ]] || continue
  pid="$(cat "$f")"
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
    echo "[stop-control-plane] stopped $name ($pid)" >&2
  fi
  rm -f "$f"
done
if [[ "${1:-}" == "--purge" ]]; then
  rm -rf "$DIR"
  echo "[stop-control-plane] removed $DIR" >&2
fi
