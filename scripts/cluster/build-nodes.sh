#!/usr/bin/env bash
# Builds what a real edge node of fedge's test cluster runs, next to the control plane:
#   kubelet and kube-proxy   from k8s.io/kubernetes, in the SAME scratch Go module (and so
#                            the same Go build cache) that build-control-plane.sh made;
#   pause                    the pod sandbox, a static C program (images/pause.c);
#   images/pause.tar         OCI archive fedge.local/pause:3.10, containerd's sandbox_image;
#   httpget                  a static Go HTTP(S) client (images/httpget), because busybox's
#                            wget cannot verify TLS nor talk TLS to Go servers;
#   images/busybox.tar       OCI archive fedge.local/busybox:1.35, Debian's busybox-static
#                            plus /bin/httpget (the cluster's test and helper image: sh,
#                            wget, nslookup, httpd, httpget).
# containerd, runc and the CNI plugins are Debian packages (scripts/install-deps.sh).
#
# Waits for a running build-control-plane.sh to finish, and runs it first when the control
# plane is not built (it creates the scratch module).
#
# Output (cached; a second run returns at once): the control plane's bin directory
#   $FEDGE_CP_CACHE/<k8s version>/bin/{kubelet,kube-proxy,pause,httpget}
#   $FEDGE_CP_CACHE/<k8s version>/images/{pause,busybox}.tar
# stamp $FEDGE_CP_CACHE/<k8s version>/.nodes-complete (wall and CPU seconds of each part).
# Prints the bin directory on success.
#
# Environment: FEDGE_K8S_VERSION, FEDGE_CP_CACHE, FEDGE_CP_JOBS as build-control-plane.sh.
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
K8S_VERSION="${FEDGE_K8S_VERSION:-v1.36.3}"
JOBS="${FEDGE_CP_JOBS:-1}"
log() { echo "[build-nodes $(date +%H:%M:%S)] $*" >&2; }

# The control plane's build owns the scratch module while it runs: never edit it under it.
waited=0
while pgrep -f "build-control-plane.sh" >/dev/null; do
  (( waited % 60 == 0 )) && log "waiting for the running build-control-plane.sh"
  sleep 10
  waited=$((waited + 10))
done
CP_BIN="$("$HERE/build-control-plane.sh")"
OUT="$(dirname "$CP_BIN")"
SRC="$OUT/src"
IMAGES="$OUT/images"
STAMP="$OUT/.nodes-complete"
all_present() {
  [[ -f "$STAMP" ]] || return 1
  for f in "$CP_BIN/kubelet" "$CP_BIN/kube-proxy" "$CP_BIN/pause" "$CP_BIN/httpget"; do [[ -x "$f" ]] || return 1; done
  for f in "$IMAGES/pause.tar" "$IMAGES/busybox.tar"; do [[ -s "$f" ]] || return 1; done
}
if all_present; then
  echo "$CP_BIN"
  exit 0
fi
[[ -f "$SRC/go.mod" ]] || { log "no scratch module in $SRC; re-run build-control-plane.sh"; exit 1; }
command -v gcc >/dev/null || { log "gcc is needed for the pause binary; run scripts/install-deps.sh"; exit 1; }
[[ -x /bin/busybox ]] || { log "/bin/busybox missing: install Debian's busybox-static (scripts/install-deps.sh)"; exit 1; }
mkdir -p "$IMAGES"
start=$(date +%s)
report=""

# CPU seconds used so far by this shell's finished children, into CPU_NOW. `times` must
# run in this shell: in a $(...) subshell it would count that subshell's children only.
cpu_now() {
  times > "$OUT/.times"
  CPU_NOW=$(awk 'NR==2 { split($1, u, /[ms]/); split($2, s, /[ms]/); printf "%d", u[1]*60 + u[2] + s[1]*60 + s[2] }' "$OUT/.times")
  rm -f "$OUT/.times"
}

