#!/usr/bin/env python3
"""Regenerates the goldens of the agent's generative (Llama-family) path.

Reference implementations: Hugging Face `tokenizers` (byte-level BPE) and
`transformers` + PyTorch (LlamaForCausalLM, Qwen2ForCausalLM). The C++ tests read
only the committed files under tests/golden/llm/; nothing here runs in CI.

  python3 -m venv /tmp/golden-venv
  /tmp/golden-venv/bin/pip install torch transformers tokenizers safetensors numpy
  /tmp/golden-venv/bin/python tests/golden/make_llm_goldens.py

Outputs (tests/golden/llm/):
  tok_gpt2/tokenizer.json     byte-level BPE, GPT-2 pre-tokenizer regex, merges in the
                              legacy "a b" string encoding, ChatML special tokens
  tok_qwen2/tokenizer.json    Split(Qwen2 regex, \\p{N} one digit) + ByteLevel(use_regex
                              false), merges as [a, b] pairs
  tok_llama3/tokenizer.json   Split(Llama-3 regex, \\p{N}{1,3}) + ByteLevel, ignore_merges
  tok_smollm2/tokenizer.json  Digits(individual) + ByteLevel(use_regex true), as SmolLM2
  bpe_ids.json                {"tokenizers": {name: {"cases": [{"text", "ids",
                              "decoded"}], "decode_cases": [{"ids", "text"}]}}}
                              decode_cases are random id sequences: their bytes are
                              often not valid UTF-8 (lossy decoding, U+FFFD).
  tiny_llama/, tiny_qwen2/    random-initialised HF directories (config.json,
                              model.safetensors, tokenizer.json, generation_config.json)
  llm_goldens.json            per model: input_ids [B, T], logits [B, T, V], labels
                              (prompt positions -100), loss, greedy generation ids.

The tokenizers are trained here on WordNet glosses (Debian's wordnet-base), so the
files are small and reproducible from the corpus the project uses anyway.
"""
import argparse
import glob
import json
import os
import random

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "llm")

GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
QWEN2_PATTERN = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"""
                 r""" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""")
LLAMA3_PATTERN = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"""
                  r""" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""")
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def wordnet_lines(limit=None):
    """'lemma: gloss' lines from /usr/share/wordnet/data.{noun,verb,adj,adv}."""
    out = []
    for path in sorted(glob.glob("/usr/share/wordnet/data.*")):
        with open(path, encoding="latin-1") as f:
            for line in f:
                if line.startswith("  ") or " | " not in line:
                    continue
                head, gloss = line.rstrip("\n").split(" | ", 1)
                lemma = head.split()[4].replace("_", " ")
                out.append(f"{lemma}: {gloss.strip()}")
    random.Random(0).shuffle(out)
    return out[:limit] if limit else out


