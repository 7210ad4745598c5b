#!/usr/bin/env bash
# Starts fedge's K3s-shaped test cluster with REAL nodes on this machine (root needed):
#
#   control plane  kine over SQLite (K3s's datastore) + kube-apiserver + controller-manager
#                  + scheduler (start-control-plane.sh), the API server on the host bridge
#                  at https://10.77.0.1:6443 so pods reach it through the `kubernetes`
#                  Service with their ServiceAccount token;
#   edge nodes     fedge-edge-1..N (default 2), each in its own network namespace on the
#                  host bridge fedge0 (node IP 10.77.0.1<i>) and its own mount namespace
#                  (its "disk": $DIR/nodes/<name>/disk is /var/lib/fedge on that node only),
#                  running its own containerd (CRI: cgroupfs, overlayfs, the static pause
#                  image), kubelet (cgroup root /<name>, pod CIDR 10.42.<i>.0/24) and
#                  kube-proxy (iptables mode); CNI bridge + host-local IPAM from Debian's
#                  containernetworking-plugins; routes between the pod CIDRs;
#   network policy kube-router's NetworkPolicy controller on each node (--run-firewall only,
#                  as K3s embeds it): iptables + ipset in the node's network namespace, so
#                  the policies fedge creates are enforced as on K3s;
#   add-ons        CoreDNS (Deployment + Service kube-dns at 10.43.0.10, as K3s) and the
#                  default StorageClass `local-path` served by local-path-provisioner.py.
#
# Binaries come from the caches of build-control-plane.sh, build-nodes.sh, build-kine.sh and
# build-coredns.sh; none is built here (exit 2 names the missing build). Idempotent: what
# already runs is left alone and what died is restarted (so a killed kubelet or API server
# comes back by running this again). Prints the kubeconfig path and the start-up time.
# stop-cluster.sh tears everything down.
#
# Environment:
#   FEDGE_CLUSTER_DIR        state directory (default /var/lib/fedge-cluster)
#   FEDGE_CLUSTER_NODES      number of edge nodes, 1..9 (default 2)
#   FEDGE_CLUSTER_DATASTORE  kine (default) or etcd
#   FEDGE_CLUSTER_NETWORK_POLICY  kube-router (default, as K3s) or none (policies accepted,
#                            not enforced, as under a CNI without policy support)
set -euo pipefail

T0=$(date +%s%3N)
HERE="$(cd "$(dirname "$0")" && pwd)"
DIR="${FEDGE_CLUSTER_DIR:-/var/lib/fedge-cluster}"
NODES="${FEDGE_CLUSTER_NODES:-2}"
DATASTORE="${FEDGE_CLUSTER_DATASTORE:-kine}"
NETWORK_POLICY="${FEDGE_CLUSTER_NETWORK_POLICY:-kube-router}"
KUBE_ROUTER_VERSION="${FEDGE_KUBE_ROUTER_VERSION:-v2.1.0}"
K8S_VERSION="${FEDGE_K8S_VERSION:-v1.36.3}"
COREDNS_VERSION="${FEDGE_COREDNS_VERSION:-v1.15.0}"

BRIDGE=fedge0
BRIDGE_IP=10.77.0.1
API_PORT=6443
CLUSTER_CIDR=10.42.0.0/16
SERVICE_CIDR=10.43.0.0/16
SERVICE_IP=10.43.0.1
DNS_IP=10.43.0.10
NODE_DISK_PATH=/var/lib/fedge   # where each node sees its own disk
NSDIR=/run/fedge-cluster/ns     # persistent mount-namespace files (a private mount)
RULE_COMMENT=fedge-cluster

since() { local ms=$(( $(date +%s%3N) - T0 )); printf '%d.%d' $((ms / 1000)) $((ms % 1000 / 100)); }
log() { echo "[start-cluster $(since)s] $*" >&2; }
die() { echo "[start-cluster] $*" >&2; exit "${2:-1}"; }

[[ $(id -u) == 0 ]] || die "must run as root (network namespaces, cgroups, mounts)"
[[ "$NODES" =~ ^[1-9]$ ]] || die "FEDGE_CLUSTER_NODES=$NODES: expected 1..9"
[[ "$NETWORK_POLICY" == kube-router || "$NETWORK_POLICY" == none ]] ||
  die "FEDGE_CLUSTER_NETWORK_POLICY=$NETWORK_POLICY: expected kube-router or none"
