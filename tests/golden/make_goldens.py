#!/usr/bin/env python3
"""Regenerates the golden files the agent's model tests compare against.

Reference implementations: Hugging Face `tokenizers` (WordPiece ids) and
`transformers` + PyTorch (MiniLM hidden states and sentence embeddings). The C++
tests read only the committed JSON; nothing here runs in CI.

  python3 -m venv /tmp/golden-venv
  /tmp/golden-venv/bin/pip install torch transformers tokenizers safetensors numpy peft
  /tmp/golden-venv/bin/python tests/golden/make_goldens.py [--model-dir DIR]

Outputs (tests/golden/):
  tiny_bert/               see make_tiny_bert_goldens.py (token classification,
                           a PEFT adapter made by peft, LoRA gradients)
  wordpiece_ids.json       {"tokenizer": ..., "cases": [{"text", "ids"}]}
                           ids include [CLS]/[SEP], no truncation, no padding.
  minilm_hidden_states.json {"model": ..., "sentences": [{"text", "ids",
                           "positions", "hidden": [[H floats] per position],
                           "embedding": [H floats]}]}
                           hidden = last_hidden_state rows at `positions`;
                           embedding = mean pooling over the attention mask,
                           L2-normalised (sentence-transformers' recipe).
"""
import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))

TOKENIZER_CASES = [
    "",
    " ",
    "\t\n\r ",
    "hello",
    "Hello, World!",
    "HELLO WORLD",
    "The quick brown fox jumps over the lazy dog.",
    "unaffable",
    "Tokenization of unbelievably long compound words",
    "antidisestablishmentarianism",
    "supercalifragilisticexpialidocious",
    "a" * 100,
    "a" * 101,
    "x" * 99 + " word",
    "naïve café résumé",
    "Crème Brûlée à la mode",
    "Ångström Øresund Ærø",
    "ŁÓDŹ Straße",
    "İstanbul ıi",
    "ÀÁÂÃÄÅ àáâãäå Çç Ññ",
    "Ελληνικά ΣΟΦΙΑ",
    "Привет, мир!",
    "e\u0301 combining acute",
    "中文分词测试",
    "日本語のテキストとカタカナ",
    "한국어 텍스트",
    "mixed中english文text",
    "我爱Beijing天安门",
    "3.14159 and 2,718",
    "1234567890",
    "phone: +1 (555) 123-4567",
    "version v2.0.1-rc3",
    "e-mail: someone@example.com",
    "https://example.com/path?q=1&r=two#frag",
    "C++ and C# are languages; so is F*.",
    "don't won't can't it's",
    "\"quoted\" 'single' `back`",
    "brackets [a] {b} (c) <d>",
    "symbols $ % ^ & * _ = + | \\ / ~",
    "ellipsis… em—dash – en-dash",
    "“curly quotes” ‘single’ «guillemets»",
    "¿Qué? ¡Sí!",
    "emoji 😀 👍🏽 🥲",
    "🙂🙃",
    "heart ❤️ star ★",
    "math ∑ ∞ ≈ ≠ √",
    "currency € £ ¥ ₹",
    "zero\u200bwidth space",
    "soft\u00adhyphen",
    "control\u0007bell\u0000null",
    "bom\ufefftext",
    "non\u00a0breaking\u3000ideographic space",
    "MiXeD CaSe WoRdS",
    "CamelCaseIdentifierName",
    "snake_case_identifier_name",
    "dog: a domesticated carnivorous mammal",
    "noun.animal",
    "Tab\tseparated\tvalues",
    "line one\nline two\r\nline three",
    "repeated!!! punctuation??? ...",
    "The year 2024's AI models",
    "Mr. Smith went to Washington D.C.",
    "ﬁnancial ligature ﬀ",
    "fullwidth ＡＢＣ １２３",
    "Vietnamese: Tiếng Việt có dấu",
    "Arabic: مرحبا بالعالم",
    "Hebrew: שלום עולם",
    "Hindi: नमस्ते दुनिया",
    "Thai: สวัสดีชาวโลก",
    "superscript x² subscript H₂O",
    "roman numeral Ⅻ",
    "degree 30°C",
]