HAND_CASES = [
    "", " ", "  ", "\n", "\t", "\r\n", "a", "Hello, world!", "hello world",
    "Hello  world", "Hello   world   ", "  leading spaces", "trailing spaces  ",
    "line one\nline two", "line one\r\nline two\r\n", "tabs\tand\tspaces \t mixed",
    "blank\n\n\nlines", "  \n  indented", "x \n y", "end with newline\n\n",
    "I'm here, you're there, we'll see; they've gone, she'd know, it's Bob's.",
    "I'M SHOUTING, YOU'RE TOO, WE'LL, THEY'VE, SHE'D, IT'S, DON'T",
    "'s 't 're 've 'm 'll 'd", "''s '''t", "rock'n'roll", "O'Neill's", "it'ſ long s",
    "12345", "1234567890", "3.14159", "1,234,567.89", "x1y22z333w4444", "2024-05-09",
    "phone: +1 (555) 010-9999", "٣٤٥ ١٢", "½ ² ³ Ⅻ ⅷ", "१२३ नमस्ते",
    "naïve café résumé", "Crème Brûlée à la mode", "Straße ŁÓDŹ Ærø",
    "Здравствуй, мир!", "Γειά σου Κόσμε", "שלום עולם", "مرحبا بالعالم",
    "你好，世界。", "日本語のテキストです", "한국어 텍스트", "ภาษาไทย",
    "emoji 😀 and 🎉 party", "family 👨‍👩‍👧 zwj", "flags 🇫🇷🇩🇪", "✓ ✗ → ← ∑ ∫",
    "e\u0301 combining", "nbsp\u00a0here", "ideographic\u3000space",
    "zero\u200bwidth", "\u2028line sep\u2029", "control\x01\x02chars",
    "null\x00byte", "del\x7fchar", "mixed 中文 and English 123",
    "<|im_start|>user\nhi there<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|>", "a<|endoftext|>b", "<|im_end|><|im_end|>", "<|im_start",
    "< |im_start| >", "text before <|im_end|> text after",
    "def f(x):\n    return x ** 2  # square\n", "if (a && b) { c++; }",
    "http://example.com/path?q=1&r=two#frag", "user@example.org",
    "!!!???...", "---===---", "(parenthetical) [bracketed] {braced}",
    "\"quoted\" 'single' `back`", "a  b   c    d", "    ", "\t\t\n\t",
    "CamelCaseWordsHere", "snake_case_words", "kebab-case-words",
    "The quick brown fox jumps over the lazy dog.",
    "antidisestablishmentarianism", "supercalifragilisticexpialidocious",
    "a" * 60, "ab" * 40, "1" * 25, " " * 17 + "x",
]


def train_tokenizer(kind, corpus, vocab_size):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    model = models.BPE(ignore_merges=(kind == "llama3"))
    tok = Tokenizer(model)
    if kind == "gpt2":
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    elif kind == "smollm2":
        # SmolLM2's layout: digits split one by one, then the GPT-2 ByteLevel regex.
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ])
    else:
        pattern = QWEN2_PATTERN if kind == "qwen2" else LLAMA3_PATTERN
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(corpus, trainer=trainer)
    return tok


def make_tokenizers(lines):
    from tokenizers import Tokenizer
    corpus = lines[:20000]
    cases = HAND_CASES + lines[30000:30060]
    result = {}
    rng = random.Random(1)
    for kind in ["gpt2", "qwen2", "llama3", "smollm2"]:
        tok = train_tokenizer(kind, corpus, 1000)
        d = os.path.join(OUT, f"tok_{kind}")
        os.makedirs(d, exist_ok=True)
        path = os.path.join(d, "tokenizer.json")
        tok.save(path)
        if kind == "gpt2":
            # The legacy merge encoding ("a b" strings) that older tokenizer.json files use.
            with open(path) as f:
                j = json.load(f)
            j["model"]["merges"] = [" ".join(m) if isinstance(m, list) else m
                                    for m in j["model"]["merges"]]
            with open(path, "w") as f:
                json.dump(j, f, ensure_ascii=False, indent=1)
        tok = Tokenizer.from_file(path)
        entries = []
        for text in cases:
            ids = tok.encode(text, add_special_tokens=False).ids
            entries.append({"text": text, "ids": ids,
                            "decoded": tok.decode(ids, skip_special_tokens=False)})
        vocab = tok.get_vocab_size()
        decode_cases = []
        for _ in range(30):
            ids = [rng.randrange(vocab) for _ in range(rng.randrange(1, 8))]
            decode_cases.append({"ids": ids, "text": tok.decode(ids, skip_special_tokens=False),
                                 "skip_special": tok.decode(ids, skip_special_tokens=True)})
        result[kind] = {"tokenizer": f"llm/tok_{kind}/tokenizer.json", "cases": entries,
                        "decode_cases": decode_cases}
    return result


def tolist(t):
    return [float(f"{x:.9g}") for x in t.reshape(-1).tolist()]


