#!/usr/bin/env python3
"""Goldens for the tokenizers real models ship (scripts/fetch-tokenizers.sh puts
Gemma 3's, Llama 3.1's, Qwen3's and Llama 2's tokenizer.json and tokenizer_config.json
under .fedge/tokenizers/). Reference: Hugging Face `tokenizers` loading the same file,
and jinja2 rendering each tokenizer_config.json's own chat_template as transformers
does. Nothing here runs in CI; agent/tests/model/real_tokenizer_test.cpp reads the
committed output.

  /tmp/golden-venv/bin/python tests/golden/make_real_tokenizer_goldens.py

Output: tests/golden/llm/real_tokenizers.json
  {"generator", "tokenizers": {name: {"sha256": of tokenizer.json,
     "cases": [{"text", "ids", "special_ids", "decoded"}],
     "decode_cases": [{"ids", "text", "skip_special"}]}},
   "chat": {name: [{"messages", "add_generation_prompt", "text"}]}}
"""
import hashlib
import json
import os
import random
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
from make_llm_goldens import CHAT_CONVERSATIONS, HAND_CASES, SPM_CASES, wordnet_lines  # noqa: E402

SRC = os.environ.get("FEDGE_TOKENIZERS_DIR", os.path.join(ROOT, ".fedge", "tokenizers"))
NAMES = ["gemma3", "llama3_1", "qwen3", "llama2"]

# Each model's own control tokens, in and around text, and strings near them.
ADDED_CASES = {
    "gemma3": ["<start_of_turn>user\nDefine dog.<end_of_turn>\n<start_of_turn>model\n",
               "<bos><bos>x", "<eos>", "<unused0><unused6241>", "<unused62410>", "<unused", "a<mask>b",
               "<start_of_image><image_soft_token><end_of_image>", "<start_of_turn >", "<<start_of_turn>",
               "<" * 40, "<unused12>" * 5, "\t<pad> <unk>\n",
               # ">\u2581</" is a token: the one place a merge crosses a word start.
               "<b>bold</b> <i> </i>", "a> </x> > </", "x>\u2581</y", ">  </"],
    "llama3_1": ["<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>",
                 "<|reserved_special_token_0|><|reserved_special_token_247|>", "<|python_tag|>x",
                 "<|eom_id|><|finetune_right_pad_id|>", "<|eot_id", "<" * 40, "<|" * 20],
    "qwen3": ["<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n",
              "<tool_call>\n{\"name\": \"f\"}\n</tool_call>", "<|endoftext|><|fim_prefix|>",
              "<think>", "</think >", "<" * 40, "<|vision_start|><|image_pad|><|vision_end|>"],
    "llama2": ["<s>[INST] hi [/INST]", "</s><s>", "<unk>", "<s", "<" * 40],
}


def random_texts(rng, n):
    """Strings of code points from the blocks real text mixes, with whitespace runs."""
    blocks = [(0x20, 0x7E), (0xA0, 0x17F), (0x370, 0x3FF), (0x400, 0x4FF), (0x590, 0x6FF),
              (0x900, 0x97F), (0xE00, 0xE7F), (0x3040, 0x30FF), (0x4E00, 0x4FFF), (0xAC00, 0xACFF),
              (0x1F300, 0x1F64F), (0x2000, 0x206F), (0x300, 0x36F)]
    out = []
    for _ in range(n):
        s = []
        for _ in range(rng.randrange(1, 40)):
            r = rng.random()
            if r < 0.15:
                s.append(rng.choice([" ", "  ", "\n", "\t", "\r\n", " \n ", "\u3000", "\u00a0"]))
            else:
                lo, hi = rng.choice(blocks)
                s.append(chr(rng.randrange(lo, hi + 1)))
        out.append("".join(s))
    return out


