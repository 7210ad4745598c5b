#!/usr/bin/env python3
"""Gap-table rows (run_experiment.py --report gap's format) for the runs in one work dir,
with Δ against the three-seed centralized reference of docs/experiments.md (0.826, 0.817,
0.8025 at seeds 7, 8, 9), for when those centralized summaries are not in the same work dir
(session 16: /tmp had been cleared). Prints each row and its per-seed accuracies.

  bench/experiment/gap_rows.py /tmp/h44/exp
"""
import json, glob, os, sys, re
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run_experiment as rx
desc = {c[0]: c[1] for c in rx.CONFIGS}
desc.update(getattr(rx, 'GAP_DESC', {}))
cent = [0.826, 0.817, 0.8025]  # centralized reference finals, seeds 7, 8, 9 (docs table)
cm = sum(cent) / 3
groups = {}
for f in sorted(glob.glob(os.path.join(sys.argv[1], 'summaries', '*.json'))):
    tag = os.path.basename(f)[:-5]
    m = re.match(r'a(\d+)-(.*?)(-s(\d+))?$', tag)
    a = {'05': 0.5, '01': 0.1}.get(m.group(1)) or float(m.group(1))  # a100: alpha 100
    name = m.group(2); seed = int(m.group(4) or 7)
    s = json.load(open(f))
    groups.setdefault((a, name), []).append((seed, s['final_accuracy'], [r['accuracy'] for r in s['rounds']]))
for (a, name), runs in sorted(groups.items(), key=lambda kv: (-kv[0][0], kv[0][1])):
    runs.sort()
    finals = [r[1] for r in runs]; curves = [r[2] for r in runs]
    m = sum(finals) / len(finals)
    n = min(len(c) for c in curves)
    curve = [sum(c[i] for c in curves) / len(curves) for i in range(n)]
    hit = [i + 1 for i, x in enumerate(curve) if x >= cm - 0.01]
    within = str(hit[0]) if hit else "not in %d" % len(curve)
    print("| %s | %s | %s | %.4f | %s | %+.1f | %s | %s |" % (
        a, desc[name], ", ".join(str(r[0]) for r in runs), m,
        "%.4f–%.4f" % (min(finals), max(finals)) if len(finals) > 1 else "(one seed)",
        100 * (m - cm), ", ".join("%.3f" % x for x in curve), within))
    for r in runs:
        print("    seed %d: %s" % (r[0], ", ".join("%.4g" % x for x in r[2])))
