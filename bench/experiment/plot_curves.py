#!/usr/bin/env python3
"""Rounds-to-accuracy curves from run_experiment.py's results.json (issue 14 item 1).

  bench/experiment/plot_curves.py WORK_DIR/results.json --out docs/img/gap-curves.png

One panel per Dirichlet alpha: held-out accuracy of the global after every round (the round
records in each run's summary), the mean over the data seeds with the min-max range as error
bars, one line per configuration; the centralized reference dashed. Draws with gnuplot
(Debian: gnuplot-nox); installs nothing: without gnuplot it says so and exits 3. Runs that
failed or were not run are left out (the table says why).
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

# Legend names for configurations whose name says too little.
LABELS = {"int8": "fedavg (int8)",
          "scaffold-lr4e-3": "scaffold-lr4e-3 (quickstart default until c143bf5)",
          "scaffold-lr4e-3-keep-st01b005": "scaffold-lr4e-3-keep-st01b005 (quickstart default, fp32 global)",
          "scaffold-lr4e-3-keep-st01b005-g16": "scaffold-lr4e-3-keep-st01b005-g16 (quickstart default since c014b79)"}


def curves(results):
    """alpha -> [(name, desc, [(round, mean, min, max)...])] in first-appearance order."""
    out = {}
    for r in results:
        s = r.get("summary")
        if not s or not s.get("rounds"):
            continue
        per_alpha = out.setdefault(r["alpha"], {})
        entry = per_alpha.setdefault(r["name"], {"desc": r["desc"], "runs": []})
        entry["runs"].append([rec.get("accuracy") for rec in s["rounds"]])
    table = {}
    for alpha, by_name in out.items():
        rows = []
        for name, e in by_name.items():
            n = min(len(c) for c in e["runs"])
            pts = []
            for i in range(n):
                vals = [c[i] for c in e["runs"] if c[i] is not None]
                if vals:
                    pts.append((i + 1, sum(vals) / len(vals), min(vals), max(vals)))
            rows.append((name, e["desc"], len(e["runs"]), pts))
        table[alpha] = rows
    return table


def gnuplot_script(table, data_path, out_png, references=()):
    alphas = sorted(table, reverse=True)
    lines = ["set terminal png size %d,440" % (560 * len(alphas)),
             "set output '%s'" % out_png,
             "set multiplot layout 1,%d" % len(alphas),
             "set xlabel 'round'", "set ylabel 'held-out accuracy'", "set grid",
             "set key bottom right font 'sans,8'", "set yrange [0.3:0.9]"]
    index = 0
    for alpha in alphas:
        rows = table[alpha]
        rounds = max((p[0] for _, _, _, pts in rows for p in pts), default=1)
        lines.append("set xrange [0.8:%g]" % (rounds + 0.2))
        lines.append("set xtics 1")
        lines.append("set title 'Dirichlet alpha = %s (mean over seeds, bars: min-max)'" % alpha)
        plots = []
        for name, _, nseeds, _ in rows:
            # The reference black dashed; a centralized variant (e.g. centralized-lr4e-3) grey.
            style = "dashtype 2 lw 2 lc rgb 'black'" if name == "centralized" else \
                "dashtype 3 lw 2 lc rgb 'gray40'" if name.startswith("centralized-") else "lw 2"
            plots.append("'%s' index %d using 1:2:3:4 with yerrorlines %s title '%s (%d seed%s)'" % (
                data_path, index, style, LABELS.get(name, name), nseeds, "" if nseeds == 1 else "s"))
            index += 1
        # gnuplot's png terminal draws no dashes: the references differ by colour.
        for i, (value, label) in enumerate(references):
            plots.append("%g with lines lw 1 lc rgb '%s' title '%s'" % (
                value, ("black", "gray55", "brown", "dark-green")[i % 4], label.replace("'", "")))
        lines.append("plot " + ", \\\n     ".join(plots))
    lines.append("unset multiplot")
    return "\n".join(lines) + "\n"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", help="results.json written by run_experiment.py")
    p.add_argument("--out", required=True, help="PNG to write")
    p.add_argument("--configs", default="", help="comma-separated configuration names to draw (default: all)")
    p.add_argument("--reference", action="append", default=[], metavar="VALUE:LABEL",
                   help="a horizontal line at a measured accuracy named by LABEL (say where it was "
                        "measured), e.g. a centralized mean from another run; repeatable")
    args = p.parse_args()
    gnuplot = shutil.which("gnuplot")
    if not gnuplot:
        print("plot_curves.py: needs gnuplot (Debian package gnuplot-nox: apt-get install gnuplot-nox); "
              "no PNG written", file=sys.stderr)
        return 3
    references = []
    for ref in args.reference:
        value, _, label = ref.partition(":")
        try:
            references.append((float(value), label or value))
        except ValueError:
            print("plot_curves.py: --reference wants VALUE:LABEL, got %r" % ref, file=sys.stderr)
            return 2
    with open(args.results) as f:
        results = json.load(f)
    if args.configs:
        keep = [c for c in args.configs.split(",") if c]
        results = sorted((r for r in results if r["name"] in keep), key=lambda r: keep.index(r["name"]))
    table = curves(results)
    if not table:
        print("plot_curves.py: no finished run with round records in %s" % args.results, file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "curves.dat")
        with open(data, "w") as f:
            for alpha in sorted(table, reverse=True):
                for name, _, _, pts in table[alpha]:
                    f.write("# alpha %s %s\n" % (alpha, name))
                    for rnd, m, lo, hi in pts:
                        f.write("%d %.6f %.6f %.6f\n" % (rnd, m, lo, hi))
                    f.write("\n\n")
        script = os.path.join(tmp, "curves.gp")
        with open(script, "w") as f:
            f.write(gnuplot_script(table, data, os.path.abspath(args.out), references))
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        rc = subprocess.run([gnuplot, script]).returncode
    if rc != 0:
        print("plot_curves.py: gnuplot exited %d" % rc, file=sys.stderr)
        return rc
    print("wrote " + args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