def make_models(lines):
    import shutil

    import torch
    from transformers import (GenerationConfig, LlamaConfig, LlamaForCausalLM, Qwen2Config,
                              Qwen2ForCausalLM)
    from tokenizers import Tokenizer

    goldens = {}
    specs = {
        "tiny_llama": (LlamaForCausalLM, LlamaConfig(
            vocab_size=1000, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
            rms_norm_eps=1e-6, rope_theta=10000.0, tie_word_embeddings=False,
            initializer_range=0.3, bos_token_id=0, eos_token_id=0, pad_token_id=None),
            "tok_llama3"),
        "tiny_qwen2": (Qwen2ForCausalLM, Qwen2Config(
            vocab_size=1000, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=1, max_position_embeddings=128,
            rms_norm_eps=1e-5, rope_theta=1000000.0, tie_word_embeddings=True,
            initializer_range=0.3, bos_token_id=0, eos_token_id=2, use_sliding_window=False),
            "tok_qwen2"),
    }
    for name, (cls, config, tok_name) in specs.items():
        torch.manual_seed(1234)
        model = cls(config).eval()
        if name == "tiny_llama":
            # Exercise the norm weights (initialised to ones) too.
            with torch.no_grad():
                for n, p in model.named_parameters():
                    if "norm" in n:
                        p.add_(0.1 * torch.randn_like(p))
        d = os.path.join(OUT, name)
        os.makedirs(d, exist_ok=True)
        model.save_pretrained(d, safe_serialization=True)
        shutil.copy(os.path.join(OUT, tok_name, "tokenizer.json"), os.path.join(d, "tokenizer.json"))
        tok = Tokenizer.from_file(os.path.join(d, "tokenizer.json"))

        texts = ["dog: a member of the genus Canis", "run: move fast by using one's feet"]
        enc = [tok.encode(t).ids[:10] for t in texts]
        n = min(len(e) for e in enc)
        input_ids = torch.tensor([e[:n] for e in enc])
        labels = input_ids.clone()
        labels[:, :3] = -100
        with torch.no_grad():
            out = model(input_ids=input_ids, labels=labels)
        # The expected loss as fedge computes it (mean over unmasked next-token targets).
        gen = []
        for prompt in ["cat:", "bank: a"]:
            p_ids = tok.encode(prompt).ids
            with torch.no_grad():
                g = model.generate(torch.tensor([p_ids]), do_sample=False, max_new_tokens=16,
                                   min_new_tokens=16, eos_token_id=None, pad_token_id=0,
                                   return_dict_in_generate=True, output_scores=True)
            new_ids = g.sequences[0, len(p_ids):].tolist()
            # Greedy ids are only a fair golden when the top two logits are far apart.
            margin = min(float((s[0].topk(2).values[0] - s[0].topk(2).values[1])) for s in g.scores)
            assert margin > 1e-3, (name, prompt, margin)
            gen.append({"prompt": prompt, "prompt_ids": p_ids, "ids": new_ids, "min_margin": margin,
                        "text": tok.decode(new_ids)})
        goldens[name] = {
            "dir": f"llm/{name}",
            "input_ids": input_ids.tolist(),
            "labels": labels.tolist(),
            "logits_shape": list(out.logits.shape),
            "logits": tolist(out.logits),
            "loss": float(out.loss),
            "greedy": gen,
        }
        print(name, "params", sum(p.numel() for p in model.parameters()), "loss", float(out.loss))
    return goldens


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", choices=["tokenizers", "models"], default=None)
    args = ap.parse_args()
    os.makedirs(OUT, exist_ok=True)
    lines = wordnet_lines()
    if args.only in (None, "tokenizers"):
        import tokenizers
        result = {"generator": f"tokenizers {tokenizers.__version__}",
                  "tokenizers": make_tokenizers(lines)}
        with open(os.path.join(OUT, "bpe_ids.json"), "w") as f:
            json.dump(result, f, ensure_ascii=False, indent=0)
    if args.only in (None, "models"):
        import torch
        import transformers
        result = {"generator": f"transformers {transformers.__version__}, torch {torch.__version__}",
                  "models": make_models(lines)}
        with open(os.path.join(OUT, "llm_goldens.json"), "w") as f:
            json.dump(result, f)


if __name__ == "__main__":
    main()
