#!/usr/bin/env python3
"""Noise multipliers for a DP-FedAvg job, and the agent count at which the noise stops
swamping the update (issue 12 item 4).

A port of fedge's RDP accountant (aggregator/src/privacy_accountant.cpp: the sampled
Gaussian at integer orders 2..64, 128, 256, 512, and its RDP -> (eps, delta) conversion),
so the sigma printed here is the one the aggregator will account exactly.

  dp_plan.py --rounds 10 --q 1 --delta 1e-5 --epsilons 1,4,8 \
      [--clip 4 --values 83353 --update-norm 3.0 --agents 8]

For each epsilon: the noise multiplier that spends exactly epsilon after --rounds rounds,
and, with --values/--update-norm, the ratio of the noise's norm on the round's mean
(sigma * clip * sqrt(values) / agents) to the norm of an honest mean update, and the agent
count at which that ratio reaches 1 and 0.1 (every agent in every round, q = 1).
"""
import argparse
import math

ORDERS = list(range(2, 65)) + [128, 256, 512]


def log_add(a, b):
    if a == -math.inf:
        return b
    if b == -math.inf:
        return a
    hi, lo = max(a, b), min(a, b)
    return hi + math.log1p(math.exp(lo - hi))


def rdp(q, sigma, order):
    if q == 0:
        return 0.0
    a = float(order)
    if q == 1:
        return a / (2 * sigma * sigma)
    log_q, log_1mq = math.log(q), math.log1p(-q)
    acc = -math.inf
    for k in range(order + 1):
        lb = math.lgamma(order + 1) - math.lgamma(k + 1) - math.lgamma(order - k + 1)
        acc = log_add(acc, lb + k * log_q + (a - k) * log_1mq + (k * k - k) / (2 * sigma * sigma))
    return acc / (a - 1)


def epsilon(sigmas_q, delta):
    best = math.inf
    for a in ORDERS:
        r = sum(rdp(q, s, a) for s, q in sigmas_q)
        if r < 0 or delta * delta + math.expm1(-r) > 0:
            e = 0.0
        else:
            e = r + math.log1p(-1 / a) - math.log(delta * a) / (a - 1)
        best = min(best, e)
    return max(0.0, best)


def sigma_for(eps, rounds, q, delta):
    lo, hi = 0.05, 1000.0
    for _ in range(200):
        mid = math.sqrt(lo * hi)
        if epsilon([(mid, q)] * rounds, delta) > eps:
            lo = mid
        else:
            hi = mid
    return hi


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, required=True)
    p.add_argument("--q", type=float, default=1.0)
    p.add_argument("--delta", type=float, default=1e-5)
    p.add_argument("--epsilons", default="1,4,8")
    p.add_argument("--clip", type=float, default=0)
    p.add_argument("--values", type=int, default=0)
    p.add_argument("--update-norm", type=float, default=0, help="norm of an honest mean update")
    p.add_argument("--agents", type=int, default=0)
    args = p.parse_args()
    for e in [float(x) for x in args.epsilons.split(",") if x]:
        s = sigma_for(e, args.rounds, args.q, args.delta)
        line = "eps %g: sigma %.4f (eps after %d rounds %.4f)" % (
            e, s, args.rounds, epsilon([(s, args.q)] * args.rounds, args.delta))
        if args.clip and args.values and args.update_norm:
            noise = s * args.clip * math.sqrt(args.values)
            if args.agents:
                line += "; noise/update norm on the mean at %d agents %.0f" % (
                    args.agents, noise / args.agents / args.update_norm)
            line += "; agents for ratio 1: %d, for 0.1: %d" % (
                math.ceil(noise / args.update_norm), math.ceil(10 * noise / args.update_norm))
        print(line)


if __name__ == "__main__":
    main()
