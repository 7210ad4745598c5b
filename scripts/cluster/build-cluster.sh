#!/usr/bin/env bash
# Builds everything the test cluster with real nodes needs, each part cached (a second run
# returns at once): the control plane, kubelet + kube-proxy + the node images, kine, CoreDNS,
# kube-router (the NetworkPolicy controller K3s embeds),
# and what the end-to-end suites on those nodes use: helm and Prometheus (with Kubernetes
# service discovery). Then ctest's integration_real_nodes, integration_real_e2e and
# integration_real_chaos run (they start the cluster themselves) instead of reporting SKIPPED.
# Prints one line per part: its cache directory.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
"$HERE/build-control-plane.sh"
"$HERE/build-nodes.sh"
"$HERE/build-kine.sh"
"$HERE/build-coredns.sh"
"$HERE/build-kube-router.sh"
"$HERE/build-helm.sh"
"$HERE/build-prometheus.sh"
