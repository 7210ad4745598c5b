#!/usr/bin/env bash
# Builds upstream Prometheus from the Go module proxy, with Kubernetes service discovery,
# for the real-node end-to-end test (tests/cluster/real_e2e_test.py). Debian 12's
# `prometheus` package (2.42) is built WITHOUT kubernetes_sd_configs (client-go is not
# packaged: `promtool check config` says "field kubernetes_sd_configs not found"), and the
# test scrapes the job's pods through in-cluster discovery, as a user's Prometheus does.
#
#   go install -tags remove_all_sd,enable_kubernetes_sd \
#     github.com/prometheus/prometheus/cmd/{prometheus,promtool}@<module version>
#
# Only the Kubernetes discovery plugin is compiled in (Prometheus's own build tags; the
# other SD plugins pull in the AWS/Azure/GCE SDKs). The web UI assets are not embedded
# (no `builtinassets` tag): the HTTP API the test queries works without them. Nothing is
# downloaded except Go modules.
#
# Output (cached; a second run returns at once):
#   $FEDGE_PROMETHEUS_CACHE/<version>/bin/{prometheus,promtool}
# FEDGE_PROMETHEUS_CACHE defaults to /var/cache/fedge/prometheus when writable, else
# $HOME/.cache/fedge/prometheus. Prints the path of the prometheus binary on success.
#
# Environment:
#   FEDGE_PROMETHEUS_VERSION  Go module version (default v0.316.0 = Prometheus 3.16.0)
#   FEDGE_PROMETHEUS_JOBS     parallel Go package builds (default 1: the machine is shared)
set -euo pipefail

MOD_VERSION="${FEDGE_PROMETHEUS_VERSION:-v0.316.0}"
JOBS="${FEDGE_PROMETHEUS_JOBS:-1}"
# v0.316.0 -> 3.16.0 (Prometheus 3.x tags its Go module v0.3MM.P).
if [[ "$MOD_VERSION" =~ ^v0\.3([0-9][0-9])\.([0-9]+)$ ]]; then
  APP_VERSION="3.$((10#${BASH_REMATCH[1]})).${BASH_REMATCH[2]}"
else
  APP_VERSION="$MOD_VERSION"
fi

if [[ -z "${FEDGE_PROMETHEUS_CACHE:-}" ]]; then
  if mkdir -p /var/cache/fedge/prometheus 2>/dev/null && [[ -w /var/cache/fedge/prometheus ]]; then
    FEDGE_PROMETHEUS_CACHE=/var/cache/fedge/prometheus
  else
    FEDGE_PROMETHEUS_CACHE="$HOME/.cache/fedge/prometheus"
  fi
fi
OUT="$FEDGE_PROMETHEUS_CACHE/$MOD_VERSION"
BIN="$OUT/bin"
STAMP="$OUT/.complete"

if [[ -f "$STAMP" && -x "$BIN/prometheus" && -x "$BIN/promtool" ]]; then
  echo "$BIN/prometheus"
  exit 0
fi

command -v go >/dev/null || { echo "build-prometheus: go is not installed (scripts/install-deps.sh installs it)" >&2; exit 1; }
log() { echo "[build-prometheus $(date +%H:%M:%S)] $*" >&2; }
mkdir -p "$BIN"
start=$(date +%s)
log "github.com/prometheus/prometheus/cmd/{prometheus,promtool}@$MOD_VERSION (Prometheus $APP_VERSION) into $BIN"
# A temporary GOBIN and a rename keep a half-written binary from looking complete.
TMP="$(mktemp -d "$OUT/gobin.XXXXXX")"
trap 'rm -rf "$TMP"' EXIT
V=github.com/prometheus/common/version
GOFLAGS="-p=$JOBS -trimpath" CGO_ENABLED=0 GOBIN="$TMP" \
  go install -tags remove_all_sd,enable_kubernetes_sd \
  -ldflags "-s -w -X $V.Version=$APP_VERSION -X $V.Branch=module -X $V.Revision=$MOD_VERSION -X $V.BuildUser=fedge" \
  "github.com/prometheus/prometheus/cmd/prometheus@$MOD_VERSION" \
  "github.com/prometheus/prometheus/cmd/promtool@$MOD_VERSION" >&2
# The point of this build: kubernetes_sd_configs must parse.
cat >"$TMP/check.yml" <<'EOF'
scrape_configs:
  - job_name: k8s
    kubernetes_sd_configs:
      - role: pod
EOF
"$TMP/promtool" check config "$TMP/check.yml" >&2 || { log "the built promtool rejects kubernetes_sd_configs"; exit 1; }
mv "$TMP/prometheus" "$BIN/prometheus"
mv "$TMP/promtool" "$BIN/promtool"
"$BIN/prometheus" --version >&2 || { log "the built prometheus does not run"; exit 1; }
echo "$MOD_VERSION app=$APP_VERSION built=$(date -u +%FT%TZ) seconds=$(( $(date +%s) - start ))" > "$STAMP"
log "done in $(( $(date +%s) - start )) s"
echo "$BIN/prometheus"