def chat_cases(name, template, config):
    import jinja2
    import jinja2.ext
    import jinja2.sandbox
    from datetime import datetime
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                                       extensions=[jinja2.ext.loopcontrols])

    def raise_exception(msg):
        raise ValueError(msg)

    env.globals["raise_exception"] = raise_exception
    # Llama 3.1's template prints today's date; the golden fixes it, as transformers
    # would on this day.
    env.globals["strftime_now"] = lambda fmt: datetime(2026, 12, 7).strftime(fmt)
    conversations = CHAT_CONVERSATIONS
    bos = config.get("bos_token")
    eos = config.get("eos_token")
    bos = bos["content"] if isinstance(bos, dict) else bos
    eos = eos["content"] if isinstance(eos, dict) else eos
    t = env.from_string(template)
    cases = []
    for conv in conversations:
        for gen in (True, False):
            cases.append({"messages": conv, "add_generation_prompt": gen,
                          "text": t.render(messages=conv, add_generation_prompt=gen, bos_token=bos or "",
                                           eos_token=eos or "")})
    return cases


def split_string_cases(lines):
    """Split pre-tokenizers on a string, every behavior, on the golden Gemma-layout
    SentencePiece tokenizer (tok_gemma): Gemma 3's own Split(" ") never matches after
    its normalizer, so these are what exercise the behaviors."""
    from tokenizers import Tokenizer
    with open(os.path.join(HERE, "llm", "tok_gemma", "tokenizer.json")) as f:
        base = json.load(f)
    texts = HAND_CASES + SPM_CASES + lines[30000:30030] + ["a.b..c...d", "..", "x\u2581\u2581y", "end."]
    out = []
    for pattern in ["\u2581", ".", "\u2581\u2581"]:
        for behavior in ["Isolated", "Removed", "MergedWithPrevious", "MergedWithNext", "Contiguous"]:
            spec = {"type": "Split", "pattern": {"String": pattern}, "behavior": behavior, "invert": False}
            j = dict(base, pre_tokenizer=spec)
            tok = Tokenizer.from_str(json.dumps(j))
            out.append({"pre_tokenizer": spec,
                        "cases": [{"text": t, "ids": tok.encode(t, add_special_tokens=False).ids} for t in texts]})
    return out


def main():
    import tokenizers
    import jinja2
    from tokenizers import Tokenizer
    lines = wordnet_lines()
    rng = random.Random(11)
    common = (SPM_CASES + HAND_CASES + lines[30000:30100] + random_texts(rng, 60) +
              [" ".join(lines[31000:31040]), "\n".join(lines[32000:32020])])
    out = {"generator": f"tokenizers {tokenizers.__version__}, jinja2 {jinja2.__version__}",
           "tokenizers": {}, "chat": {}}
    for name in NAMES:
        path = os.path.join(SRC, name, "tokenizer.json")
        with open(path, "rb") as f:
            sha = hashlib.sha256(f.read()).hexdigest()
        tok = Tokenizer.from_file(path)
        entries = []
        for text in common + ADDED_CASES[name]:
            ids = tok.encode(text, add_special_tokens=False).ids
            entries.append({"text": text, "ids": ids,
                            "special_ids": tok.encode(text, add_special_tokens=True).ids,
                            "decoded": tok.decode(ids, skip_special_tokens=False)})
        size = tok.get_vocab_size(with_added_tokens=True)
        decode_cases = []
        for n in range(60):
            pool = (lambda: rng.randrange(0, 1000)) if n % 3 == 0 else (lambda: rng.randrange(size))
            ids = [pool() for _ in range(rng.randrange(1, 10))]
            decode_cases.append({"ids": ids, "text": tok.decode(ids, skip_special_tokens=False),
                                 "skip_special": tok.decode(ids, skip_special_tokens=True)})
        out["tokenizers"][name] = {"sha256": sha, "cases": entries, "decode_cases": decode_cases}
        with open(os.path.join(SRC, name, "tokenizer_config.json")) as f:
            config = json.load(f)
        template = config.get("chat_template")
        if isinstance(template, str):
            out["chat"][name] = chat_cases(name, template, config)
        print(name, "cases", len(entries), "vocab", size, "chat", len(out["chat"].get(name, [])))
    out["split_string"] = split_string_cases(lines)
    with open(os.path.join(HERE, "llm", "real_tokenizers.json"), "w") as f:
        json.dump(out, f, ensure_ascii=False, indent=0)


if __name__ == "__main__":
    main()
