#!/usr/bin/env python3
"""Goldens for BERT token classification, PEFT adapters and LoRA gradients.

A small random-initialised BertForTokenClassification (seeded, so the files are
reproducible for a given torch version) stands in for a real checkpoint: the C++
tests need its exact weights, and a random model exercises every weight where a
pretrained one might hide mistakes behind near-zero values.

Run through make_goldens.py (`--only tiny` skips the MiniLM part), or directly:
  /tmp/golden-venv/bin/python tests/golden/make_tiny_bert_goldens.py

Outputs (tests/golden/tiny_bert/):
  model/            config.json, model.safetensors (BertForTokenClassification,
                    3 labels), vocab.txt — a Hugging Face directory fedge loads
  peft_adapter/     adapter_config.json + adapter_model.safetensors written by
                    peft's save_pretrained: TOKEN_CLS, r=4, alpha=8, targets
                    query / value / intermediate.dense, modules_to_save classifier
                    (peft's default for TOKEN_CLS); LoRA B and the saved classifier
                    are randomised so the adapter changes every output
  goldens.json      {"input_ids", "attention_mask", "labels" ([B, T], -100 = ignored),
                     "base_logits" (no adapter), "adapter_logits" (peft model),
                     "loss" (token cross-entropy, mean over non-ignored tokens),
                     "grads": {fedge name: flat values} for every trainable tensor
                     after one backward pass of that loss (eval mode: no dropout)}
                    Tensors are flattened row-major; "shapes" gives their shapes.
"""
import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))

SEED = 1234
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [
    "the", "a", "dog", "cat", "tree", "oak", "runs", "barks", "is", "of", "genus", "member",
    "small", "large", "animal", "plant", "domesticated", "wild", "green", "leaf", "by", "man",
    "quercus", "canis", ":", ",", ".", "in", "on", "##s", "##ed", "##ing", "##ly", "edge",
    "node", "cluster", "model", "data", "federated", "learning", "trains", "without", "moving",
    "paris", "france", "capital", "city", "river", "water", "fire", "earth",
]
# Two sequences, the second padded: [CLS] ... [SEP] [PAD]...
SEQUENCES = [
    [2, 7, 18, 10, 20, 13, 14, 15, 24, 3],
    [2, 8, 12, 3],
]
LABELS = [
    [-100, 0, 1, 2, 1, 0, 0, 2, 1, -100],
    [-100, 2, 0, -100],
]


def flat(t):
    return [float(f"{float(v):.8g}") for v in t.detach().reshape(-1).tolist()]


def fedge_name(peft_name):
    """peft's parameter name -> the name fedge's trainable bundle uses."""
    prefix = "base_model.model."
    name = peft_name[len(prefix):] if peft_name.startswith(prefix) else peft_name
    name = name.replace(".lora_A.default.weight", ".lora_A").replace(".lora_B.default.weight", ".lora_B")
    name = name.replace("classifier.modules_to_save.default.", "classifier.")
    return name


def make_tiny_bert_goldens(out_dir):
    import peft
    import torch
    import transformers

    torch.manual_seed(SEED)
    config = transformers.BertConfig(
        vocab_size=len(VOCAB), hidden_size=16, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=32, max_position_embeddings=16, type_vocab_size=2,
        layer_norm_eps=1e-12, num_labels=3, hidden_act="gelu")
    model = transformers.BertForTokenClassification(config)
    # The default init (N(0, 0.02), LayerNorm 1/0) makes near-constant outputs;
    # wider weights make every layer matter.
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(0.0, 0.3 if "LayerNorm" not in name else 0.1).add_(1.0 if name.endswith(
                "LayerNorm.weight") else 0.0)
    model.eval()
    model_dir = os.path.join(out_dir, "model")
    os.makedirs(model_dir, exist_ok=True)
    model.save_pretrained(model_dir, safe_serialization=True)
    with open(os.path.join(model_dir, "vocab.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(VOCAB) + "\n")

    t = max(len(s) for s in SEQUENCES)
    input_ids = torch.tensor([s + [0] * (t - len(s)) for s in SEQUENCES])
    attention_mask = torch.tensor([[1] * len(s) + [0] * (t - len(s)) for s in SEQUENCES])
    labels = torch.tensor([l + [-100] * (t - len(l)) for l in LABELS])
    with torch.no_grad():
        base_logits = model(input_ids=input_ids, attention_mask=attention_mask).logits

    lora = peft.LoraConfig(task_type="TOKEN_CLS", r=4, lora_alpha=8, lora_dropout=0.0,
                           target_modules=["query", "value", "intermediate.dense"])
    pmodel = peft.get_peft_model(model, lora)
    with torch.no_grad():
        for name, p in pmodel.named_parameters():
            if "lora_B" in name or "modules_to_save" in name:
                p.normal_(0.0, 0.3)
    pmodel.eval()
    adapter_dir = os.path.join(out_dir, "peft_adapter")
    pmodel.save_pretrained(adapter_dir)
    os.remove(os.path.join(adapter_dir, "README.md"))  # peft's empty model card
    # A relative name keeps machine paths out of the committed config.
    cfg_path = os.path.join(adapter_dir, "adapter_config.json")
    with open(cfg_path, encoding="utf-8") as f:
        cfg = json.load(f)
    cfg["base_model_name_or_path"] = "model"
    with open(cfg_path, "w", encoding="utf-8") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
        f.write("\n")

    out = pmodel(input_ids=input_ids, attention_mask=attention_mask)
    logits = out.logits
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, config.num_labels), labels.reshape(-1),
                                             ignore_index=-100)
    loss.backward()
    grads, shapes = {}, {}
    for name, p in pmodel.named_parameters():
        if not p.requires_grad:
            continue
        n = fedge_name(name)
        grads[n] = flat(p.grad)
        shapes[n] = list(p.shape)

    goldens = {
        "generator": f"transformers {transformers.__version__}, peft {peft.__version__}, "
                     f"torch {torch.__version__}; float32 CPU, eval mode",
        "input_ids": input_ids.tolist(),
        "attention_mask": attention_mask.tolist(),
        "labels": labels.tolist(),
        "num_labels": config.num_labels,
        "base_logits": flat(base_logits),
        "adapter_logits": flat(logits),
        "logits_shape": list(logits.shape),
        "loss": float(loss.detach()),
        "grads": grads,
        "shapes": shapes,
    }
    path = os.path.join(out_dir, "goldens.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(goldens, f, separators=(",", ":"))
        f.write("\n")
    print(f"wrote {out_dir} (goldens.json {os.path.getsize(path)} bytes)")


if __name__ == "__main__":
    make_tiny_bert_goldens(os.path.join(HERE, "tiny_bert"))
