#!/usr/bin/env bash
# Verifies fedge's OCI image archives the way a K3s node uses them, without a Docker
# daemon: starts a private containerd (its own root, state and socket under a temp
# directory; the system's containerd, if any, is untouched), imports each archive with
# `ctr -n k8s.io images import`, checks the name, labels and user containerd recorded,
# and runs each image with runc as uid 65532 on a read-only root filesystem (only /tmp
# writable, a tmpfs as a pod's emptyDir would be): `<binary> --version` and `--help`.
# The agent's run also shows which BLAS the loader picked (OPENBLAS_VERBOSE, LD_DEBUG).
# With --job it then runs a real one-round federated job: an aggregator container and
# an agent container (host network) training the real MiniLM model on WordNet data.
#
#   images/verify.sh [--dir DIR] [--images operator,aggregator,agent] [--build BUILD_DIR]
#                    [--job] [--keep]
#
#   --dir      where the archives are (default build/images)
#   --build    first build the archives from BUILD_DIR's binaries (scripts/images.sh)
#   --job      also run the one-round job (needs the agent and aggregator images, the
#              model in $FEDGE_MODEL_DIR or .fedge/models/all-MiniLM-L6-v2, wordnet-base)
#   --keep     keep the containerd directory and log (for debugging)
#
# Exit status: 0 verified; 1 a check failed (the message says which); 77 (ctest's
# SKIP_RETURN_CODE) when this machine cannot run containers (not root, containerd or
# runc not installed, or containerd does not start) - never 0 without verifying.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
DIR=""
IMAGES=operator,aggregator,agent
BUILD=""
JOB=0
KEEP=0
while (($#)); do
  case $1 in
    --dir) DIR=$2; shift 2 ;;
    --images) IMAGES=$2; shift 2 ;;
    --build) BUILD=$2; shift 2 ;;
    --job) JOB=1; shift ;;
    --keep) KEEP=1; shift ;;
    -h|--help) sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "verify.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
DIR=${DIR:-${BUILD:-$ROOT/build}/images}

skip() { echo "verify.sh: SKIPPED: $*" >&2; exit 77; }
fail() { echo "verify.sh: FAILED: $*" >&2; exit 1; }
log() { echo "verify.sh: $*"; }
now_ms() { echo $(($(date +%s%N) / 1000000)); }
secs() { local ms=$(($(now_ms) - $1)); printf '%d.%d s' $((ms / 1000)) $((ms % 1000 / 100)); }

# --- can this machine run containers at all? (skip, never pass, when not) ---------
[[ $(id -u) -eq 0 ]] || skip "needs root to run containerd and runc"
for tool in containerd ctr runc containerd-shim-runc-v2; do
  command -v "$tool" >/dev/null || skip "$tool not installed (apt-get install containerd runc)"
done

# The archives must not change while we read them: hold $DIR/.lock (scripts/images.sh
# takes it exclusively to write) - exclusively across build + verify with --build.
mkdir -p "$DIR"
exec 8>"$DIR/.lock"
if [[ -n $BUILD ]]; then
  flock -n 8 || { log "another run is using $DIR; waiting for it"; flock 8; }
  FEDGE_IMAGES_LOCK_HELD=1 "$ROOT/scripts/images.sh" --build-dir "$BUILD" --out "$DIR" --images "$IMAGES"
else
  flock -s -n 8 || { log "$DIR is being written; waiting for it"; flock -s 8; }
fi
[[ -f $DIR/images.json ]] || fail "no $DIR/images.json: build the archives first (scripts/images.sh)"

# --- a private containerd ------------------------------------------------------------
W=$(mktemp -d /tmp/fedge-ctr.XXXXXX)
SOCK=$W/containerd.sock
CTR=(ctr --address "$SOCK" -n k8s.io)
CONTAINERD_PID=""
cleanup() {
  set +e
  if [[ -n $CONTAINERD_PID ]]; then
    for c in $("${CTR[@]}" containers ls -q 2>/dev/null); do
      "${CTR[@]}" tasks kill -s SIGKILL "$c" >/dev/null 2>&1
      "${CTR[@]}" tasks delete -f "$c" >/dev/null 2>&1
      "${CTR[@]}" containers delete "$c" >/dev/null 2>&1
    done
    kill "$CONTAINERD_PID" 2>/dev/null
    wait "$CONTAINERD_PID" 2>/dev/null
  fi
  # Snapshot mounts containerd left behind (it was killed mid-way): innermost first.
  grep -o " $W[^ ]*" /proc/mounts | sort -r | while read -r m; do umount -l "$m"; done
  if ((KEEP)); then echo "verify.sh: kept $W (containerd.log)"; else rm -rf "$W"; fi
}
trap cleanup EXIT

