#!/usr/bin/env bash
# Tears down what start-cluster.sh set up, in this order: the local-path provisioner; on
# every node the kubelet, every container process (the node's cgroup tree), kube-router, kube-proxy,
# containerd and its shims (everything left in the node's network namespace); the node's
# cgroups, mount namespace and network namespace; the control plane (kine/etcd, API server,
# controller-manager, scheduler); the host routes, bridge fedge0 and the iptables rules
# tagged "fedge-cluster"; then it restores the host sysctls kubelet changed (recorded by
# start-cluster.sh before the first kubelet started).
#
# State (certificates, the SQLite datastore, imported images, node disks) is kept for the
# next start unless --purge is given, which deletes $FEDGE_CLUSTER_DIR.
# Safe to run when nothing (or only part of the cluster) is running.
set -uo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
DIR="${FEDGE_CLUSTER_DIR:-/var/lib/fedge-cluster}"
BRIDGE=fedge0
NSDIR=/run/fedge-cluster/ns
NODE_DISK_PATH=/var/lib/fedge
RULE_COMMENT=fedge-cluster
PURGE=0
case "${1:-}" in
  "") ;;
  --purge) PURGE=1 ;;
  *) echo "usage: $0 [--purge]" >&2; exit 2 ;;
esac
[[ $(id -u) == 0 ]] || { echo "[stop-cluster] must run as root" >&2; exit 1; }
log() { echo "[stop-cluster] $*" >&2; }

# A process that has exited but waits for its (re)parent to reap it is a zombie: gone.
running() {  # pid
  local state
  state="$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)"
  [[ -n "$state" && "$state" != Z ]]
}
stop_pid() {  # pidfile what: TERM, up to 10 s, then KILL
  local f="$1" pid
  [[ -f "$f" ]] || return 0
  pid="$(cat "$f")"
  if running "$pid"; then
    kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 1 100); do running "$pid" || break; sleep 0.1; done
    if running "$pid"; then kill -KILL "$pid" 2>/dev/null; log "killed $2 ($pid)"; else log "stopped $2 ($pid)"; fi
  fi
  rm -f "$f"
}
cgroup_pids() {  # cgroup-name -> every pid in that cgroup tree (any v1 hierarchy)
  local h
  for h in /sys/fs/cgroup/*/; do
    [[ -d "$h$1" ]] && find "$h$1" -name cgroup.procs -exec cat {} + 2>/dev/null
  done | sort -un
}

stop_pid "$DIR/run/local-path-provisioner.pid" local-path-provisioner

shopt -s nullglob
for N in "$DIR"/nodes/*/; do
  N="${N%/}"; name="$(basename "$N")"
  stop_pid "$N/run/kubelet.pid" "$name kubelet"
  # Containers: kill everything in the node's cgroup tree (repeat: a dying process's
  # children may be caught mid-fork).
  for _ in 1 2 3 4 5; do
    pids="$(cgroup_pids "$name")"
    [[ -z "$pids" ]] && break
    # shellcheck disable=SC2086
    kill -KILL $pids 2>/dev/null
    sleep 0.3
  done
  stop_pid "$N/run/kube-router.pid" "$name kube-router"
  stop_pid "$N/run/kube-proxy.pid" "$name kube-proxy"
  stop_pid "$N/run/containerd.pid" "$name containerd"
  if [[ -e "/run/netns/$name" ]]; then
    # What is left in the node's network namespace: containerd shims, hostNetwork pods.
    for _ in 1 2 3 4 5; do
      pids="$(ip netns pids "$name" 2>/dev/null)"
      [[ -z "$pids" ]] && break
      # shellcheck disable=SC2086
      kill -KILL $pids 2>/dev/null
      sleep 0.3
    done
  fi
  # cgroups, deepest first.
  for h in /sys/fs/cgroup/*/; do
    [[ -d "$h$name" ]] && find "$h$name" -depth -type d -exec rmdir {} + 2>/dev/null
  done
  # The mount namespace dies with its last process once its file is unmounted.
  if findmnt -n "$NSDIR/$name.mnt" >/dev/null 2>&1; then umount "$NSDIR/$name.mnt"; fi
  rm -f "$NSDIR/$name.mnt"
  if [[ -e "/run/netns/$name" ]]; then
    ip netns del "$name" && log "removed network namespace $name"
  fi
done

FEDGE_CP_DIR="$DIR/control-plane" "$HERE/stop-control-plane.sh"

# Host network: pod and Service CIDR routes via the bridge, the bridge, the tagged
# firewall rules.
ip route show | awk -v b="$BRIDGE" '$0 ~ ("dev " b) && $1 ~ /^10\.4[23]\./ {print $1}' |
  while read -r r; do ip route del "$r" 2>/dev/null; done
if ip link show "$BRIDGE" >/dev/null 2>&1; then
  ip link del "$BRIDGE" && log "removed bridge $BRIDGE"
fi
for chain in FORWARD INPUT; do
  while read -r rule; do
    # shellcheck disable=SC2086
    iptables ${rule/-A/-D}
  done < <(iptables -S "$chain" | grep -- "--comment $RULE_COMMENT")
done
# Pod network namespaces' files: containerd bind-mounted them inside the node's mount
# namespace only, so once the node is gone they are empty files. Remove those that no
# process's mount namespace has mounted (another containerd on this host keeps its own).
mounted="$(awk '$5 ~ /\/netns\/cni-/ {print $5}' /proc/[0-9]*/mountinfo 2>/dev/null | sed 's#^/var/run/#/run/#' | sort -u)"
for f in /run/netns/cni-*; do
  grep -qxF "$f" <<< "$mounted" || rm -f "$f"
done

if [[ -f "$DIR/host-sysctls.saved" ]]; then
  while IFS='=' read -r k v; do
    [[ -n "$k" ]] && sysctl -qw "$k=$v"
  done < "$DIR/host-sysctls.saved"
  rm -f "$DIR/host-sysctls.saved"
  log "restored host sysctls: $(paste -sd' ' <(cd /proc/sys && for k in vm/overcommit_memory kernel/panic kernel/panic_on_oops; do printf '%s=%s ' "${k//\//.}" "$(cat "$k")"; done))"
fi

if mountpoint -q "$NSDIR" 2>/dev/null && [[ -z "$(ls -A "$NSDIR")" ]]; then
  umount "$NSDIR" && rmdir "$NSDIR" "$(dirname "$NSDIR")" 2>/dev/null
fi
# Nothing of the cluster may stay mounted on the host.
findmnt -rn -o TARGET | grep -E "^($DIR|$NODE_DISK_PATH)(/|$)" | sort -r | while read -r m; do
  umount -l "$m" && log "unmounted leftover $m"
done

if (( PURGE )); then
  rm -rf "$DIR"
  log "removed $DIR"
fi
log "cluster stopped"
