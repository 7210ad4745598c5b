#!/usr/bin/env bash
# Starts a real Kubernetes control plane on loopback for fedge's integration tests:
# etcd (or kine over SQLite), kube-apiserver, kube-controller-manager and kube-scheduler
# (binaries from build-control-plane.sh / build-kine.sh), with a CA and serving/client
# certificates made by openssl. There is no kubelet here: tests/cluster's pod runner plays
# the edge nodes, or start-cluster.sh adds real nodes (it calls this script).
#
# Idempotent: if the control plane in $FEDGE_CP_DIR is already up, it only prints how to
# use it. Writes $FEDGE_CP_DIR/kubeconfig (cluster-admin, user "admin" in system:masters).
#
# Environment:
#   FEDGE_CP_DIR   state directory (default /tmp/fedge-control-plane)
#   FEDGE_CP_BIN   directory with the binaries (default: what build-control-plane.sh prints;
#                  it is NOT built here unless FEDGE_CP_BUILD=1, since that takes a while)
#   FEDGE_CP_PORT  kube-apiserver port (default: a free port, remembered in the state dir)
#   FEDGE_CP_DATASTORE  etcd (default) or kine (kine over SQLite, as K3s; binary from
#                  FEDGE_KINE_BIN or build-kine.sh's cache)
#   FEDGE_CP_ADDRESS    address kube-apiserver binds and advertises (default 127.0.0.1);
#                  any other address also turns on the lease endpoint reconciler so the
#                  `kubernetes` Service points at it (pods reach the API server there)
#   FEDGE_CP_SERVICE_CIDR / FEDGE_CP_SERVICE_IP  Service range and the `kubernetes`
#                  Service's IP (default 10.0.0.0/24 and 10.0.0.1; in the serving cert)
#   FEDGE_CP_APISERVER_ARGS / FEDGE_CP_KCM_ARGS  extra flags (split on spaces)
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
DIR="${FEDGE_CP_DIR:-/tmp/fedge-control-plane}"
mkdir -p "$DIR"/{pki,logs,run}
log() { echo "[start-control-plane] $*" >&2; }

if [[ -z "${FEDGE_CP_BIN:-}" ]]; then
  if [[ "${FEDGE_CP_BUILD:-0}" == 1 ]]; then
    FEDGE_CP_BIN="$("$HERE/build-control-plane.sh")"
  else
    K8S_VERSION="${FEDGE_K8S_VERSION:-v1.36.3}"
    for c in "${FEDGE_CP_CACHE:-}" /var/cache/fedge/control-plane "$HOME/.cache/fedge/control-plane"; do
      [[ -n "$c" && -f "$c/$K8S_VERSION/.complete" ]] && { FEDGE_CP_BIN="$c/$K8S_VERSION/bin"; break; }
    done
  fi
fi
if [[ -z "${FEDGE_CP_BIN:-}" ]]; then
  log "control-plane binaries not found; build them with scripts/cluster/build-control-plane.sh"
  exit 2
fi
for b in etcd kube-apiserver kube-controller-manager kube-scheduler; do
  [[ -x "$FEDGE_CP_BIN/$b" ]] || { log "missing $FEDGE_CP_BIN/$b"; exit 2; }
done
DATASTORE="${FEDGE_CP_DATASTORE:-etcd}"
ADDRESS="${FEDGE_CP_ADDRESS:-127.0.0.1}"
SERVICE_CIDR="${FEDGE_CP_SERVICE_CIDR:-10.0.0.0/24}"
SERVICE_IP="${FEDGE_CP_SERVICE_IP:-10.0.0.1}"
read -r -a EXTRA_APISERVER_ARGS <<< "${FEDGE_CP_APISERVER_ARGS:-}"
read -r -a EXTRA_KCM_ARGS <<< "${FEDGE_CP_KCM_ARGS:-}"
case "$DATASTORE" in
  etcd) ;;
  kine)
    if [[ -z "${FEDGE_KINE_BIN:-}" ]]; then
      for c in "${FEDGE_KINE_CACHE:-}" /var/cache/fedge/kine "$HOME/.cache/fedge/kine"; do
        [[ -n "$c" && -f "$c/${FEDGE_KINE_VERSION:-v0.17.5}/.complete" ]] && { FEDGE_KINE_BIN="$c/${FEDGE_KINE_VERSION:-v0.17.5}/bin"; break; }
      done
    fi
    [[ -x "${FEDGE_KINE_BIN:-}/kine" ]] || { log "kine not found; build it with scripts/cluster/build-kine.sh"; exit 2; }
    ;;
  *) log "FEDGE_CP_DATASTORE=$DATASTORE: expected etcd or kine"; exit 2 ;;
