#!/usr/bin/env bash
# Builds CoreDNS, the cluster DNS K3s deploys, from the Go module proxy and packs it as the
# OCI archive fedge.local/coredns:<version> that start-cluster.sh imports into every node.
#
# CoreDNS's own main links all ~60 in-tree plugins (cloud DNS SDKs, tracing, GeoIP...). We
# build it the way CoreDNS documents for custom builds: a scratch module whose main imports
# coremain plus only the plugins of K3s's Corefile (errors, health, ready, kubernetes,
# hosts, prometheus, forward, cache, loop, reload, loadbalance, log). Directive order comes
# from CoreDNS's own core/dnsserver, so a Corefile behaves as in the upstream binary.
#
# Output (cached; a second run returns at once):
#   $FEDGE_COREDNS_CACHE/<version>/bin/coredns, $FEDGE_COREDNS_CACHE/<version>/coredns.tar
# FEDGE_COREDNS_CACHE defaults to /var/cache/fedge/coredns when writable, else
# $HOME/.cache/fedge/coredns. Prints the version directory on success; the stamp
# .complete there records wall and CPU seconds.
#
# Environment: FEDGE_COREDNS_VERSION (default v1.15.0), FEDGE_CP_JOBS (default 1).
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
VERSION="${FEDGE_COREDNS_VERSION:-v1.15.0}"
JOBS="${FEDGE_CP_JOBS:-1}"
if [[ -z "${FEDGE_COREDNS_CACHE:-}" ]]; then
  if mkdir -p /var/cache/fedge/coredns 2>/dev/null && [[ -w /var/cache/fedge/coredns ]]; then
    FEDGE_COREDNS_CACHE=/var/cache/fedge/coredns
  else
    FEDGE_COREDNS_CACHE="$HOME/.cache/fedge/coredns"
  fi
fi
OUT="$FEDGE_COREDNS_CACHE/$VERSION"
STAMP="$OUT/.complete"
if [[ -f "$STAMP" && -x "$OUT/bin/coredns" && -s "$OUT/coredns.tar" ]]; then
  echo "$OUT"
  exit 0
fi
command -v go >/dev/null || { echo "build-coredns: go is not installed" >&2; exit 1; }
log() { echo "[build-coredns $(date +%H:%M:%S)] $*" >&2; }
mkdir -p "$OUT/bin" "$OUT/src"
start=$(date +%s)
log "github.com/coredns/coredns@$VERSION (K3s's plugins) into $OUT"

cd "$OUT/src"
cat > go.mod <<EOF
module fedge.local/coredns

go 1.26.0

require github.com/coredns/coredns $VERSION
EOF
cat > main.go <<'EOF'
// CoreDNS with the plugins of K3s's Corefile only (scripts/cluster/build-coredns.sh).
package main

import (
	_ "github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/forward"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/hosts"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/loadbalance"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/loop"
	_ "github.com/coredns/coredns/plugin/metrics"
	_ "github.com/coredns/coredns/plugin/ready"
	_ "github.com/coredns/coredns/plugin/reload"
)

func main() { coremain.Run() }
EOF
log "resolving modules (go mod tidy)"
GOFLAGS="-mod=mod" go mod tidy >&2

times > "$OUT/.times0"
CGO_ENABLED=0 GOFLAGS="-mod=mod -p=$JOBS -trimpath" \
  go build -ldflags "-s -w -X github.com/coredns/coredns/coremain.GitCommit=$VERSION" \
  -o "$OUT/bin/coredns.tmp" .
times > "$OUT/.times1"
cpu() { awk 'NR==2 { split($1, u, /[ms]/); split($2, s, /[ms]/); printf "%d", u[1]*60 + u[2] + s[1]*60 + s[2] }' "$1"; }
build_cpu=$(( $(cpu "$OUT/.times1") - $(cpu "$OUT/.times0") ))
rm -f "$OUT/.times0" "$OUT/.times1"
mv "$OUT/bin/coredns.tmp" "$OUT/bin/coredns"
# grep without -q reads to the end: -q exits at the match and, under pipefail, the
# SIGPIPE coredns then gets writing the rest of the list would fail this check.
"$OUT/bin/coredns" -plugins | grep -w kubernetes >/dev/null || { log "built coredns lacks the kubernetes plugin"; exit 1; }

python3 "$HERE/oci-image.py" --name "fedge.local/coredns:${VERSION#v}" --out "$OUT/coredns.tar" \
  --add "$OUT/bin/coredns:/coredns:0755" --entrypoint /coredns \
  --label org.opencontainers.image.title=coredns \
  --label "org.opencontainers.image.version=${VERSION#v}" \
  --label "org.opencontainers.image.description=CoreDNS with K3s's Corefile plugins, for fedge's test cluster" >&2

echo "$VERSION built=$(date -u +%FT%TZ) wall_seconds=$(( $(date +%s) - start )) build_cpu_seconds=$build_cpu" > "$STAMP"
log "done in $(( $(date +%s) - start )) s wall ($build_cpu s CPU for go build)"
echo "$OUT"
