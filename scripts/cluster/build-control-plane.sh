#!/usr/bin/env bash
# Builds a real Kubernetes control plane for fedge's integration tests from the Go module
# proxy: kube-apiserver, kube-controller-manager, kube-scheduler and kubectl from
# k8s.io/kubernetes at a pinned version, plus etcd from go.etcd.io/etcd/server/v3 at the
# version that Kubernetes release pins. Nothing is downloaded except Go modules.
#
# k8s.io/kubernetes cannot be built with a plain `go install` because its go.mod replaces
# every k8s.io/* staging module with ./staging/src/..., which the module zip does not
# contain. We therefore build in a scratch module that requires k8s.io/kubernetes and
# replaces each staging module with its published v0.<minor>.<patch> release.
#
# Output (cached; a second run returns at once):
#   $FEDGE_CP_CACHE/<k8s version>/bin/{kube-apiserver,kube-controller-manager,
#                                      kube-scheduler,kubectl,etcd}
# FEDGE_CP_CACHE defaults to /var/cache/fedge/control-plane when writable, else
# $HOME/.cache/fedge/control-plane. Prints the bin directory on success.
#
# Environment:
#   FEDGE_K8S_VERSION   Kubernetes release to build (default v1.36.3)
#   FEDGE_CP_JOBS       parallel Go package builds (default 1: the machine is shared)
#   FEDGE_CP_SKIP_KUBECTL=1  skip kubectl (uses the system kubectl, if any, instead)
set -euo pipefail

K8S_VERSION="${FEDGE_K8S_VERSION:-v1.36.3}"
STAGING_VERSION="v0.${K8S_VERSION#v1.}"
JOBS="${FEDGE_CP_JOBS:-1}"

if [[ -z "${FEDGE_CP_CACHE:-}" ]]; then
  if mkdir -p /var/cache/fedge/control-plane 2>/dev/null && [[ -w /var/cache/fedge/control-plane ]]; then
    FEDGE_CP_CACHE=/var/cache/fedge/control-plane
  else
    FEDGE_CP_CACHE="$HOME/.cache/fedge/control-plane"
  fi
fi
OUT="$FEDGE_CP_CACHE/$K8S_VERSION"
BIN="$OUT/bin"
STAMP="$OUT/.complete"
BINARIES=(kube-apiserver kube-controller-manager kube-scheduler etcd)
[[ "${FEDGE_CP_SKIP_KUBECTL:-0}" == 1 ]] || BINARIES+=(kubectl)

all_present() {
  [[ -f "$STAMP" ]] || return 1
  for b in "${BINARIES[@]}"; do [[ -x "$BIN/$b" ]] || return 1; done
}
if all_present; then
  echo "$BIN"
  exit 0
fi

command -v go >/dev/null || { echo "build-control-plane: go is not installed" >&2; exit 1; }
mkdir -p "$BIN" "$OUT/src"
SRC="$OUT/src"
log() { echo "[build-control-plane $(date +%H:%M:%S)] $*" >&2; }
start=$(date +%s)

log "k8s.io/kubernetes $K8S_VERSION (staging modules at $STAGING_VERSION) into $BIN"
cd "$SRC"
if [[ ! -f go.mod ]]; then
  cat > go.mod <<EOF
module fedge.local/controlplane

go 1.26.0
EOF
fi

# The upstream go.mod lists the staging modules in its replace block; mirror that list
# so a new staging module in a later release is handled without editing this script.
go mod download -json "k8s.io/kubernetes@$K8S_VERSION" >/dev/null
UPSTREAM_MOD="$(go env GOMODCACHE)/cache/download/k8s.io/kubernetes/@v/$K8S_VERSION.mod"
mapfile -t STAGING < <(sed -n 's#^\s*\(k8s\.io/[a-z0-9-]*\) => \./staging/.*#\1#p' "$UPSTREAM_MOD")
[[ ${#STAGING[@]} -gt 10 ]] || { log "could not read staging modules from $UPSTREAM_MOD"; exit 1; }
ETCD_VERSION=$(sed -n 's#^\s*go\.etcd\.io/etcd/server/v3 \(v[0-9.]*\).*#\1#p' "$UPSTREAM_MOD" | awk 'NR == 1')
ETCD_VERSION="${ETCD_VERSION:-v3.6.8}"

go mod edit -require="k8s.io/kubernetes@$K8S_VERSION"
go mod edit -require="go.etcd.io/etcd/server/v3@$ETCD_VERSION"
for m in "${STAGING[@]}"; do
  case "$m" in k8s.io/sample-*) continue ;; esac  # examples, never in the build graph
  go mod edit -replace="$m=$m@$STAGING_VERSION"
done
# Upstream's replace lines do not apply to a dependency, but its require block does, so
# minimal version selection still picks the versions that release was tested with.
cat > tools.go <<'EOF'
//go:build tools

package tools

import (
	_ "go.etcd.io/etcd/server/v3"
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
EOF
log "resolving modules (go mod tidy)"
GOFLAGS="-mod=mod" go mod tidy >&2

export GOFLAGS="-mod=mod -p=$JOBS -trimpath"
export CGO_ENABLED=0
build() {
  local name="$1" pkg="$2" t0
  if [[ -x "$BIN/$name" ]]; then log "$name: cached"; return; fi
  t0=$(date +%s)
  log "building $name ($pkg)"
  go build -ldflags "-s -w -X k8s.io/component-base/version.gitVersion=$K8S_VERSION -X k8s.io/client-go/pkg/version.gitVersion=$K8S_VERSION" \
    -o "$BIN/$name.tmp" "$pkg"
  mv "$BIN/$name.tmp" "$BIN/$name"
  log "$name: built in $(( $(date +%s) - t0 )) s"
}
build etcd go.etcd.io/etcd/server/v3
build kube-apiserver k8s.io/kubernetes/cmd/kube-apiserver
build kube-controller-manager k8s.io/kubernetes/cmd/kube-controller-manager
build kube-scheduler k8s.io/kubernetes/cmd/kube-scheduler
if [[ "${FEDGE_CP_SKIP_KUBECTL:-0}" != 1 ]]; then
  build kubectl k8s.io/kubernetes/cmd/kubectl
fi
echo "$K8S_VERSION etcd=$ETCD_VERSION built=$(date -u +%FT%TZ) seconds=$(( $(date +%s) - start ))" > "$STAMP"
log "done in $(( $(date +%s) - start )) s"
echo "$BIN"