cat >"$W/config.toml" <<EOF
version = 2
root = "$W/root"
state = "$W/state"
# Only what ctr import + run need: no CRI server, no extra snapshotters, no /opt.
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.internal.v1.opt",
  "io.containerd.tracing.processor.v1.otlp"]
[grpc]
  address = "$SOCK"
[ttrpc]
  address = "$SOCK.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
EOF
t0=$(now_ms)
containerd --config "$W/config.toml" >"$W/containerd.log" 2>&1 8>&- &
CONTAINERD_PID=$!
deadline=$(($(now_ms) + 30000))
until "${CTR[@]}" version >/dev/null 2>&1; do
  kill -0 "$CONTAINERD_PID" 2>/dev/null || { tail -5 "$W/containerd.log" >&2; CONTAINERD_PID=""; skip "containerd exited at start"; }
  (($(now_ms) < deadline)) || { tail -5 "$W/containerd.log" >&2; skip "containerd did not answer within 30 s"; }
  sleep 0.1
done
log "private containerd $(containerd --version | awk '{print $3}') up in $(secs "$t0") ($W)"

# --- per image -------------------------------------------------------------------------
json() { python3 -c "import json,sys; d=json.load(open('$DIR/images.json')); $1"; }
field() { json "print([r for r in d if r['image']=='$1'][0]['$2'])"; }
RUN_OPTS=(--read-only --mount "type=tmpfs,src=tmpfs,dst=/tmp,options=rw:nosuid:nodev:mode=1777")

IFS=, read -r -a names <<<"$IMAGES"
for name in "${names[@]}"; do
  archive=$(field "$name" archive)
  ref=docker.io/$(field "$name" ref)
  manifest=$(field "$name" manifest)
  [[ -f $archive ]] || fail "$archive missing"
  t=$(now_ms)
  "${CTR[@]}" images import "$archive" >"$W/import-$name.log" 2>&1 || { cat "$W/import-$name.log" >&2; fail "$name: ctr images import"; }
  log "$name: imported $(basename "$archive") ($(du -m "$archive" | cut -f1) MB) in $(secs "$t")"
  names=$("${CTR[@]}" images ls -q)
  grep -qx "$ref" <<<"$names" || fail "$name: import did not name the image $ref (got: $(tr '\n' ' ' <<<"$names"))"
  # What containerd stored: the image's manifest digest, and in its config the user,
  # volume and labels.
  [[ $("${CTR[@]}" images ls | awk -v r="$ref" '$1 == r {print $3}') == "$manifest" ]] || fail "$name: manifest digest differs from images.json"
  cfg=$("${CTR[@]}" content get "$manifest" | python3 -c 'import json,sys; print(json.load(sys.stdin)["config"]["digest"])')
  "${CTR[@]}" content get "$cfg" | python3 -c '
import json, sys
c = json.load(sys.stdin)["config"]
want = {"org.opencontainers.image." + k for k in ("version", "revision", "source", "title", "created")}
missing = sorted(want - set(c.get("Labels", {})))
assert not missing, "labels missing: %s" % missing
assert c["User"] == "65532:65532", "User is %r" % c["User"]
assert "/tmp" in c.get("Volumes", {}), "no /tmp volume"
assert c["Labels"]["org.opencontainers.image.version"] == sys.argv[1], "version label %r" % c["Labels"]["org.opencontainers.image.version"]
' "$(json "print(d[0]['ref'].split(':')[-1])")" || fail "$name: image config"

  exe=$(basename "$(json "import sys; r=[r for r in d if r['image']=='$name'][0]; print(r['version_line'].split()[0])")")
  id=fedge-verify-$name
  # --version, keeping the container to read the runtime spec containerd gave runc.
  env_opts=()
  [[ $name == agent ]] && env_opts=(--env OPENBLAS_VERBOSE=2 --env LD_DEBUG=files)
  t=$(now_ms)
  "${CTR[@]}" run "${RUN_OPTS[@]}" "${env_opts[@]}" "$ref" "$id" "$exe" --version >"$W/$id.out" 2>"$W/$id.err" \
    || { cat "$W/$id.err" >&2; fail "$name: $exe --version exited non-zero in the container"; }
  grep -q "^$exe $(json "print(d[0]['ref'].split(':')[-1])")" "$W/$id.out" || fail "$name: --version printed '$(cat "$W/$id.out")'"
  "${CTR[@]}" containers info "$id" | python3 -c '