esac
KUBECTL="$FEDGE_CP_BIN/kubectl"
[[ -x "$KUBECTL" ]] || KUBECTL="$(command -v kubectl || true)"

free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
# A killed component stays a zombie until its (re)parent reaps it: that is not alive.
alive() {
  [[ -f "$DIR/run/$1.pid" ]] || return 1
  local pid state
  pid="$(cat "$DIR/run/$1.pid")"
  kill -0 "$pid" 2>/dev/null || return 1
  state="$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)"
  [[ -n "$state" && "$state" != Z ]]
}
port_of() {  # remembered port for a component, picked once
  local f="$DIR/run/$1.port"
  [[ -f "$f" ]] || { if [[ "$1" == apiserver && -n "${FEDGE_CP_PORT:-}" ]]; then echo "$FEDGE_CP_PORT"; else free_port; fi > "$f"; }
  cat "$f"
}
API_PORT=$(port_of apiserver)
ETCD_PORT=$(port_of etcd)
ETCD_PEER_PORT=$(port_of etcd-peer)
KCM_PORT=$(port_of controller-manager)
SCHED_PORT=$(port_of scheduler)
SERVER="https://$ADDRESS:$API_PORT"
PKI="$DIR/pki"

ready() { curl -sk --max-time 2 --cacert "$PKI/ca.crt" --cert "$PKI/admin.crt" --key "$PKI/admin.key" "$SERVER/readyz" 2>/dev/null | grep -q '^ok$'; }

usage() {
  cat <<EOF
control plane is up: $SERVER (state in $DIR, logs in $DIR/logs)
  export KUBECONFIG=$DIR/kubeconfig
  $KUBECTL get --raw /readyz
stop it with: $HERE/stop-control-plane.sh
EOF
}

if alive "$DATASTORE" && alive kube-apiserver && alive kube-controller-manager && alive kube-scheduler && ready; then
  usage
  exit 0
fi

# --- certificates (each made once; a state dir from an older version gains new ones) ---
if [[ ! -f "$PKI/ca.crt" ]]; then
  log "generating certificates in $PKI"
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=fedge-test-ca" \
    -keyout "$PKI/ca.key" -out "$PKI/ca.crt" 2>/dev/null
fi
sign() {  # name subject [san]
  local name="$1" subj="$2" san="${3:-}" ext="$PKI/$1.ext"
  [[ -f "$PKI/$name.crt" ]] && return 0
  openssl req -newkey rsa:2048 -nodes -subj "$subj" -keyout "$PKI/$name.key" -out "$PKI/$name.csr" 2>/dev/null
  if [[ -n "$san" ]]; then
    printf 'basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=%s\n' "$san" > "$ext"
  else
    printf 'basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n' > "$ext"
  fi
  openssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial \
    -days 3650 -extfile "$ext" -out "$PKI/$name.crt" 2>/dev/null
  rm -f "$PKI/$name.csr" "$ext"
}
san_ips="IP:127.0.0.1,IP:$SERVICE_IP"
[[ "$ADDRESS" == 127.0.0.1 ]] || san_ips+=",IP:$ADDRESS"
sign apiserver "/CN=kube-apiserver" \
  "DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,$san_ips"
sign admin "/O=system:masters/CN=admin"
sign controller-manager "/CN=system:kube-controller-manager"
sign scheduler "/CN=system:kube-scheduler"
# kube-apiserver's client identity towards kubelets (logs, exec, port-forward), as K3s's.
sign apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client"
if [[ ! -f "$PKI/sa.key" ]]; then
  openssl genrsa -out "$PKI/sa.key" 2048 2>/dev/null
  openssl rsa -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null
fi

kubeconfig() {  # file user
  cat > "$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: fedge-test
  cluster:
    server: $SERVER
    certificate-authority: $PKI/ca.crt
users:
- name: $2
  user:
    client-certificate: $PKI/$2.crt
    client-key: $PKI/$2.key
contexts:
- name: fedge-test
  context: {cluster: fedge-test, user: $2, namespace: default}
current-context: fedge-test
EOF
}
kubeconfig "$DIR/kubeconfig" admin
kubeconfig "$DIR/controller-manager.kubeconfig" controller-manager
kubeconfig "$DIR/scheduler.kubeconfig" scheduler

