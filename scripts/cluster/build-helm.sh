#!/usr/bin/env bash
# Builds the helm CLI (v4) from the Go module proxy for fedge's chart tests
# (tests/helm): `go install helm.sh/helm/v4/cmd/helm@<version>`. Nothing is downloaded
# except Go modules.
#
# Output (cached; a second run returns at once):
#   $FEDGE_HELM_CACHE/<helm version>/bin/helm
# FEDGE_HELM_CACHE defaults to /var/cache/fedge/helm when writable, else
# $HOME/.cache/fedge/helm. Prints the path of the helm binary on success.
#
# Environment:
#   FEDGE_HELM_VERSION  helm release to build (default v4.3.2)
#   FEDGE_HELM_JOBS     parallel Go package builds (default 1: the machine is shared)
set -euo pipefail

HELM_VERSION="${FEDGE_HELM_VERSION:-v4.3.2}"
JOBS="${FEDGE_HELM_JOBS:-1}"

if [[ -z "${FEDGE_HELM_CACHE:-}" ]]; then
  if mkdir -p /var/cache/fedge/helm 2>/dev/null && [[ -w /var/cache/fedge/helm ]]; then
    FEDGE_HELM_CACHE=/var/cache/fedge/helm
  else
    FEDGE_HELM_CACHE="$HOME/.cache/fedge/helm"
  fi
fi
OUT="$FEDGE_HELM_CACHE/$HELM_VERSION"
BIN="$OUT/bin"
STAMP="$OUT/.complete"

if [[ -f "$STAMP" && -x "$BIN/helm" ]]; then
  echo "$BIN/helm"
  exit 0
fi

command -v go >/dev/null || { echo "build-helm: go is not installed (scripts/install-deps.sh installs it)" >&2; exit 1; }
log() { echo "[build-helm $(date +%H:%M:%S)] $*" >&2; }
mkdir -p "$BIN"
start=$(date +%s)
log "helm.sh/helm/v4/cmd/helm@$HELM_VERSION into $BIN"
# GOBIN must be absolute; a temporary name and a rename keep a half-written binary from
# ever looking complete to a concurrent caller.
TMP="$(mktemp -d "$OUT/gobin.XXXXXX")"
trap 'rm -rf "$TMP"' EXIT
GOFLAGS="-p=$JOBS -trimpath" CGO_ENABLED=0 GOBIN="$TMP" \
  go install -ldflags "-s -w" "helm.sh/helm/v4/cmd/helm@$HELM_VERSION" >&2
mv "$TMP/helm" "$BIN/helm"
"$BIN/helm" version --short >&2 || { log "the built helm does not run"; exit 1; }
echo "$HELM_VERSION built=$(date -u +%FT%TZ) seconds=$(( $(date +%s) - start ))" > "$STAMP"
log "done in $(( $(date +%s) - start )) s"
echo "$BIN/helm"
