#!/usr/bin/env bash
# Installs fedge's build and runtime dependencies from Debian's packages.
# Idempotent: packages already present are skipped by apt.
set -euo pipefail

PACKAGES=(
  build-essential cmake ninja-build pkg-config git clang-format
  libtorch-dev libopenblas0-openmp          # without OpenBLAS libtorch uses reference BLAS (30x slower)
  libgrpc++-dev libprotobuf-dev protobuf-compiler protobuf-compiler-grpc
  libcpprest-dev prometheus-cpp-dev libssl-dev openssl
  nlohmann-json3-dev libyaml-cpp-dev libspdlog-dev libcli11-dev libzstd-dev
  libxxhash-dev                             # common: XXH3-128 upload checksums (tensor_bundle.h)
  libgtest-dev libgmock-dev libbenchmark-dev
  libeigen3-dev                             # aggregator: SVD for LoRA product aggregation
  libboost-dev                              # common: Boost.Beast/Asio HTTP server (header-only)
  ccache                                    # compiler cache: rebuilds and CI reruns
  libcpp-httplib-dev                        # bench/http_server_bench.cpp only: the candidate server it compares
  wordnet-base                              # the quickstart's data
  prometheus                                # tests/e2e/prometheus_test.py scrapes real endpoints
  containerd runc containernetworking-plugins  # scripts/cluster/start-cluster.sh: the real nodes' runtime and CNI
  iptables conntrack                        # kube-proxy (iptables mode) in each node's network namespace
  ipset                                     # kube-router's NetworkPolicy controller on each node (start-cluster.sh)
  busybox-static                            # the test cluster's test/helper image (scripts/cluster/build-nodes.sh)
  python3 python3-pip unzip curl
  python3-yaml                              # tests/helm: parses helm template output
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "install-deps: installing ${missing[*]}"
  SUDO=""
  [[ $(id -u) -ne 0 ]] && SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  echo "install-deps: all ${#PACKAGES[@]} packages present"
fi
