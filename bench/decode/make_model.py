#!/usr/bin/env python3
"""Writes one random-weight Llama with SmolLM2-135M's shape twice: as a Hugging Face
directory for fedge (config.json + model.safetensors, fp32) and as GGUF for
llama.cpp (F32 and F16; Q8_0 is made from the F32 file by llama-quantize).

Weights: N(0, 0.02) from numpy's PCG64 seeded by --seed, RMSNorm weights 1 — the
same values in both files (the GGUF q/k rows permuted as convert_hf_to_gguf.py
does for llama.cpp's rotary layout). Needs numpy and gguf-py (llama.cpp's
vendor/llama.cpp/gguf-py, passed with --gguf-py, or the PyPI package `gguf`).

    make_model.py --out DIR [--seed 0] [--gguf-py PATH]
"""
import argparse
import json
import os
import struct
import sys

# SmolLM2-135M (HuggingFaceTB/SmolLM2-135M config.json).
CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_act": "silu",
    "vocab_size": 49152,
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "head_dim": 64,
    "max_position_embeddings": 8192,
    "rms_norm_eps": 1e-05,
    "rope_theta": 100000.0,
    "tie_word_embeddings": True,
    "bos_token_id": 0,
    "eos_token_id": 0,
    "torch_dtype": "float32",
}


def tensors(np, seed):
    """(HF name, fp32 array) in checkpoint order."""
    c = CONFIG
    rng = np.random.Generator(np.random.PCG64(seed))
    h, i, d = c["hidden_size"], c["intermediate_size"], c["head_dim"]
    nh, nkv = c["num_attention_heads"], c["num_key_value_heads"]

    def normal(*shape):
        return rng.standard_normal(shape, dtype=np.float32) * np.float32(0.02)

    out = [("model.embed_tokens.weight", normal(c["vocab_size"], h))]
    for layer in range(c["num_hidden_layers"]):
        p = f"model.layers.{layer}."
        out += [
            (p + "self_attn.q_proj.weight", normal(nh * d, h)),
            (p + "self_attn.k_proj.weight", normal(nkv * d, h)),
            (p + "self_attn.v_proj.weight", normal(nkv * d, h)),
            (p + "self_attn.o_proj.weight", normal(h, nh * d)),
            (p + "mlp.gate_proj.weight", normal(i, h)),
            (p + "mlp.up_proj.weight", normal(i, h)),
            (p + "mlp.down_proj.weight", normal(h, i)),
            (p + "input_layernorm.weight", np.ones(h, dtype=np.float32)),
            (p + "post_attention_layernorm.weight", np.ones(h, dtype=np.float32)),
        ]
    out.append(("model.norm.weight", np.ones(h, dtype=np.float32)))
    return out


def write_safetensors(path, named):
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, a in named:
        header[name] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for _, a in named:
            f.write(a.tobytes())
    os.replace(tmp, path)


def permute(w, n_head):
    # convert_hf_to_gguf.py LlamaModel.permute: HF rotate-half rows -> GGML pairs.
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


GGUF_NAMES = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
}


def gguf_name(hf):
    if hf == "model.embed_tokens.weight":
        return "token_embd.weight"
    if hf == "model.norm.weight":
        return "output_norm.weight"
    rest = hf[len("model.layers.") :]
    layer, _, rest = rest.partition(".")
    module = rest[: -len(".weight")]
    return f"blk.{layer}.{GGUF_NAMES[module]}.weight"


def write_gguf(gguf, np, path, named, f16):
    c = CONFIG
    w = gguf.GGUFWriter(path + ".tmp", "llama")
    w.add_name("fedge-decode-bench-smollm2-135m-shape")
    w.add_context_length(c["max_position_embeddings"])
    w.add_embedding_length(c["hidden_size"])
    w.add_block_count(c["num_hidden_layers"])
    w.add_feed_forward_length(c["intermediate_size"])
    w.add_rope_dimension_count(c["head_dim"])
    w.add_head_count(c["num_attention_heads"])
    w.add_head_count_kv(c["num_key_value_heads"])
    w.add_key_length(c["head_dim"])
    w.add_value_length(c["head_dim"])
    w.add_layer_norm_rms_eps(c["rms_norm_eps"])
    w.add_rope_freq_base(c["rope_theta"])
    w.add_vocab_size(c["vocab_size"])
    # No tokenizer: llama-bench feeds random token ids; "none" + vocab_size gives
    # llama.cpp dummy tokens.
    w.add_tokenizer_model("none")
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if f16 else gguf.LlamaFileType.ALL_F32)
    for name, a in named:
        if name.endswith("q_proj.weight"):
            a = permute(a, c["num_attention_heads"])
        elif name.endswith("k_proj.weight"):
            a = permute(a, c["num_key_value_heads"])
        if f16 and a.ndim == 2:
            a = a.astype(np.float16)
        w.add_tensor(gguf_name(name), np.ascontiguousarray(a))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    os.replace(path + ".tmp", path)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--gguf-py", default="", help="llama.cpp's gguf-py directory")
    args = ap.parse_args()
    if args.gguf_py:
        sys.path.insert(0, args.gguf_py)
    import numpy as np
    import gguf

    named = tensors(np, args.seed)
    hf_dir = os.path.join(args.out, "fedge")
    os.makedirs(hf_dir, exist_ok=True)
    with open(os.path.join(hf_dir, "config.json"), "w") as f:
        json.dump(CONFIG, f, indent=2)
    write_safetensors(os.path.join(hf_dir, "model.safetensors"), named)
    write_gguf(gguf, np, os.path.join(args.out, "model-f32.gguf"), named, f16=False)
    write_gguf(gguf, np, os.path.join(args.out, "model-f16.gguf"), named, f16=True)
    params = sum(a.size for _, a in named)
    print(f"wrote {args.out}: {params / 1e6:.1f} M parameters, seed {args.seed}")


if __name__ == "__main__":
    main()
