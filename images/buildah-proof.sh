#!/usr/bin/env bash
# Proves a Containerfile builds on a machine with no Docker daemon and no registry:
# Debian's buildah, with a bookworm-slim-like base made by mmdebstrap from Debian's
# mirror (the one apt uses) and tagged docker.io/library/debian:bookworm-slim in a
# private buildah storage, then `buildah bud` of images/Containerfile.<image>. The
# result is pushed to an OCI archive and, when containerd is installed, run through
# images/verify.sh like the daemonless images. Manual and optional (not in CI): it
# downloads ~150 MB of packages twice (base + builder) and compiles the image's
# binary from scratch. Timings are printed; images/README.md records a run.
#
#   images/buildah-proof.sh [--image aggregator|operator|agent] [--work DIR] [--jobs N]
#
# --work (default /tmp/fedge-buildah) keeps the base tarball and buildah's storage
# between runs; delete it to start over. Needs root (chroot isolation, overlay).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
IMAGE=aggregator
WORK=/tmp/fedge-buildah
JOBS=2
while (($#)); do
  case $1 in
    --image) IMAGE=$2; shift 2 ;;
    --work) WORK=$2; shift 2 ;;
    --jobs) JOBS=$2; shift 2 ;;
    -h|--help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "buildah-proof.sh: unknown argument '$1'" >&2; exit 2 ;;
  esac
done
[[ -f $ROOT/images/Containerfile.$IMAGE ]] || { echo "buildah-proof.sh: no images/Containerfile.$IMAGE" >&2; exit 2; }
[[ $(id -u) -eq 0 ]] || { echo "buildah-proof.sh: run as root (chroot isolation)" >&2; exit 1; }

missing=()
for p in buildah mmdebstrap; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p"); done
if ((${#missing[@]})); then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

mkdir -p "$WORK"
B=(buildah --root "$WORK/storage" --runroot "$WORK/run" --storage-driver overlay)
now() { date +%s; }
VERSION=$(sed -n 's/^project(fedge VERSION \([0-9.]*\).*/\1/p' "$ROOT/CMakeLists.txt")
REVISION=$(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)

# 1. The base: Debian's minbase variant with bookworm-slim's dpkg excludes (no man
#    pages, docs or locales; also for every package installed on top of it).
MIRROR=$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -1)
MIRROR=${MIRROR:-http://deb.debian.org/debian}
if ! "${B[@]}" inspect --type image docker.io/library/debian:bookworm-slim >/dev/null 2>&1; then
  t=$(now)
  rm -f "$WORK/bookworm-slim.tar"
  mmdebstrap --variant=minbase --mode=root --format=tar \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-exclude=/usr/share/info/*' --aptopt='Acquire::Languages "none"' \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin' \
    bookworm "$WORK/bookworm-slim.tar" "deb $MIRROR bookworm main" "deb $MIRROR bookworm-updates main" \
    "deb ${MIRROR%/debian}/debian-security bookworm-security main"
  echo "buildah-proof: base rootfs by mmdebstrap in $(($(now) - t)) s ($(du -m "$WORK/bookworm-slim.tar" | cut -f1) MB)"
  t=$(now)
  mkdir -p "$WORK/base-ctx"
  ln -f "$WORK/bookworm-slim.tar" "$WORK/base-ctx/rootfs.tar"
  printf 'FROM scratch\nADD rootfs.tar /\nCMD ["bash"]\n' >"$WORK/base-ctx/Containerfile"
  "${B[@]}" bud --isolation chroot -t docker.io/library/debian:bookworm-slim -f "$WORK/base-ctx/Containerfile" "$WORK/base-ctx"
  echo "buildah-proof: base imported as docker.io/library/debian:bookworm-slim in $(($(now) - t)) s"
fi

# 2. The Containerfile, as a user would build it (no registry: never pull).
t=$(now)
"${B[@]}" bud --isolation chroot --pull-never --layers \
  --build-arg VERSION="$VERSION" --build-arg REVISION="$REVISION" \
  --build-arg CREATED="$(date -u +%Y-%m-%dT%H:%M:%SZ)" --build-arg JOBS="$JOBS" \
  -f "$ROOT/images/Containerfile.$IMAGE" -t "localhost/fedge/$IMAGE:$VERSION" "$ROOT"
echo "buildah-proof: buildah bud images/Containerfile.$IMAGE in $(($(now) - t)) s"
"${B[@]}" images "localhost/fedge/$IMAGE:$VERSION"
"${B[@]}" inspect --type image --format '{{.OCIv1.Config.User}} {{.OCIv1.Config.Labels}}' "localhost/fedge/$IMAGE:$VERSION"
echo

# 3. Run it: as an OCI archive through the same containerd checks as scripts/images.sh's.
OUT=$WORK/out
mkdir -p "$OUT"
archive=$OUT/fedge-$IMAGE-$VERSION.oci.tar
rm -f "$archive"
"${B[@]}" push "localhost/fedge/$IMAGE:$VERSION" "oci-archive:$archive:docker.io/fedge/$IMAGE:$VERSION"
echo "buildah-proof: $(basename "$archive") $(du -m "$archive" | cut -f1) MB"
python3 - "$archive" "$IMAGE" "$VERSION" "$OUT/images.json" <<'EOF'
# The index buildah writes names the image by org.opencontainers.image.ref.name only;
# images/verify.sh reads images.json for the reference, manifest and version line.
import json, sys, tarfile
archive, image, version, out = sys.argv[1:]
with tarfile.open(archive) as t:
    index = json.load(t.extractfile("index.json"))
m = index["manifests"][0]
ref = m.get("annotations", {}).get("org.opencontainers.image.ref.name", "")
json.dump([{"image": image, "ref": f"fedge/{image}:{version}", "archive": archive, "manifest": m["digest"],
            "version_line": f"fedge-{image} {version}"}], open(out, "w"), indent=2)
print("buildah-proof: index names the image", repr(ref))
EOF
if command -v containerd >/dev/null && command -v runc >/dev/null; then
  "$ROOT/images/verify.sh" --dir "$OUT" --images "$IMAGE"
else
  echo "buildah-proof: containerd/runc not installed: archive not run"
fi