for tool in containerd containerd-shim-runc-v2 runc ctr iptables ip nsenter unshare findmnt openssl curl python3 busybox; do
  command -v "$tool" >/dev/null || die "$tool not found: run scripts/install-deps.sh" 2
done
[[ -x /usr/lib/cni/bridge && -x /usr/lib/cni/host-local && -x /usr/lib/cni/loopback ]] ||
  die "CNI plugins missing in /usr/lib/cni: run scripts/install-deps.sh (containernetworking-plugins)" 2

# --- binaries (cached builds) ---------------------------------------------------------
find_cache() {  # subdir version stamp -> prints the version dir if its stamp exists
  local c
  for c in /var/cache/fedge "$HOME/.cache/fedge"; do
    [[ -f "$c/$1/$2/$3" ]] && { echo "$c/$1/$2"; return 0; }
  done
  return 1
}
CP_OUT="$(find_cache control-plane "$K8S_VERSION" .complete)" ||
  die "control plane not built: run scripts/cluster/build-control-plane.sh" 2
[[ -f "$CP_OUT/.nodes-complete" ]] || die "kubelet/kube-proxy not built: run scripts/cluster/build-nodes.sh" 2
BIN="$CP_OUT/bin"
IMAGES="$CP_OUT/images"
COREDNS_OUT="$(find_cache coredns "$COREDNS_VERSION" .complete)" ||
  die "CoreDNS not built: run scripts/cluster/build-coredns.sh" 2
KINE_BIN=""
if [[ "$DATASTORE" == kine ]]; then
  KINE_OUT="$(find_cache kine "${FEDGE_KINE_VERSION:-v0.17.5}" .complete)" ||
    die "kine not built: run scripts/cluster/build-kine.sh (or FEDGE_CLUSTER_DATASTORE=etcd)" 2
  KINE_BIN="$KINE_OUT/bin"
fi
KUBE_ROUTER=""
if [[ "$NETWORK_POLICY" == kube-router ]]; then
  KUBE_ROUTER="$(find_cache kube-router "$KUBE_ROUTER_VERSION" .complete)/bin/kube-router" ||
    die "kube-router not built: run scripts/cluster/build-kube-router.sh (or FEDGE_CLUSTER_NETWORK_POLICY=none)" 2
  command -v ipset >/dev/null || die "ipset not found (kube-router's policies): run scripts/install-deps.sh" 2
fi
for b in kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kube-proxy; do
  [[ -x "$BIN/$b" ]] || die "missing $BIN/$b" 2
done
KUBECTL="$BIN/kubectl"

CP_DIR="$DIR/control-plane"
PKI="$CP_DIR/pki"
KUBECONFIG_FILE="$CP_DIR/kubeconfig"
SERVER="https://$BRIDGE_IP:$API_PORT"
mkdir -p "$DIR/nodes" "$DIR/run" "$DIR/logs"
kc() { "$KUBECTL" --kubeconfig "$KUBECONFIG_FILE" "$@"; }

alive() {  # pidfile -> 0 when that process runs (a zombie does not)
  [[ -f "$1" ]] || return 1
  local pid state
  pid="$(cat "$1")"
  kill -0 "$pid" 2>/dev/null || return 1
  state="$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)"
  [[ -n "$state" && "$state" != Z ]]
}
wait_for() {  # what seconds command...
  local what="$1" secs="$2"; shift 2
  local deadline=$(( $(date +%s) + secs ))
  until "$@"; do
    (( $(date +%s) <= deadline )) || die "$what not ready after ${secs}s; logs in $DIR (nodes/*/logs, control-plane/logs)"
    sleep 0.2
  done
}

# Writes stdin to FILE only when the content differs: kube-proxy exits when its config file
# is rewritten, even with the same content, and a re-run must leave running nodes alone.
write_file() {  # FILE
  local tmp="$1.tmp.$$"
  cat > "$tmp"
  if cmp -s "$tmp" "$1"; then rm -f "$tmp"; else mv "$tmp" "$1"; fi
}

node_name() { echo "fedge-edge-$1"; }
node_ip() { echo "10.77.0.$((10 + $1))"; }
node_cidr() { echo "10.42.$1.0/24"; }

# --- host: sysctls kubelet changes (restored by stop-cluster.sh) -----------------------
# kubelet sets these host-wide (they are not per network namespace); record them once,
# before the first kubelet of this cluster starts.
HOST_SYSCTLS=(vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops
  kernel.keys.root_maxkeys kernel.keys.root_maxbytes)
