#!/usr/bin/env python3
"""Writes aggregator/tests/data/rdp_goldens.json: ε of the Poisson-subsampled Gaussian
mechanism composed over rounds, from Google's dp-accounting (PyPI), on a grid of noise
multiplier σ, sampling rate q, rounds and δ, for fedge's RdpAccountant test
(aggregator/tests/privacy_accountant_test.cpp).

Each row has `epsilon` (dp-accounting on fedge's integer orders 2..64, 128, 256, 512: the
test requires <= 1% relative difference) and `epsilon_default_orders` (dp-accounting's
default grid, which adds fractional orders: fedge's bound may only be above it).

  python3 -m venv /tmp/dpa && /tmp/dpa/bin/pip install dp-accounting==0.6.0
  /tmp/dpa/bin/python bench/privacy/make_accountant_goldens.py
"""
import json
import os

from absl import logging as absl_logging
import dp_accounting
from dp_accounting.rdp import rdp_privacy_accountant as rdp

FEDGE_ORDERS = list(range(2, 65)) + [128, 256, 512]
SIGMAS = [0.5, 0.8, 1.0, 1.5, 2.0, 4.0]
RATES = [0.01, 0.1, 0.25, 0.5, 1.0]
ROUNDS = [1, 10, 100, 1000]
DELTAS = [1e-5, 1e-6]


def epsilon(sigma, q, rounds, delta, orders=None):
    acc = rdp.RdpAccountant(orders) if orders else rdp.RdpAccountant()
    event = dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma))
    acc.compose(dp_accounting.SelfComposedDpEvent(event, rounds))
    return acc.get_epsilon(delta)


def main():
    # The reference warns for every fractional order it cannot converge on (and skips it).
    absl_logging.set_verbosity(absl_logging.ERROR)
    rows = []
    for sigma in SIGMAS:
        for q in RATES:
            for rounds in ROUNDS:
                for delta in DELTAS:
                    rows.append({"sigma": sigma, "q": q, "rounds": rounds, "delta": delta,
                                 "epsilon": epsilon(sigma, q, rounds, delta, FEDGE_ORDERS),
                                 "epsilon_default_orders": epsilon(sigma, q, rounds, delta)})
    out = os.path.join(os.path.dirname(__file__), "..", "..", "aggregator", "tests", "data", "rdp_goldens.json")
    with open(out, "w") as f:  # one row per line: reviewable diffs
        f.write('{"source": "dp-accounting 0.6.0 (PyPI), bench/privacy/make_accountant_goldens.py",\n')
        f.write(f' "orders": {json.dumps(FEDGE_ORDERS)},\n "rows": [\n')
        f.write(",\n".join("  " + json.dumps(r) for r in rows))
        f.write("\n ]}\n")
    print(f"{len(rows)} rows -> {os.path.normpath(out)}")


if __name__ == "__main__":
    main()
