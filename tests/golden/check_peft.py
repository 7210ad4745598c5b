#!/usr/bin/env python3
"""Checks that Python's `peft` loads a fedge-exported adapter and reproduces fedge.

tests/golden/peft_minilm/adapter/ was written by fedge (ExportPeftAdapter's format;
regenerate with agent/tests/model/peft_test.cpp's PeftMiniLmTest.DISABLED_WriteFixture)
and fedge_outputs.json holds what fedge computed with it: class probabilities
and sentence embeddings. This script rebuilds the same model the way a Python
user would:

  base = transformers.AutoModel.from_pretrained(MiniLM)          # BertModel
  model = peft.PeftModel.from_pretrained(base, adapter_dir)      # LoRA on query/value
  pooled = mean of last_hidden_state over the attention mask     # fedge's pooling
  logits = pooled @ W^T + b   (W, b from fedge_head.safetensors)
  embedding = pooled / ||pooled||

and compares with fedge's values (|py - fedge| <= 1e-5 + 1e-4 |fedge|). It also
reports how far the base model without the adapter is, so a no-op adapter
cannot pass. Exit status 0 on a match.

  /tmp/golden-venv/bin/pip install torch transformers safetensors peft
  /tmp/golden-venv/bin/python tests/golden/check_peft.py [--model-dir DIR] [--adapter DIR --outputs FILE]
"""
import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
RTOL, ATOL = 1e-4, 1e-5


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model-dir", default=os.environ.get(
        "FEDGE_MODEL_DIR", os.path.join(ROOT, ".fedge/models/all-MiniLM-L6-v2")))
    ap.add_argument("--adapter", default=os.path.join(HERE, "peft_minilm", "adapter"))
    ap.add_argument("--outputs", default=os.path.join(HERE, "peft_minilm", "fedge_outputs.json"))
    args = ap.parse_args()

    import peft
    import torch
    import transformers
    from safetensors import safe_open

    with open(args.outputs, encoding="utf-8") as f:
        want = json.load(f)
    tok = transformers.AutoTokenizer.from_pretrained(args.model_dir)
    base = transformers.AutoModel.from_pretrained(args.model_dir, dtype=torch.float32)
    model = peft.PeftModel.from_pretrained(base, args.adapter)
    model.eval()
    with safe_open(os.path.join(args.adapter, "fedge_head.safetensors"), "pt") as f:
        labels = json.loads(f.metadata()["labels"])
        weight, bias = f.get_tensor("classifier.weight"), f.get_tensor("classifier.bias")

    def outputs(m):
        # One text per forward pass (fedge pads batches; padding is masked either way).
        probs, embs = [], []
        with torch.no_grad():
            for text in want["texts"]:
                enc = tok(text, return_tensors="pt", truncation=True, max_length=64)
                hidden = m(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
                mask = enc["attention_mask"].unsqueeze(-1).float()
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                probs.append(torch.softmax(pooled @ weight.T + bias, -1)[0])
                embs.append(torch.nn.functional.normalize(pooled, dim=-1)[0])
        return probs, embs

    def compare(got, ref):
        ref = torch.tensor(ref, dtype=torch.float64)
        got = got.to(torch.float64)
        excess = ((got - ref).abs() - (ATOL + RTOL * ref.abs())).max().item()
        return excess <= 0, (got - ref).abs().max().item()

    ok = True
    probs, embs = outputs(model)
    worst = {"probabilities": 0.0, "embeddings": 0.0}
    for i, text in enumerate(want["texts"]):
        for key, got in (("probabilities", probs[i]), ("embeddings", embs[i])):
            match, diff = compare(got, want[key][i])
            worst[key] = max(worst[key], diff)
            if not match:
                ok = False
                print(f"MISMATCH {key} for {text!r}: max |diff| {diff:.3g}")
    with model.disable_adapter():
        _, base_embs = outputs(model)
    base_diff = max((base_embs[i] - torch.tensor(want["embeddings"][i])).abs().max().item()
                    for i in range(len(want["texts"])))
    print(f"peft {peft.__version__}, transformers {transformers.__version__}, torch {torch.__version__}")
    print(f"labels {labels}; {len(want['texts'])} texts")
    print(f"max |peft - fedge|: probabilities {worst['probabilities']:.3g}, "
          f"embeddings {worst['embeddings']:.3g} (tolerance {ATOL} + {RTOL}*|fedge|)")
    print(f"max |base model without adapter - fedge| embeddings {base_diff:.3g} (the adapter matters)")
    if base_diff < 1e-3:
        ok = False
        print("FAIL: the adapter does not change the outputs; the check proves nothing")
    print("OK" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