if [[ ! -f "$DIR/host-sysctls.saved" ]]; then
  for k in "${HOST_SYSCTLS[@]}"; do echo "$k=$(sysctl -n "$k")"; done > "$DIR/host-sysctls.saved.tmp"
  mv "$DIR/host-sysctls.saved.tmp" "$DIR/host-sysctls.saved"
fi

# --- host: bridge, firewall, namespaces --------------------------------------------------
if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
  log "bridge $BRIDGE ($BRIDGE_IP/24)"
  ip link add "$BRIDGE" type bridge
  ip addr add "$BRIDGE_IP/24" dev "$BRIDGE"
fi
ip link set "$BRIDGE" up
# Node-to-node (bridged) and node/pod-to-host traffic must pass even where the host's
# FORWARD/INPUT policy drops (as Docker sets it). Tagged, so stop-cluster.sh removes them.
for rule in "FORWARD -i $BRIDGE -o $BRIDGE" "INPUT -i $BRIDGE"; do
  # shellcheck disable=SC2086
  iptables -C $rule -m comment --comment "$RULE_COMMENT" -j ACCEPT 2>/dev/null ||
    iptables -I $rule -m comment --comment "$RULE_COMMENT" -j ACCEPT
done

mkdir -p "$NSDIR" "$NODE_DISK_PATH"
if ! mountpoint -q "$NSDIR"; then
  mount --bind "$NSDIR" "$NSDIR"
  mount --make-private "$NSDIR"
fi

setup_node_net() {  # i
  local i="$1" name ip veth
  name="$(node_name "$i")"; ip="$(node_ip "$i")"; veth="fedge-veth$i"
  if [[ ! -e "/run/netns/$name" ]]; then
    log "$name: network namespace, $ip on $BRIDGE"
    ip netns add "$name"
  fi
  if ! ip link show "$veth" >/dev/null 2>&1; then
    ip link add "$veth" type veth peer name eth0 netns "$name"
    ip link set "$veth" master "$BRIDGE" up
    ip -n "$name" addr add "$ip/24" dev eth0
    ip -n "$name" link set eth0 up
    ip -n "$name" link set lo up
    ip -n "$name" route add default via "$BRIDGE_IP"
  fi
  local j
  for j in $(seq 1 "$NODES"); do
    [[ "$j" == "$i" ]] && continue
    ip -n "$name" route replace "$(node_cidr "$j")" via "$(node_ip "$j")"
  done
  ip route replace "$(node_cidr "$i")" via "$ip" dev "$BRIDGE"
  # Per-namespace: route pod traffic; let bridged pod traffic see kube-proxy's iptables.
  ip netns exec "$name" sysctl -qw net.ipv4.ip_forward=1
  ip netns exec "$name" sysctl -qw net.bridge.bridge-nf-call-iptables=1 2>/dev/null ||
    log "$name: no br_netfilter in this kernel: Services whose endpoint is on the client's own node may not answer"
}

setup_node_mounts() {  # i: a persistent mount namespace whose /var/lib/fedge is the node's disk
  local name mnt disk
  name="$(node_name "$1")"; mnt="$NSDIR/$name.mnt"; disk="$DIR/nodes/$name/disk"
  mkdir -p "$disk/storage"
  if ! findmnt -n "$mnt" >/dev/null 2>&1; then
    touch "$mnt"
    # slave: host mounts (e.g. new network namespaces) propagate in, the node's own
    # mounts (kubelet volumes, container root filesystems) stay inside.
    unshare --mount="$mnt" --propagation slave mount --bind "$disk" "$NODE_DISK_PATH"
  fi
}

in_node() {  # i command... : run in node i's network and mount namespaces
  local name; name="$(node_name "$1")"; shift
  nsenter --net="/run/netns/$name" --mount="$NSDIR/$name.mnt" -- "$@"
}

# --- control plane ----------------------------------------------------------------------
setup_node_net_all() { local i; for i in $(seq 1 "$NODES"); do setup_node_net "$i"; setup_node_mounts "$i"; done; }
setup_node_net_all
# Service IPs from the host go through the first node, whose kube-proxy translates them
# (and masquerades: the host is outside the cluster CIDR), as on a K3s server that is also
# a node. Without this route they would leave the machine through its default route.
ip route replace "$SERVICE_CIDR" via "$(node_ip 1)" dev "$BRIDGE"

