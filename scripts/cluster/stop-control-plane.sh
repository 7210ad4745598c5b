#!/usr/bin/env bash
# Stops the control plane started by start-control-plane.sh (by its pid files) and, with
# --purge, deletes its state directory (certificates, etcd or kine data, logs).
set -euo pipefail
DIR="${FEDGE_CP_DIR:-/tmp/fedge-control-plane}"
# An exited process that waits for its (re)parent to reap it (a zombie) counts as stopped.
running() {
  local state
  state="$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)"
  [[ -n "$state" && "$state" != Z ]]
}
for name in kube-scheduler kube-controller-manager kube-apiserver etcd kine; do
  f="$DIR/run/$name.pid"
  [[ -f "$f" ]] || continue
  pid="$(cat "$f")"
  if running "$pid"; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do running "$pid" || break; sleep 0.1; done
    running "$pid" && kill -KILL "$pid" 2>/dev/null || true
    echo "[stop-control-plane] stopped $name ($pid)" >&2
  fi
  rm -f "$f"
done
if [[ "${1:-}" == "--purge" ]]; then
  rm -rf "$DIR"
  echo "[stop-control-plane] removed $DIR" >&2
fi
