#!/usr/bin/env bash
# Works with the edge nodes of the test cluster started by start-cluster.sh.
#
#   node.sh list                       node names, IPs and disks
#   node.sh import IMAGE.tar [NODE..]  `ctr -n k8s.io images import` into each node's
#                                      containerd (default: every node); pods then use the
#                                      image with imagePullPolicy: Never (or IfNotPresent)
#   node.sh disk NODE                  host directory that NODE sees as /var/lib/fedge
#   node.sh exec NODE CMD...           run CMD in NODE's network and mount namespaces
#   node.sh ctr NODE ARGS...           ctr -n k8s.io against NODE's containerd
#   node.sh pid NODE COMPONENT         pid of kubelet | kube-proxy | kube-router | containerd on NODE
#   node.sh mem                        proportional memory (PSS, MiB) of every cluster
#                                      process, by component, and the total
set -euo pipefail
DIR="${FEDGE_CLUSTER_DIR:-/var/lib/fedge-cluster}"
NSDIR=/run/fedge-cluster/ns
die() { echo "node.sh: $*" >&2; exit 2; }
nodes() { local n; for n in "$DIR"/nodes/*/; do [[ -d "$n" ]] && basename "$n"; done; }
check_node() { [[ -d "$DIR/nodes/$1" ]] || die "no node $1 (nodes: $(nodes | xargs))"; }
sock() { echo "$DIR/nodes/$1/containerd/containerd.sock"; }

cmd="${1:-}"; shift || true
case "$cmd" in
  list)
    for n in $(nodes); do
      ip="$(awk '/^address:/ {print $2}' "$DIR/nodes/$n/kubelet-config.yaml" 2>/dev/null)"
      echo "$n ip=$ip disk=$DIR/nodes/$n/disk"
    done ;;
  import)
    [[ $# -ge 1 && -f "$1" ]] || die "usage: node.sh import IMAGE.tar [NODE...] (file '${1:-}' not found)"
    tar="$1"; shift
    targets=("$@"); [[ ${#targets[@]} -gt 0 ]] || mapfile -t targets < <(nodes)
    for n in "${targets[@]}"; do
      check_node "$n"
      t0=$(date +%s%3N)
      ctr --address "$(sock "$n")" -n k8s.io images import "$tar" >&2
      echo "$n: imported $tar in $(( ($(date +%s%3N) - t0) )) ms"
    done ;;
  disk)
    check_node "${1:-}"; echo "$DIR/nodes/$1/disk" ;;
  exec)
    check_node "${1:-}"; n="$1"; shift
    exec nsenter --net="/run/netns/$n" --mount="$NSDIR/$n.mnt" -- "$@" ;;
  ctr)
    check_node "${1:-}"; n="$1"; shift
    exec ctr --address "$(sock "$n")" -n k8s.io "$@" ;;
  pid)
    check_node "${1:-}"
    case "${2:-}" in kubelet|kube-proxy|kube-router|containerd) ;; *) die "component: kubelet, kube-proxy, kube-router or containerd" ;; esac
    cat "$DIR/nodes/$1/run/$2.pid" ;;
  mem)
    # Every process of the cluster: the control plane's and provisioner's pid files, and
    # everything in a node's network namespace or cgroup tree (containerd, shims, kubelet,
    # kube-proxy, containers).
    declare -A group
    for f in "$DIR"/control-plane/run/*.pid "$DIR"/run/*.pid; do
      [[ -f "$f" ]] && group[$(cat "$f")]="$(basename "$f" .pid)"
    done
    for n in $(nodes); do
      for p in $( (ip netns pids "$n" 2>/dev/null; for h in /sys/fs/cgroup/pids/"$n"; do
                   [[ -d "$h" ]] && find "$h" -name cgroup.procs -exec cat {} +; done) | sort -un); do
        comm="$(cat "/proc/$p/comm" 2>/dev/null || true)"
        case "$comm" in
          kubelet|kube-proxy|kube-router|containerd) group[$p]="$n/$comm" ;;
          containerd-shim*) group[$p]="$n/shims" ;;
          *) group[$p]="$n/containers" ;;
        esac
      done
    done
    declare -A kib
    total=0
    for p in "${!group[@]}"; do
      pss="$(awk '/^Pss:/ {print $2}' "/proc/$p/smaps_rollup" 2>/dev/null || true)"
      [[ -n "$pss" ]] || continue
      kib[${group[$p]}]=$(( ${kib[${group[$p]}]:-0} + pss ))
      total=$((total + pss))
    done
    for g in "${!kib[@]}"; do printf '%-32s %6d MiB\n' "$g" $(( kib[$g] / 1024 )); done | sort
    printf '%-32s %6d MiB\n' total $(( total / 1024 )) ;;
  *)
    sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'
    [[ -z "$cmd" ]] && exit 0 || exit 2 ;;
esac