log "control plane ($DATASTORE)"
FEDGE_CP_DIR="$CP_DIR" FEDGE_CP_BIN="$BIN" FEDGE_CP_DATASTORE="$DATASTORE" FEDGE_KINE_BIN="$KINE_BIN" \
FEDGE_CP_ADDRESS="$BRIDGE_IP" FEDGE_CP_PORT="$API_PORT" \
FEDGE_CP_SERVICE_CIDR="$SERVICE_CIDR" FEDGE_CP_SERVICE_IP="$SERVICE_IP" \
FEDGE_CP_APISERVER_ARGS="--kubelet-preferred-address-types=InternalIP,Hostname --kubelet-certificate-authority=$PKI/ca.crt --enable-admission-plugins=NodeRestriction" \
  "$HERE/start-control-plane.sh" > "$DIR/logs/start-control-plane.log" 2>&1 ||
  { cat "$DIR/logs/start-control-plane.log" >&2; die "control plane did not start"; }
ln -sf "$KUBECONFIG_FILE" "$DIR/kubeconfig"

sign() {  # out-prefix subject extended-key-usage [san]
  local out="$1" subj="$2" eku="$3" san="${4:-}" ext
  [[ -f "$out.crt" ]] && return 0
  ext="$(mktemp)"
  printf 'basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=%s\n' "$eku" > "$ext"
  [[ -n "$san" ]] && printf 'subjectAltName=%s\n' "$san" >> "$ext"
  openssl req -newkey rsa:2048 -nodes -subj "$subj" -keyout "$out.key" -out "$out.csr" 2>/dev/null
  openssl x509 -req -in "$out.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial \
    -days 3650 -extfile "$ext" -out "$out.crt" 2>/dev/null
  rm -f "$out.csr" "$ext"
}
kubeconfig() {  # file cert-prefix
  write_file "$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: fedge-test
  cluster: {server: "$SERVER", certificate-authority: "$PKI/ca.crt"}
users:
- name: user
  user: {client-certificate: "$2.crt", client-key: "$2.key"}
contexts:
- name: fedge-test
  context: {cluster: fedge-test, user: user}
current-context: fedge-test
EOF
}
sign "$PKI/kube-proxy" "/CN=system:kube-proxy" clientAuth
kubeconfig "$DIR/kube-proxy.kubeconfig" "$PKI/kube-proxy"
sign "$PKI/local-path-provisioner" "/CN=fedge:local-path-provisioner" clientAuth
sign "$PKI/kube-router" "/CN=fedge:kube-router" clientAuth
kubeconfig "$DIR/kube-router.kubeconfig" "$PKI/kube-router"

# --- nodes ------------------------------------------------------------------------------
# The images every node needs: the sandbox (kubelet never pulls it: no registry), the test
# and helper image, and CoreDNS.
NODE_IMAGES=("$IMAGES/pause.tar:fedge.local/pause:3.10" "$IMAGES/busybox.tar:fedge.local/busybox:1.35"
  "$COREDNS_OUT/coredns.tar:fedge.local/coredns:${COREDNS_VERSION#v}")

start_node() {  # i
  local i="$1" name ip cidr N
  name="$(node_name "$i")"; ip="$(node_ip "$i")"; cidr="$(node_cidr "$i")"; N="$DIR/nodes/$name"
  mkdir -p "$N"/{pki,logs,run,cni/net.d,cni/ipam,containerd,kubelet,kubelet-plugins,pod-logs}
  sign "$N/pki/kubelet-client" "/O=system:nodes/CN=system:node:$name" clientAuth
  sign "$N/pki/kubelet-serving" "/O=system:nodes/CN=system:node:$name" serverAuth "IP:$ip,DNS:$name"
  kubeconfig "$N/kubelet.kubeconfig" "$N/pki/kubelet-client"

  # cgroup v1: the node's cgroup root must exist in every hierarchy before kubelet starts.
  local h
  for h in /sys/fs/cgroup/*/; do
    [[ -d "$h" ]] || continue
    [[ "$h" == */unified/ ]] && continue  # cgroup v2 part of the hybrid layout: unused in v1 mode
    mkdir -p "$h$name"
    if [[ -f "$h/cpuset.cpus" && -z "$(cat "$h$name/cpuset.cpus")" ]]; then
      cat "$h/cpuset.cpus" > "$h$name/cpuset.cpus"
      cat "$h/cpuset.mems" > "$h$name/cpuset.mems"
    fi
  done

  write_file "$N/containerd/config.toml" <<EOF