start() {  # name binary args...
  local name="$1" bin="$2"; shift 2
  if alive "$name"; then return; fi
  log "starting $name"
  # setsid: the component outlives this script and is stopped by its pid file.
  setsid "$FEDGE_CP_BIN/$bin" "$@" > "$DIR/logs/$name.log" 2>&1 < /dev/null &
  echo $! > "$DIR/run/$name.pid"
}
wait_for() {  # what seconds command...
  local what="$1" secs="$2"; shift 2
  local deadline=$(( $(date +%s) + secs ))
  until "$@"; do
    if (( $(date +%s) > deadline )); then log "$what not ready after ${secs}s; see $DIR/logs"; tail -n 20 "$DIR/logs/"*.log >&2; exit 1; fi
    sleep 0.2
  done
}

if [[ "$DATASTORE" == kine ]]; then
  # kine serves the etcd v3 API from SQLite in WAL mode (K3s's default datastore).
  mkdir -p "$DIR/kine"
  FEDGE_CP_BIN="$FEDGE_KINE_BIN" start kine kine \
    --endpoint "sqlite://$DIR/kine/state.db?_journal=WAL&cache=shared&_busy_timeout=30000&_txlock=immediate" \
    --listen-address "127.0.0.1:$ETCD_PORT" --metrics-bind-address 0  # else it listens on *:8080
  kine_up() { (exec 3<>"/dev/tcp/127.0.0.1/$ETCD_PORT") 2>/dev/null; }
  wait_for kine 30 kine_up
else
  mkdir -p "$DIR/etcd"
  start etcd etcd --name fedge-test --data-dir "$DIR/etcd" \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster "fedge-test=http://127.0.0.1:$ETCD_PEER_PORT" \
    --unsafe-no-fsync --quota-backend-bytes=2147483648 --log-level=warn
  wait_for etcd 30 curl -sf --max-time 1 "http://127.0.0.1:$ETCD_PORT/health" -o /dev/null
fi
reconciler=none
[[ "$ADDRESS" == 127.0.0.1 ]] || reconciler=lease

start kube-apiserver kube-apiserver \
  --etcd-servers="http://127.0.0.1:$ETCD_PORT" \
  --bind-address="$ADDRESS" --advertise-address="$ADDRESS" --secure-port="$API_PORT" \
  --tls-cert-file="$PKI/apiserver.crt" --tls-private-key-file="$PKI/apiserver.key" \
  --client-ca-file="$PKI/ca.crt" \
  --service-account-key-file="$PKI/sa.pub" --service-account-signing-key-file="$PKI/sa.key" \
  --service-account-issuer=https://kubernetes.default.svc.cluster.local \
  --authorization-mode=Node,RBAC --service-cluster-ip-range="$SERVICE_CIDR" \
  --endpoint-reconciler-type="$reconciler" --allow-privileged=true \
  --kubelet-client-certificate="$PKI/apiserver-kubelet-client.crt" \
  --kubelet-client-key="$PKI/apiserver-kubelet-client.key" \
  --watch-cache=true --v=1 "${EXTRA_APISERVER_ARGS[@]}"
wait_for kube-apiserver 90 ready

start kube-controller-manager kube-controller-manager \
  --kubeconfig="$DIR/controller-manager.kubeconfig" \
  --authentication-kubeconfig="$DIR/controller-manager.kubeconfig" \
  --authorization-kubeconfig="$DIR/controller-manager.kubeconfig" \
  --bind-address=127.0.0.1 --secure-port="$KCM_PORT" --leader-elect=false \
  --service-account-private-key-file="$PKI/sa.key" --root-ca-file="$PKI/ca.crt" \
  --use-service-account-credentials=true \
  --cluster-signing-cert-file="$PKI/ca.crt" --cluster-signing-key-file="$PKI/ca.key" \
  --node-monitor-grace-period=20s --node-monitor-period=2s \
  --concurrent-gc-syncs=5 --v=1 "${EXTRA_KCM_ARGS[@]}"
start kube-scheduler kube-scheduler \
  --kubeconfig="$DIR/scheduler.kubeconfig" \
  --authentication-kubeconfig="$DIR/scheduler.kubeconfig" \
  --authorization-kubeconfig="$DIR/scheduler.kubeconfig" \
  --bind-address=127.0.0.1 --secure-port="$SCHED_PORT" --leader-elect=false --v=1

# The default namespace and the service-account machinery come up with the
# controller-manager; wait until the default namespace exists so tests can start at once.
# Pods need the namespace's default ServiceAccount (ServiceAccount admission).
ns_ready() { curl -sf --max-time 2 --cacert "$PKI/ca.crt" --cert "$PKI/admin.crt" --key "$PKI/admin.key" "$SERVER/api/v1/namespaces/default/serviceaccounts/default" -o /dev/null; }
wait_for "default namespace and service account" 60 ns_ready
echo "$SERVER" > "$DIR/server"
usage
