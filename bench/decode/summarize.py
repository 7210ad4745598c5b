#!/usr/bin/env python3
"""Medians and fedge/llama.cpp ratios of compare_llama_cpp.sh's CSV
(engine,weights,threads,prefill_tps,decode_tps; one row per measurement)."""
import csv
import statistics
import sys

LABELS = {
    ("fedge", "torch"): "fedge fp32, op-by-op libtorch step (before)",
    ("fedge", "f32"): "fedge fp32",
    ("fedge", "int8"): "fedge int8 (weight-only)",
    ("llama.cpp", "f32"): "llama.cpp F32",
    ("llama.cpp", "f16"): "llama.cpp F16",
    ("llama.cpp", "q8_0"): "llama.cpp Q8_0",
}
RATIOS = [
    (("fedge", "f32"), ("llama.cpp", "f32")),
    (("fedge", "int8"), ("llama.cpp", "q8_0")),
    (("fedge", "int8"), ("llama.cpp", "f16")),
    (("fedge", "torch"), ("llama.cpp", "f32")),
    (("fedge", "f32"), ("fedge", "torch")),
]


def main(path):
    rows = list(csv.DictReader(open(path)))
    samples = {}
    for r in rows:
        key = (r["engine"], r["weights"], int(r["threads"]))
        samples.setdefault(key, ([], []))
        samples[key][0].append(float(r["prefill_tps"]))
        samples[key][1].append(float(r["decode_tps"]))
    threads = sorted({k[2] for k in samples})
    med = {k: (statistics.median(p), statistics.median(d), len(d)) for k, (p, d) in samples.items()}
    thr = " / ".join(f"{t} thr" for t in threads)
    print(f"\n| tokens/s (median of n) | n | prefill {thr} | decode {thr} |")
    print("|---|---|---|---|")
    for cfg, label in LABELS.items():
        if not any((cfg[0], cfg[1], t) in med for t in threads):
            continue
        cells = [med.get((cfg[0], cfg[1], t)) for t in threads]
        n = min(c[2] for c in cells if c)
        pp = " / ".join(f"{c[0]:.1f}" if c else "-" for c in cells)
        tg = " / ".join(f"{c[1]:.1f}" if c else "-" for c in cells)
        print(f"| {label} | {n} | {pp} | {tg} |")
    print(f"\n| ratio | prefill {thr} | decode {thr} |")
    print("|---|---|---|")
    for a, b in RATIOS:
        cells = []
        for t in threads:
            x, y = med.get((a[0], a[1], t)), med.get((b[0], b[1], t))
            cells.append((x[0] / y[0], x[1] / y[1]) if x and y else None)
        if not any(cells):
            continue
        pp = " / ".join(f"{c[0]:.2f}" if c else "-" for c in cells)
        tg = " / ".join(f"{c[1]:.2f}" if c else "-" for c in cells)
        print(f"| {LABELS[a]} / {LABELS[b]} | {pp} | {tg} |")


if __name__ == "__main__":
    main(sys.argv[1])