version = 2
root = "$N/containerd/root"
state = "$N/containerd/state"
[grpc]
  address = "$N/containerd/containerd.sock"
[ttrpc]
  address = "$N/containerd/containerd.sock.ttrpc"
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "$N/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  # No registry: the pause image is imported, never pulled.
  sandbox_image = "fedge.local/pause:3.10"
  # root here cannot lower oom_score_adj; without this runc fails every pod with
  # "can't get final child's PID from pipe: EOF".
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "$N/containerd/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$N/cni/net.d"
    max_conf_num = 1
EOF
  write_file "$N/cni/net.d/10-fedge.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "$name",
  "plugins": [
    {
      "type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
      "ipam": {"type": "host-local", "dataDir": "$N/cni/ipam",
               "ranges": [[{"subnet": "$cidr"}]], "routes": [{"dst": "0.0.0.0/0"}]}
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF
  local sock="$N/containerd/containerd.sock"
  if ! alive "$N/run/containerd.pid"; then
    log "$name: containerd"
    rm -f "$sock"
    setsid nsenter --net="/run/netns/$name" --mount="$NSDIR/$name.mnt" -- \
      containerd --config "$N/containerd/config.toml" >> "$N/logs/containerd.log" 2>&1 < /dev/null &
    echo $! > "$N/run/containerd.pid"
  fi
  containerd_up() { ctr --address "$sock" version >/dev/null 2>&1; }
  wait_for "$name containerd" 30 containerd_up
  # Import each image unless the node has that very manifest under that name already.
  local have entry tar ref digest
  have="$(ctr --address "$sock" -n k8s.io images ls | awk 'NR > 1 {print $1, $3}')"
  for entry in "${NODE_IMAGES[@]}"; do
    tar="${entry%%:*}"; ref="${entry#*:}"
    digest="$(tar -xOf "$tar" index.json | python3 -c 'import json,sys; print(json.load(sys.stdin)["manifests"][0]["digest"])')"
    grep -qxF "$ref $digest" <<< "$have" && continue
    ctr --address "$sock" -n k8s.io images import "$tar" >/dev/null
  done

  echo "# fedge test cluster: no upstream DNS (no network beyond this machine)" | write_file "$N/resolv.conf"
  write_file "$N/kubelet-config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# cgroup v1 host: kubelet refuses it unless told.
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: /$name
cgroupsPerQOS: true
enforceNodeAllocatable: [pods]
# root cannot lower oom_score_adj here (see containerd's restrict_oom_score_adj).
oomScoreAdj: 0
podCIDR: $cidr
serializeImagePulls: true
containerRuntimeEndpoint: unix://$sock
imageServiceEndpoint: unix://$sock
address: $ip
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
tlsCertFile: $N/pki/kubelet-serving.crt
tlsPrivateKeyFile: $N/pki/kubelet-serving.key
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $PKI/ca.crt}
authorization: {mode: Webhook}
clusterDNS: [$DNS_IP]
clusterDomain: cluster.local
resolvConf: $N/resolv.conf
hairpinMode: hairpin-veth
maxPods: 110
registerNode: true
# Imported images have no registry to come back from: never garbage-collect them.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: 100Mi, nodefs.available: 1%, nodefs.inodesFree: 1%, imagefs.available: 1%}
failSwapOn: false
volumePluginDir: $N/kubelet-plugins
podLogsDir: $N/pod-logs
containerLogMaxSize: 10Mi
shutdownGracePeriod: 0s
rotateCertificates: false
serverTLSBootstrap: false
EOF
  if ! alive "$N/run/kubelet.pid"; then
    log "$name: kubelet"
    setsid nsenter --net="/run/netns/$name" --mount="$NSDIR/$name.mnt" -- \
      "$BIN/kubelet" --config "$N/kubelet-config.yaml" --kubeconfig "$N/kubelet.kubeconfig" \
      --root-dir "$N/kubelet" --cert-dir "$N/pki" --hostname-override "$name" --node-ip "$ip" \
      --node-labels "fedge.io/edge=true,node.kubernetes.io/instance-type=k3s,beta.kubernetes.io/instance-type=k3s" \
      --v=1 >> "$N/logs/kubelet.log" 2>&1 < /dev/null &
    echo $! > "$N/run/kubelet.pid"
    date +%s > "$N/run/kubelet.started"
  fi

  write_file "$N/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $DIR/kube-proxy.kubeconfig}
mode: iptables
hostnameOverride: $name
bindAddress: $ip
clusterCIDR: $CLUSTER_CIDR
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
# 0: leave the (host-wide) conntrack sysctls alone.
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
nodePortAddresses: [primary]
iptables: {minSyncPeriod: 1s, syncPeriod: 30s}
EOF
  if ! alive "$N/run/kube-proxy.pid"; then
    log "$name: kube-proxy"
    setsid nsenter --net="/run/netns/$name" --mount="$NSDIR/$name.mnt" -- \
      "$BIN/kube-proxy" --config "$N/kube-proxy.yaml" --v=1 >> "$N/logs/kube-proxy.log" 2>&1 < /dev/null &
    echo $! > "$N/run/kube-proxy.pid"
  fi
}

