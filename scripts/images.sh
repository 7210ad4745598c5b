#!/usr/bin/env bash
# Builds fedge's container images (operator, aggregator, agent) as OCI archives from
# the built binaries, without a Docker daemon or a registry: the K3s air-gap way.
#
#   scripts/images.sh [--build-dir DIR] [--out DIR] [--images operator,aggregator,agent]
#                     [--no-trim] [--gzip-level N] [--verify]
#
# Output: <out>/fedge-<image>-<version>.oci.tar (default out: <build-dir>/images),
# each naming itself docker.io/fedge/<image>:<version>; load one with
#   ctr -n k8s.io images import <out>/fedge-agent-0.1.0.oci.tar
# or copy the archives into K3s's /var/lib/rancher/k3s/agent/images/ (podman load reads
# them too).
# Prints each image's compressed and uncompressed size and what fills the agent.
# --verify then runs images/verify.sh (a private containerd runs each image).
# Environment: SOURCE_DATE_EPOCH (created label and file mtimes; default: the
# commit time of HEAD), FEDGE_IMAGE_SOURCE (the source label; default: git's
# origin URL). How the images are made: images/README.md.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=$ROOT/build
OUT=""
IMAGES=operator,aggregator,agent
TRIM=--trim
LEVEL=6
VERIFY=0
while (($#)); do
  case $1 in
    --build-dir) BUILD=$(cd "$2" && pwd); shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --images) IMAGES=$2; shift 2 ;;
    --no-trim) TRIM=--no-trim; shift ;;
    --gzip-level) LEVEL=$2; shift 2 ;;
    --verify) VERIFY=1; shift ;;
    -h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "images.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
OUT=${OUT:-$BUILD/images}

for tool in python3 readelf strip ldd; do
  command -v "$tool" >/dev/null || { echo "images.sh: $tool not found; run scripts/install-deps.sh" >&2; exit 1; }
done
if [[ $TRIM == --trim ]] && ! command -v gcc >/dev/null; then
  echo "images.sh: gcc not found (needed to build the agent's library stubs); install build-essential or pass --no-trim" >&2
  exit 1
fi
[[ -f $BUILD/CMakeCache.txt ]] || { echo "images.sh: $BUILD is not a configured build directory (--build-dir)" >&2; exit 1; }

VERSION=$(sed -n 's/^CMAKE_PROJECT_VERSION:STATIC=//p' "$BUILD/CMakeCache.txt")
[[ -n $VERSION ]] || { echo "images.sh: no CMAKE_PROJECT_VERSION in $BUILD/CMakeCache.txt" >&2; exit 1; }
REVISION=$(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)
if [[ $REVISION != unknown ]] && ! git -C "$ROOT" diff --quiet HEAD -- 2>/dev/null; then
  REVISION=$REVISION-dirty  # tracked files differ from HEAD: say so
fi
CREATED=${SOURCE_DATE_EPOCH:-$(git -C "$ROOT" log -1 --format=%ct 2>/dev/null || date +%s)}
SOURCE=${FEDGE_IMAGE_SOURCE:-$(git -C "$ROOT" remote get-url origin 2>/dev/null || true)}

# A snapshot of the binaries, wherever the build put them (build/<component>/fedge-*),
# copied while holding the build lock when there is one (a shared work tree serializes
# ninja on it), so a relink cannot change a binary half-way through packing.
BIN=$(mktemp -d /tmp/fedge-images-bin.XXXXXX)
trap 'rm -rf "$BIN"' EXIT
LOCK=${FEDGE_BUILD_LOCK:-/tmp/fedge-ninja.lock}
copy_binaries() {
  local exe found
  for exe in fedge-operator fedge-aggregator fedge-agent; do
    found=$(find "$BUILD" -maxdepth 3 -type f -perm -u+x -name "$exe" -print -quit)
    if [[ -n $found ]]; then cp "$found" "$BIN/$exe"; fi
  done
}
if [[ -e $LOCK ]] && command -v flock >/dev/null; then
  exec 9<"$LOCK"
  flock -n 9 || { echo "images.sh: a build holds $LOCK; waiting for it to finish"; flock 9; }
  copy_binaries
  flock -u 9
else
  copy_binaries
fi

# One writer per output directory at a time (archives and images.json belong together);
# images/verify.sh --build holds this lock itself and says so in FEDGE_IMAGES_LOCK_HELD.
mkdir -p "$OUT"
if [[ -z ${FEDGE_IMAGES_LOCK_HELD:-} ]]; then
  exec 8>"$OUT/.lock"
  flock -n 8 || { echo "images.sh: another run is writing $OUT; waiting for it"; flock 8; }
fi

start=$(date +%s%N)
python3 "$ROOT/images/build_images.py" --bin-dir "$BIN" --out "$OUT" --version "$VERSION" \
  --revision "$REVISION" --source "$SOURCE" --created "$CREATED" --images "$IMAGES" \
  $TRIM --gzip-level "$LEVEL"
ms=$((($(date +%s%N) - start) / 1000000))
printf 'images.sh: done in %d.%01d s (version %s, revision %s)\n' $((ms / 1000)) $((ms % 1000 / 100)) "$VERSION" "$REVISION"

if ((VERIFY)); then
  [[ -n ${FEDGE_IMAGES_LOCK_HELD:-} ]] || flock -u 8  # verify.sh takes it (shared) itself
  "$ROOT/images/verify.sh" --dir "$OUT" --images "$IMAGES"
fi