SENTENCES = [
    "dog: a member of the genus Canis that has been domesticated by man",
    "The quick brown fox jumps over the lazy dog.",
    "A man is playing a guitar.",
    "Federated learning trains models without moving the data.",
    "oak: a deciduous tree of the genus Quercus",
    "What is the capital of France?",
    "Paris is the capital and most populous city of France.",
    "I love pizza!",
    "volcano: a fissure in the earth's crust through which molten lava erupts",
    "Ångström units measure very small lengths.",
    "edge",
    "Kubernetes schedules pods onto nodes in a cluster, and the kubelet runs them.",
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model-dir", default=os.environ.get(
        "FEDGE_MODEL_DIR", os.path.join(ROOT, ".fedge/models/all-MiniLM-L6-v2")))
    ap.add_argument("--only", choices=["all", "minilm", "tiny"], default="all",
                    help="minilm: tokenizer ids + MiniLM states; tiny: the tiny token "
                         "classifier, its PEFT adapter and gradients (no download needed)")
    args = ap.parse_args()
    if args.only in ("all", "tiny"):
        from make_tiny_bert_goldens import make_tiny_bert_goldens
        make_tiny_bert_goldens(os.path.join(HERE, "tiny_bert"))
    if args.only == "tiny":
        return

    import tokenizers
    tok = tokenizers.Tokenizer.from_file(os.path.join(args.model_dir, "tokenizer.json"))
    tok.no_truncation()
    tok.no_padding()
    cases = [{"text": t, "ids": tok.encode(t).ids} for t in TOKENIZER_CASES]
    # Cross-check: the vocab.txt-based tokenizer must agree with tokenizer.json.
    wp = tokenizers.BertWordPieceTokenizer(os.path.join(args.model_dir, "vocab.txt"),
                                           lowercase=True)
    for c in cases:
        other = wp.encode(c["text"]).ids
        if other != c["ids"]:
            sys.exit(f"tokenizer.json and vocab.txt disagree on {c['text']!r}")
    write("wordpiece_ids.json", {
        "generator": f"tokenizers {tokenizers.__version__}, tokenizer.json of all-MiniLM-L6-v2",
        "cases": cases,
    })

    import numpy as np
    import torch
    import transformers
    model = transformers.AutoModel.from_pretrained(args.model_dir, dtype=torch.float32)
    model.eval()
    sentences = []
    with torch.no_grad():
        for text in SENTENCES:
            ids = tok.encode(text).ids
            input_ids = torch.tensor([ids])
            mask = torch.ones_like(input_ids)
            hidden = model(input_ids=input_ids, attention_mask=mask).last_hidden_state[0]
            n = len(ids)
            positions = sorted({0, n // 2, n - 1})
            emb = hidden.mean(dim=0)
            emb = emb / emb.norm().clamp(min=1e-12)
            sentences.append({
                "text": text,
                "ids": ids,
                "positions": positions,
                "hidden": [rounded(hidden[p].numpy()) for p in positions],
                "embedding": rounded(emb.numpy()),
            })
    write("minilm_hidden_states.json", {
        "generator": f"transformers {transformers.__version__}, torch {torch.__version__}, "
                     f"numpy {np.__version__}; float32 CPU, one sentence per forward pass",
        "model": os.path.basename(os.path.normpath(args.model_dir)),
        "sentences": sentences,
    })


def rounded(arr):
    return [float(f"{float(v):.7g}") for v in arr]


def write(name, obj):
    path = os.path.join(HERE, name)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False, separators=(",", ":"))
        f.write("\n")
    print(f"wrote {path} ({os.path.getsize(path)} bytes)")


if __name__ == "__main__":
    main()