import json, sys
s = json.load(sys.stdin)["Spec"]
u = s["process"]["user"]
assert (u["uid"], u["gid"]) == (65532, 65532), "runs as %r" % u
assert s["root"].get("readonly"), "root filesystem is writable"
' || fail "$name: runtime spec (user/read-only)"
  "${CTR[@]}" containers delete "$id" >/dev/null
  log "$name: '$(cat "$W/$id.out")' as uid 65532, read-only root, in $(secs "$t")"
  if [[ $name == agent ]]; then
    # LD_DEBUG=files: every object the loader mapped; OpenBLAS prints its kernel core.
    grep -Eq 'file=libopenblas.so.0 .*needed by /(usr/)?lib/x86_64-linux-gnu/libblas.so.3' "$W/$id.err" \
      || fail "agent: libblas.so.3 did not load OpenBLAS (libopenblas.so.0) in the image"
    core=$(grep -m1 '^Core:' "$W/$id.err" || true)
    [[ -n $core ]] || fail "agent: OpenBLAS did not initialise (no 'Core:' line with OPENBLAS_VERBOSE=2)"
    nobj=$(grep -c 'generating link map' "$W/$id.err")
    log "agent: loader mapped $nobj objects; BLAS is OpenBLAS ($core)"
  fi
  "${CTR[@]}" run --rm "${RUN_OPTS[@]}" "$ref" "$id-help" "$exe" --help >"$W/$id-help.out" 2>&1 \
    || { cat "$W/$id-help.out" >&2; fail "$name: $exe --help exited non-zero"; }
  grep -qi usage "$W/$id-help.out" || fail "$name: --help printed no usage"
  log "$name: --help ok ($(wc -l <"$W/$id-help.out") lines)"
  if [[ $name == operator ]]; then
    # The same image runs each aggregator pod's status-reporter sidecar.
    "${CTR[@]}" run --rm "${RUN_OPTS[@]}" "$ref" "$id-reporter" "$exe" report-status --help >"$W/$id-reporter.out" 2>&1 \
      || { cat "$W/$id-reporter.out" >&2; fail "operator: $exe report-status --help exited non-zero"; }
    grep -q -- '--aggregator-http' "$W/$id-reporter.out" || fail "operator: report-status --help lacks --aggregator-http"
    log "operator: report-status --help ok (the status-reporter sidecar)"
  fi
done

# --- a real job in containers: aggregator + agent, one round ---------------------------
if ((JOB)); then
  BUILD_DIR=${BUILD:-$ROOT/build}
  MODEL=${FEDGE_MODEL_DIR:-$ROOT/.fedge/models/all-MiniLM-L6-v2}
  FEDGE_CLI=$(find "$BUILD_DIR" -maxdepth 3 -type f -perm -u+x -name fedge | head -1)
  [[ -f $MODEL/config.json ]] || fail "--job: no model at $MODEL (scripts/fetch-model.sh)"
  [[ -n $FEDGE_CLI ]] || fail "--job: no fedge CLI under $BUILD_DIR (it writes the data)"
  agg_ref=docker.io/$(field aggregator ref)
  agent_ref=docker.io/$(field agent ref)
  mkdir -p "$W/job"
  "$FEDGE_CLI" data wordnet --agents 1 --alpha 0.5 --seed 7 --test-size 64 --max-train 256 --out "$W/job/data" \
    >"$W/job/data.log" 2>&1 || { cat "$W/job/data.log" >&2; fail "--job: fedge data wordnet (needs wordnet-base)"; }
  # The quickstart's model and data settings; one agent, one short round.
  python3 - "$ROOT/deploy/examples/quickstart.yaml" "$W/job/job.yaml" <<'PY'
