#!/usr/bin/env bash
# Builds everything the test cluster with real nodes needs, each part cached (a second run
# returns at once): the control plane, kubelet + kube-proxy + the node images, kine, CoreDNS.
# Then `scripts/cluster/start-cluster.sh` starts the cluster and ctest's
# integration_real_nodes runs instead of reporting SKIPPED.
# Prints one line per part: its cache directory.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
"$HERE/build-control-plane.sh"
"$HERE/build-nodes.sh"
"$HERE/build-kine.sh"
"$HERE/build-coredns.sh"