for i in $(seq 1 "$NODES"); do start_node "$i"; done

# --- registration: labels and pod CIDRs the kubelet may not set itself -------------------
node_registered() {  # name i: registered, or die at once when its kubelet has exited
  if ! alive "$DIR/nodes/$1/run/kubelet.pid"; then
    tail -n 5 "$DIR/nodes/$1/logs/kubelet.log" >&2
    die "$1: kubelet exited (log: $DIR/nodes/$1/logs/kubelet.log)"
  fi
  kc get node "$1" >/dev/null 2>&1
}
for i in $(seq 1 "$NODES"); do
  name="$(node_name "$i")"
  wait_for "node $name registration" 90 node_registered "$name"
  # NodeRestriction forbids a kubelet to label itself node-role.kubernetes.io/*.
  kc label node "$name" node-role.kubernetes.io/edge=true --overwrite >/dev/null
  if [[ -z "$(kc get node "$name" -o jsonpath='{.spec.podCIDR}')" ]]; then
    kc patch node "$name" --type merge \
      -p "{\"spec\":{\"podCIDR\":\"$(node_cidr "$i")\",\"podCIDRs\":[\"$(node_cidr "$i")\"]}}" >/dev/null
  fi
done
# Ready as reported by the kubelet running NOW: the Node object of a cluster that was
# stopped still says Ready (and CoreDNS still counts a ready replica) until the node
# controller notices, so a status older than the kubelet's start proves nothing. A node
# that was NotReady meanwhile also carries unreachable/not-ready taints for a moment after
# it is back; K3s agents carry none, so wait for them to go.
all_ready() {
  local since=""
  for n in $(seq 1 "$NODES"); do
    since+=" $(node_name "$n")=$(cat "$DIR/nodes/$(node_name "$n")/run/kubelet.started" 2>/dev/null || echo 0)"
  done
  kc get nodes -o json 2>/dev/null | python3 -c '
import calendar, json, sys, time
started = dict(kv.split("=") for kv in sys.argv[1].split())
nodes = {n["metadata"]["name"]: n for n in json.load(sys.stdin)["items"]}
for name, t in started.items():
    node = nodes.get(name)
    if node is None or node["spec"].get("taints"):
        sys.exit(1)
    ready = [c for c in node["status"].get("conditions", []) if c["type"] == "Ready"]
    if not ready or ready[0]["status"] != "True":
        sys.exit(1)
    beat = calendar.timegm(time.strptime(ready[0]["lastHeartbeatTime"], "%Y-%m-%dT%H:%M:%SZ"))
    if beat < int(t):
        sys.exit(1)
' "$since"
}
wait_for "nodes Ready" 120 all_ready
log "$NODES nodes Ready"