import re, sys
y = open(sys.argv[1]).read()
y = re.sub(r"(?m)^  name: quickstart$", "  name: image-check", y)
y = re.sub(r"(?m)^    path: \.fedge/models/.*$", "    path: /model", y)
y = re.sub(r"(?m)^    path: \.fedge/data/.*$", "    path: /data", y)
y = re.sub(r"(?m)^    minAgents: \d+$", "    minAgents: 1", y)
y = re.sub(r"(?m)^    replicas: \d+$", "    replicas: 1", y)
y = re.sub(r"(?m)^    total: \d+$", "    total: 1", y)
y = re.sub(r"(?m)^    quorum: \d+$", "    quorum: 1", y)
y = re.sub(r"(?m)^    localSteps: \d+$", "    localSteps: 3", y)
y = re.sub(r"(?m)^    batchSize: \d+$", "    batchSize: 8", y)
for want in ("path: /model", "path: /data", "minAgents: 1", "total: 1", "localSteps: 3"):
    assert want in y, "quickstart.yaml changed shape: cannot set " + want
open(sys.argv[2], "w").write(y)
PY
  read -r GRPC HTTP AGENT_HTTP < <(python3 -c '
import socket
ss = [socket.socket() for _ in range(3)]
for s in ss: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in ss])')
  ro() { echo "type=bind,src=$1,dst=$2,options=rbind:ro"; }
  t=$(now_ms)
  # Bounded: `timeout` signals ctr, which forwards the signal to the container's process.
  timeout -k 20 600 "${CTR[@]}" run --rm --net-host "${RUN_OPTS[@]}" --mount "$(ro "$W/job" /job)" "$agg_ref" fedge-job-aggregator \
    fedge-aggregator --config /job/job.yaml --listen "127.0.0.1:$GRPC" --http "127.0.0.1:$HTTP" \
    --checkpoint-dir /tmp/checkpoints --expected-agents 1 --exit-when-done >"$W/job/aggregator.log" 2>&1 &
  agg_pid=$!
  timeout -k 20 600 "${CTR[@]}" run --rm --net-host "${RUN_OPTS[@]}" --env OPENBLAS_VERBOSE=2 --mount "$(ro "$W/job" /job)" \
    --mount "$(ro "$MODEL" /model)" --mount "$(ro "$W/job/data/agent-0" /data)" "$agent_ref" fedge-job-agent \
    fedge-agent --config /job/job.yaml --aggregator "127.0.0.1:$GRPC" --agent-id agent-0 --node-name image-check \
    --data-dir /data --model-dir /model --http "127.0.0.1:$AGENT_HTTP" --state-dir /tmp/state --exit-when-done \
    >"$W/job/agent.log" 2>&1 &
  agent_pid=$!
  # While both run: the processes runc started are uid 65532 (read from the host's /proc).
  deadline=$(($(now_ms) + 30000))
  checked=""
  while [[ $checked != "aggregator agent" ]] && (($(now_ms) < deadline)); do
    checked=""
    for c in aggregator agent; do
      pid=$("${CTR[@]}" tasks ls 2>/dev/null | awk -v id="fedge-job-$c" '$1 == id {print $2}')
      [[ -n $pid && -r /proc/$pid/status ]] || continue
      uid=$(awk '/^Uid:/ {print $2}' "/proc/$pid/status")
      [[ $uid == 65532 ]] || fail "job: $c process $pid runs as uid $uid"
      checked="$checked${checked:+ }$c"
    done
    sleep 0.2
  done
  [[ $checked == "aggregator agent" ]] || fail "job: could not see both tasks running (saw: '$checked'); logs in $W/job"
  agent_rc=0; wait "$agent_pid" || agent_rc=$?
  agg_rc=0; wait "$agg_pid" || agg_rc=$?
  if ((agent_rc != 0 || agg_rc != 0)); then
    tail -20 "$W/job/aggregator.log" "$W/job/agent.log" >&2
    fail "job: aggregator exited $agg_rc, agent exited $agent_rc"
  fi
  grep -q 'job finished; exiting.*Succeeded' "$W/job/aggregator.log" || { tail -20 "$W/job/aggregator.log" >&2; fail "job: aggregator did not report Succeeded"; }
  core=$(grep -m1 '^Core:' "$W/job/agent.log" || true)
  [[ -n $core ]] || fail "job: the agent's OpenBLAS did not initialise"
  log "job: 1 round, aggregator + agent containers (uid 65532, read-only roots, model/data mounted read-only) succeeded in $(secs "$t"); agent BLAS: OpenBLAS $core"
  grep -E 'round (closed|completed)|accuracy' "$W/job/aggregator.log" | tail -2 | sed 's/^/verify.sh:   /'
fi
log "all checks passed for: $IMAGES"