cd "$SRC"
# A file of our own beside build-control-plane.sh's tools.go: if that script runs
# `go mod tidy` again, the node binaries' requirements stay in go.mod.
cat > tools_nodes.go <<'EOF'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-proxy"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
EOF
if ! GOFLAGS="-mod=mod" go list -deps k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-proxy >/dev/null 2>&1; then
  log "resolving modules for kubelet and kube-proxy (go mod tidy)"
  GOFLAGS="-mod=mod" go mod tidy >&2
fi

export GOFLAGS="-mod=mod -p=$JOBS -trimpath"
export CGO_ENABLED=0
build() {
  local name="$1" pkg="$2" t0 c0
  if [[ -x "$CP_BIN/$name" ]]; then log "$name: cached"; return; fi
  t0=$(date +%s); cpu_now; c0=$CPU_NOW
  log "building $name ($pkg)"
  go build -ldflags "-s -w -X k8s.io/component-base/version.gitVersion=$K8S_VERSION -X k8s.io/client-go/pkg/version.gitVersion=$K8S_VERSION" \
    -o "$CP_BIN/$name.tmp" "$pkg"
  mv "$CP_BIN/$name.tmp" "$CP_BIN/$name"
  cpu_now
  local wall=$(( $(date +%s) - t0 )) cpu=$(( CPU_NOW - c0 ))
  report+=" $name=${wall}s/${cpu}cpu"
  log "$name: built in $wall s wall, $cpu s CPU"
}
build kubelet k8s.io/kubernetes/cmd/kubelet
build kube-proxy k8s.io/kubernetes/cmd/kube-proxy

t0=$(date +%s)
gcc -static -O2 -s -Wall -Wextra -o "$CP_BIN/pause.tmp" "$HERE/images/pause.c"
mv "$CP_BIN/pause.tmp" "$CP_BIN/pause"
"$CP_BIN/pause" -v >/dev/null
# Standard library only: built as a single file outside any module.
(cd "$HERE/images/httpget" && GOFLAGS="-trimpath" go build -ldflags "-s -w" -o "$CP_BIN/httpget.tmp" main.go)
mv "$CP_BIN/httpget.tmp" "$CP_BIN/httpget"

python3 "$HERE/oci-image.py" --name fedge.local/pause:3.10 --out "$IMAGES/pause.tar" \
  --add "$CP_BIN/pause:/pause:0755" --entrypoint /pause --user 65535:65535 \
  --label org.opencontainers.image.title=pause \
  --label "org.opencontainers.image.description=fedge test cluster pod sandbox (scripts/cluster/images/pause.c)" >&2

# busybox: the binary plus one symlink per applet, as `busybox --install -s` would make.
bb_args=(--add /bin/busybox:/bin/busybox:0755 --add "$CP_BIN/httpget:/bin/httpget:0755"
  --dir /tmp:1777 --dir /root:0700
  --text "/etc/passwd=root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
  --text "/etc/group=root:x:0:\nnogroup:x:65534:\n")
while read -r applet; do
  [[ "$applet" == busybox ]] && continue
  bb_args+=(--symlink "/bin/$applet:busybox")
done < <(/bin/busybox --list)
# awk reads to the end: `| head -1` under pipefail fails the script whenever busybox
# gets SIGPIPE writing the rest of its help (it did, silently, on 2026-12-04).
bb_version="$(/bin/busybox | awk 'NR == 1 {print $2}')"
python3 "$HERE/oci-image.py" --name fedge.local/busybox:1.35 --out "$IMAGES/busybox.tar" \
  "${bb_args[@]}" --cmd /bin/sh \
  --label org.opencontainers.image.title=busybox \
  --label "org.opencontainers.image.version=$bb_version" \
  --label "org.opencontainers.image.description=Debian busybox-static and httpget for fedge's test cluster" >&2
report+=" pause+images=$(( $(date +%s) - t0 ))s"

echo "$K8S_VERSION built=$(date -u +%FT%TZ) seconds=$(( $(date +%s) - start ))$report" > "$STAMP"
log "done in $(( $(date +%s) - start )) s:$report"
echo "$CP_BIN"