# --- network policy: kube-router's controller on each node, as K3s's agent runs it --------
# It needs its Node object (node IP) first. Its rules: KUBE-ROUTER-FORWARD/-INPUT/-OUTPUT
# in the node's filter table, one KUBE-POD-FW chain per local pod, ipsets of the peers; a
# pod that a policy selects gets a default drop. Traffic from the node itself (kubelet
# probes, `node.sh exec`) passes, as on K3s.
if [[ -n "$KUBE_ROUTER" ]]; then
  kc apply -f "$HERE/manifests/kube-router-rbac.yaml" > "$DIR/logs/kube-router-rbac.log"
  for i in $(seq 1 "$NODES"); do
    name="$(node_name "$i")"; N="$DIR/nodes/$name"
    if ! alive "$N/run/kube-router.pid"; then
      log "$name: kube-router (network policy)"
      setsid nsenter --net="/run/netns/$name" --mount="$NSDIR/$name.mnt" -- \
        "$KUBE_ROUTER" --run-firewall=true --run-router=false --run-service-proxy=false \
        --kubeconfig "$DIR/kube-router.kubeconfig" --hostname-override "$name" \
        --service-cluster-ip-range "$SERVICE_CIDR" --enable-ipv4=true --enable-ipv6=false \
        --health-port 20244 --metrics-port 0 --v=0 >> "$N/logs/kube-router.log" 2>&1 < /dev/null &
      echo $! > "$N/run/kube-router.pid"
    fi
  done
  netpol_ready() {  # every node's kube-router has made its chains (its first full sync)
    local i
    for i in $(seq 1 "$NODES"); do
      if ! alive "$DIR/nodes/$(node_name "$i")/run/kube-router.pid"; then
        tail -n 5 "$DIR/nodes/$(node_name "$i")/logs/kube-router.log" >&2
        die "$(node_name "$i"): kube-router exited (log: $DIR/nodes/$(node_name "$i")/logs/kube-router.log)"
      fi
      in_node "$i" iptables -S KUBE-ROUTER-FORWARD >/dev/null 2>&1 || return 1
    done
  }
  wait_for "kube-router's network policy chains" 60 netpol_ready
fi
# kubelet set vm.overcommit_memory=1, kernel.panic=10, kernel.panic_on_oops=1 ... on this
# shared host when it started (once, at start-up); a kernel oops would then reboot the
# machine. Put the host's own values back now; stop-cluster.sh does it again.
while IFS='=' read -r k v; do
  [[ -n "$k" && "$(sysctl -n "$k")" != "$v" ]] && sysctl -qw "$k=$v"
done < "$DIR/host-sysctls.saved"

# --- add-ons: storage and DNS ------------------------------------------------------------
if ! alive "$DIR/run/local-path-provisioner.pid"; then
  log "local-path provisioner"
  setsid python3 "$HERE/local-path-provisioner.py" --server "$SERVER" --ca "$PKI/ca.crt" \
    --cert "$PKI/local-path-provisioner.crt" --key "$PKI/local-path-provisioner.key" \
    --nodes-dir "$DIR/nodes" --node-disk-path "$NODE_DISK_PATH" \
    >> "$DIR/logs/local-path-provisioner.log" 2>&1 < /dev/null &
  echo $! > "$DIR/run/local-path-provisioner.pid"
fi
sed -e "s#@DNS_IP@#$DNS_IP#g" -e "s#@COREDNS_IMAGE@#fedge.local/coredns:${COREDNS_VERSION#v}#g" \
  "$HERE/manifests/coredns.yaml" | write_file "$DIR/coredns.yaml"
kc apply -f "$HERE/manifests/local-path.yaml" -f "$DIR/coredns.yaml" > "$DIR/logs/addons.log"
# CoreDNS answers through the kube-dns Service (kube-proxy's rules on a node): checked
# end to end, since a stopped cluster's Deployment status still counts a ready replica.
dns_ready() {
  in_node 1 busybox timeout 2 nslookup kubernetes.default.svc.cluster.local "$DNS_IP" 2>/dev/null |
    grep -q "Address: $SERVICE_IP"
}
wait_for "CoreDNS" 120 dns_ready

echo "$(date -u +%FT%TZ) nodes=$NODES datastore=$DATASTORE network_policy=$NETWORK_POLICY" > "$DIR/run/started"
echo "cluster up in $(since) s: $NODES edge nodes, $DATASTORE datastore, network policy: $NETWORK_POLICY"
cat <<EOF
  export KUBECONFIG=$DIR/kubeconfig
  $KUBECTL get nodes -L fedge.io/edge
nodes: $(for i in $(seq 1 "$NODES"); do printf '%s ' "$(node_name "$i")"; done)
  import an image into every node:  $HERE/node.sh import IMAGE.tar
  a node's disk (its $NODE_DISK_PATH):   $DIR/nodes/<node>/disk
stop it with: $HERE/stop-cluster.sh [--purge]
EOF
echo "kubeconfig: $DIR/kubeconfig"
