#!/usr/bin/env python3
"""Writes a SentencePiece-style (Gemma layout) tokenizer.json with a vocabulary as
large as the real ones (Gemma 2/3: 256,000 / 262,144 pieces; Llama 3: 128,256;
Qwen2.5: 151,646), for fedge_bench_tokenizer --load: the pieces are learned as BPE
merges from WordNet glosses (Debian's wordnet-base) until the glosses run out of
frequent pairs, then extended with merges of random existing pieces, so the file has
the real format and size (vocab, merges, byte fallback, added tokens) though not the
real pieces. Reproducible (seeded); no third-party package.

  python3 bench/tokenizer/make_large_vocab.py --size 262144 --out /tmp/tok262k/tokenizer.json
"""
import argparse
import collections
import json
import os
import random

MARK = "\u2581"


def glosses(limit_bytes=1 << 20):
    out = []
    n = 0
    for part in ("noun", "verb", "adj", "adv"):
        path = f"/usr/share/wordnet/data.{part}"
        if not os.path.exists(path):
            continue
        for line in open(path, encoding="utf-8", errors="replace"):
            if line.startswith("  ") or " | " not in line:
                continue
            g = line.split(" | ", 1)[1].strip()
            out.append(g)
            n += len(g)
            if n > limit_bytes:
                return out
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=262144)
    ap.add_argument("--out", required=True)
    ap.add_argument("--learned", type=int, default=300, help="merges learned from the glosses")
    args = ap.parse_args()
    rng = random.Random(7)
    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]
    vocab = {}
    for t in specials:
        vocab[t] = len(vocab)
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    words = collections.Counter()
    for g in glosses():
        for w in g.replace(" ", " " + MARK).split(" "):
            if w:
                words[w] += 1
    for w in words:
        for ch in w:
            if ch not in vocab:
                vocab[ch] = len(vocab)
    # BPE on the word counts (plain, for a realistic head of the merge list).
    seqs = {w: list(w) for w in words}
    merges = []
    for _ in range(args.learned):
        pairs = collections.Counter()
        for w, s in seqs.items():
            c = words[w]
            for a, b in zip(s, s[1:]):
                pairs[(a, b)] += c
        if not pairs:
            break
        (a, b), count = pairs.most_common(1)[0]
        if count < 2:
            break
        merges.append([a, b])
        vocab.setdefault(a + b, len(vocab))
        for w, s in seqs.items():
            i, out = 0, []
            while i < len(s):
                if i + 1 < len(s) and s[i] == a and s[i + 1] == b:
                    out.append(a + b)
                    i += 2
                else:
                    out.append(s[i])
                    i += 1
            seqs[w] = out
    pieces = [t for t in vocab if not t.startswith("<")]
    while len(vocab) < args.size:
        a, b = rng.choice(pieces), rng.choice(pieces)
        if len(a) + len(b) > 16 or (a + b) in vocab:
            continue
        merges.append([a, b])
        vocab[a + b] = len(vocab)
        pieces.append(a + b)
    tok = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [{"id": vocab[t], "content": t, "single_word": False, "lstrip": False, "rstrip": False,
                          "normalized": False, "special": True} for t in specials],
        "normalizer": {"type": "Replace", "pattern": {"String": " "}, "content": MARK},
        "pre_tokenizer": None,
        "post_processor": {"type": "TemplateProcessing",
                           "single": [{"SpecialToken": {"id": "<bos>", "type_id": 0}},
                                      {"Sequence": {"id": "A", "type_id": 0}}],
                           "pair": [{"SpecialToken": {"id": "<bos>", "type_id": 0}},
                                    {"Sequence": {"id": "A", "type_id": 0}},
                                    {"Sequence": {"id": "B", "type_id": 1}}],
                           "special_tokens": {"<bos>": {"id": "<bos>", "ids": [vocab["<bos>"]],
                                                        "tokens": ["<bos>"]}}},
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": MARK}, "content": " "},
            {"type": "ByteFallback"}, {"type": "Fuse"}]},
        "model": {"type": "BPE", "dropout": None, "unk_token": "<unk>", "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": True, "byte_fallback": True, "ignore_merges": False,
                  "vocab": vocab, "merges": merges},
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(tok, f, ensure_ascii=False)
    print(f"{args.out}: {len(vocab)} pieces, {len(merges)} merges, {os.path.getsize(args.out) / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
