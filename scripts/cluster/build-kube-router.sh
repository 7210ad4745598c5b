#!/usr/bin/env bash
# Builds kube-router (github.com/cloudnativelabs/kube-router/v2) from the Go module proxy:
# the NetworkPolicy controller K3s embeds in every node (its agent runs kube-router's netpol
# package; `--disable-network-policy` turns it off). The test cluster runs it on each node
# with --run-firewall only (start-cluster.sh), so the NetworkPolicies fedge creates are
# enforced there as on K3s: iptables in the node's network namespace, ipset, a default drop
# for every pod a policy selects.
#
# v2.1.0 is the one version the module proxy serves here. Its published advisory
# (GHSA-phqm-jgc3-qf8g) is in the service proxy (--run-service-proxy: externalIPs and
# load-balancer IPs copied onto the node); the test cluster never runs that module.
#
# Output (cached; a second run returns at once):
#   $FEDGE_KUBE_ROUTER_CACHE/<version>/bin/kube-router
# FEDGE_KUBE_ROUTER_CACHE defaults to /var/cache/fedge/kube-router when writable, else
# $HOME/.cache/fedge/kube-router. Prints the bin directory on success. The stamp file
# <version>/.complete records the wall and CPU seconds of the build.
#
# Environment:
#   FEDGE_KUBE_ROUTER_VERSION  module version (default v2.1.0)
#   FEDGE_CP_JOBS              parallel Go package builds (default 1: the machine is shared)
set -euo pipefail

VERSION="${FEDGE_KUBE_ROUTER_VERSION:-v2.1.0}"
JOBS="${FEDGE_CP_JOBS:-1}"
if [[ -z "${FEDGE_KUBE_ROUTER_CACHE:-}" ]]; then
  if mkdir -p /var/cache/fedge/kube-router 2>/dev/null && [[ -w /var/cache/fedge/kube-router ]]; then
    FEDGE_KUBE_ROUTER_CACHE=/var/cache/fedge/kube-router
  else
    FEDGE_KUBE_ROUTER_CACHE="$HOME/.cache/fedge/kube-router"
  fi
fi
OUT="$FEDGE_KUBE_ROUTER_CACHE/$VERSION"
BIN="$OUT/bin"
STAMP="$OUT/.complete"
if [[ -f "$STAMP" && -x "$BIN/kube-router" ]]; then
  echo "$BIN"
  exit 0
fi

command -v go >/dev/null || { echo "build-kube-router: go is not installed (scripts/install-deps.sh)" >&2; exit 1; }
mkdir -p "$BIN"
log() { echo "[build-kube-router $(date +%H:%M:%S)] $*" >&2; }
start=$(date +%s)
log "github.com/cloudnativelabs/kube-router/v2/cmd/kube-router@$VERSION into $BIN"

# `go install pkg@version` builds with the module's own go.mod (it has no replace
# directives), into a temporary GOBIN so a failed build leaves no half binary behind.
TMPBIN="$(mktemp -d "$OUT/gobin.XXXXXX")"
trap 'rm -rf "$TMPBIN"' EXIT
V=github.com/cloudnativelabs/kube-router/v2/pkg/version
env GOBIN="$TMPBIN" CGO_ENABLED=0 GOFLAGS="-p=$JOBS -trimpath" \
  go install -ldflags "-s -w -X $V.Version=$VERSION -X $V.BuildDate=module" \
    "github.com/cloudnativelabs/kube-router/v2/cmd/kube-router@$VERSION" >&2
times > "$OUT/.times"
cpu=$(awk 'NR==2 { split($1, u, /[ms]/); split($2, s, /[ms]/); printf "%d", u[1]*60 + u[2] + s[1]*60 + s[2] }' "$OUT/.times")
rm -f "$OUT/.times"
mv "$TMPBIN/kube-router" "$BIN/kube-router"
"$BIN/kube-router" --version >/dev/null 2>&1 || { log "the built kube-router does not run"; exit 1; }
echo "$VERSION built=$(date -u +%FT%TZ) wall_seconds=$(( $(date +%s) - start )) cpu_seconds=$cpu" > "$STAMP"
log "done in $(( $(date +%s) - start )) s wall, $cpu s CPU"
echo "$BIN"
