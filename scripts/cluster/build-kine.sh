#!/usr/bin/env bash
# Builds kine (github.com/k3s-io/kine), the etcd-API shim K3s runs in front of SQLite, from
# the Go module proxy, the way kine's own scripts/build does for K3s: CGO on, SQLite from
# github.com/mattn/go-sqlite3 compiled with the same CGO_CFLAGS and build tags, statically
# linked. The "nats" tag is left out: it only adds the embedded NATS backend, which fedge's
# test cluster does not use, and would double the build.
#
# Output (cached; a second run returns at once):
#   $FEDGE_KINE_CACHE/<kine version>/bin/kine
# FEDGE_KINE_CACHE defaults to /var/cache/fedge/kine when writable, else
# $HOME/.cache/fedge/kine. Prints the bin directory on success. The stamp file
# $FEDGE_KINE_CACHE/<version>/.complete records the wall and CPU seconds of the build.
#
# Environment:
#   FEDGE_KINE_VERSION  kine release (default v0.17.5)
#   FEDGE_CP_JOBS       parallel Go package builds (default 1: the machine is shared)
set -euo pipefail

KINE_VERSION="${FEDGE_KINE_VERSION:-v0.17.5}"
JOBS="${FEDGE_CP_JOBS:-1}"
if [[ -z "${FEDGE_KINE_CACHE:-}" ]]; then
  if mkdir -p /var/cache/fedge/kine 2>/dev/null && [[ -w /var/cache/fedge/kine ]]; then
    FEDGE_KINE_CACHE=/var/cache/fedge/kine
  else
    FEDGE_KINE_CACHE="$HOME/.cache/fedge/kine"
  fi
fi
OUT="$FEDGE_KINE_CACHE/$KINE_VERSION"
BIN="$OUT/bin"
STAMP="$OUT/.complete"
if [[ -f "$STAMP" && -x "$BIN/kine" ]]; then
  echo "$BIN"
  exit 0
fi

command -v go >/dev/null || { echo "build-kine: go is not installed" >&2; exit 1; }
command -v gcc >/dev/null || { echo "build-kine: gcc is needed (kine's SQLite driver is cgo); run scripts/install-deps.sh" >&2; exit 1; }
mkdir -p "$BIN"
log() { echo "[build-kine $(date +%H:%M:%S)] $*" >&2; }
start=$(date +%s)
log "github.com/k3s-io/kine@$KINE_VERSION into $BIN"

# Same defines as kine's scripts/build (synced there with modernc.org/sqlite's options).
CGO_CFLAGS="-DSQLITE_DEFAULT_MEMSTATUS=0 -DSQLITE_DISABLE_INTRINSIC -DSQLITE_ENABLE_COLUMN_METADATA
  -DSQLITE_ENABLE_DBPAGE_VTAB -DSQLITE_ENABLE_DBSTAT_VTAB -DSQLITE_ENABLE_MATH_FUNCTIONS
  -DSQLITE_ENABLE_MEMORY_MANAGEMENT -DSQLITE_ENABLE_OFFSET_SQL_FUNC -DSQLITE_ENABLE_PREUPDATE_HOOK
  -DSQLITE_ENABLE_RBU -DSQLITE_ENABLE_RTREE -DSQLITE_ENABLE_SESSION -DSQLITE_ENABLE_SNAPSHOT
  -DSQLITE_ENABLE_STAT4 -DSQLITE_ENABLE_UNLOCK_NOTIFY -DSQLITE_LIKE_DOESNT_MATCH_BLOBS
  -DSQLITE_THREADSAFE=1 -DSQLITE_WITHOUT_ZONEMALLOC -O2"
TAGS="sqlite_unlock_notify,sqlite_vtable,sqlite_stat4,sqlite_preupdate_hook,sqlite_math_functions,sqlite_dbstat,sqlite_column_metadata"

# `go install pkg@version` builds the module with its own go.mod (kine has no replace
# directives), into a temporary GOBIN so a failed build leaves no half binary behind.
TMPBIN="$(mktemp -d "$OUT/gobin.XXXXXX")"
trap 'rm -rf "$TMPBIN"' EXIT
env GOBIN="$TMPBIN" CGO_ENABLED=1 CGO_CFLAGS="$CGO_CFLAGS" GOFLAGS="-p=$JOBS -trimpath" \
  go install -tags "$TAGS" \
    -ldflags "-s -w -extldflags -static -X github.com/k3s-io/kine/pkg/version.Version=$KINE_VERSION" \
    "github.com/k3s-io/kine@$KINE_VERSION" >&2
# CPU seconds of all finished children (the `times` builtin, run in this shell, not a
# subshell): unlike wall time it does not depend on what else the machine is doing.
times > "$OUT/.times"
cpu=$(awk 'NR==2 { split($1, u, /[ms]/); split($2, s, /[ms]/); printf "%d", u[1]*60 + u[2] + s[1]*60 + s[2] }' "$OUT/.times")
rm -f "$OUT/.times"
mv "$TMPBIN/kine" "$BIN/kine"
"$BIN/kine" --version >/dev/null 2>&1 || { log "built kine does not run"; exit 1; }
echo "$KINE_VERSION built=$(date -u +%FT%TZ) wall_seconds=$(( $(date +%s) - start )) cpu_seconds=$cpu" > "$STAMP"
log "done in $(( $(date +%s) - start )) s wall, $cpu s CPU"
echo "$BIN"
