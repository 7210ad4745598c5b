#!/usr/bin/env python3
"""Communication-codec and strategy experiment on the quickstart task (issue 4, item 7).

Runs real `fedge run` jobs (the quickstart manifest: MiniLM + LoRA r=8 on WordNet noun
supersenses, 4 agents, non-IID Dirichlet shards) once per configuration:

  fp32 LoRA, int8, int4, top-k 10% and top-k 1% (int8 values, error feedback),
  FedAvg vs FedProx vs FedAdam (int8), frozen-a (int8), and the centralized reference,

at each Dirichlet alpha, and writes a markdown table (encoded bytes uploaded per agent per
round, final held-out accuracy, ratio and accuracy difference against fp32 measured in the
same invocation) into docs/experiments.md between marker comments. Every run's summary
JSON and logs stay under --work-dir; --resume reuses summaries already there.

  bench/experiment/run_experiment.sh                        # full: alpha 0.5 and 0.1, 5 rounds x 30 steps
  bench/experiment/run_experiment.sh --alphas 0.5 --rounds 3 --local-steps 10   # reduced

Nothing here invents a number: a configuration that fails or is skipped is listed with the
reason, not a value.
"""
import argparse
import datetime
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# name -> (description, spec overrides). Order = run order (most important first, so a
# run cut short still yields the codec comparison).
CONFIGS = [
    ("fp32", "fp32 LoRA (dense, zstd)",
     {"compression": {"codec": "fp32", "topKFraction": 0}}),
    ("int8", "int8 blockwise (b64) + EF",
     {"compression": {"codec": "int8"}}),
    ("int4", "int4 blockwise (b64) + EF",
     {"compression": {"codec": "int4"}}),
    ("topk10", "top-k 10%, int8 values + EF",
     {"compression": {"codec": "int8", "topKFraction": 0.1, "errorFeedback": True}}),
    ("topk1", "top-k 1%, int8 values + EF",
     {"compression": {"codec": "int8", "topKFraction": 0.01, "errorFeedback": True}}),
    ("centralized", "centralized reference (one agent, union of the shards, localSteps × agents)", {}),
    # The reference at the sweep's local learning rate: is the limit itself higher there?
    ("centralized-lr4e-3", "centralized, local lr 4e-3 (one agent, union of the shards, localSteps × agents)",
     {"rounds": {"learningRate": 0.004}}),
    ("fedprox", "FedProx mu=0.01, int8 + EF",
     {"strategy": {"name": "fedprox", "proximalMu": 0.01}, "compression": {"codec": "int8"}}),
    ("fedavgm", "FedAvgM (server momentum 0.9, server lr 1), int8 + EF",
     {"strategy": {"name": "fedavgm", "serverMomentum": 0.9}, "compression": {"codec": "int8"}}),
    ("fedavgm-b05", "FedAvgM (server momentum 0.5, server lr 1), int8 + EF",
     {"strategy": {"name": "fedavgm", "serverMomentum": 0.5}, "compression": {"codec": "int8"}}),
    ("fedavgm-b07", "FedAvgM (server momentum 0.7, server lr 1), int8 + EF",
     {"strategy": {"name": "fedavgm", "serverMomentum": 0.7}, "compression": {"codec": "int8"}}),
    ("fedavgm-b05-lr4e-3", "FedAvgM (server momentum 0.5, server lr 1), local lr 4e-3, int8 + EF",
     {"strategy": {"name": "fedavgm", "serverMomentum": 0.5}, "rounds": {"learningRate": 0.004},
      "compression": {"codec": "int8"}}),
    # Local learning-rate sweep (issue 14 item 1): the quickstart's 2e-3 at 2x, 4x and 8x, with
    # the two best server-side strategies.
    ("fedavgm-b05-lr8e-3", "FedAvgM (server momentum 0.5, server lr 1), local lr 8e-3, int8 + EF",
     {"strategy": {"name": "fedavgm", "serverMomentum": 0.5}, "rounds": {"learningRate": 0.008},
      "compression": {"codec": "int8"}}),
    ("fedavgm-b05-lr16e-3", "FedAvgM (server momentum 0.5, server lr 1), local lr 1.6e-2, int8 + EF",
     {"strategy": {"name": "fedavgm", "serverMomentum": 0.5}, "rounds": {"learningRate": 0.016},
      "compression": {"codec": "int8"}}),
    ("scaffold-lr4e-3", "SCAFFOLD (control variates, server lr 1), local lr 4e-3, int8 + EF",
     {"strategy": {"name": "scaffold"}, "rounds": {"learningRate": 0.004}, "compression": {"codec": "int8"}}),
    # Logit-adjusted local loss for label skew (issue 14 item 1; Menon et al. 2021, FedLC): each
    # agent adds tau log(pi_local(y) + 1e-6) to the logits while it trains (its own label prior).
    ("scaffold-lr4e-3-la", "SCAFFOLD (control variates, server lr 1), local lr 4e-3, logit-adjusted local loss "
     "tau 1, int8 + EF",
     {"strategy": {"name": "scaffold", "logitAdjustment": 1.0}, "rounds": {"learningRate": 0.004},
      "compression": {"codec": "int8"}}),
    ("scaffold-lr4e-3-la05", "SCAFFOLD (control variates, server lr 1), local lr 4e-3, logit-adjusted local loss "
     "tau 0.5, int8 + EF",
     {"strategy": {"name": "scaffold", "logitAdjustment": 0.5}, "rounds": {"learningRate": 0.004},
      "compression": {"codec": "int8"}}),
    # The same loss in the centralized run: its one agent's prior is the union's, which is not uniform.
    ("centralized-la", "centralized, logit-adjusted loss tau 1 (one agent, union of the shards, localSteps × agents)",
     {"strategy": {"logitAdjustment": 1.0}}),
    # Each agent keeps its local AdamW state (moments, step count) from round to round
    # (spec.rounds.optimizerState keep); the centralized run then keeps it across its rounds too.
    ("scaffold-lr4e-3-keep", "SCAFFOLD (control variates, server lr 1), local lr 4e-3, local AdamW state kept "
     "across rounds, int8 + EF",
     {"strategy": {"name": "scaffold"}, "rounds": {"learningRate": 0.004, "optimizerState": "keep"},
      "compression": {"codec": "int8"}}),
    ("centralized-keep", "centralized, AdamW state kept across rounds (one agent, union of the shards, "
     "localSteps × agents)",
     {"rounds": {"optimizerState": "keep"}}),
    # Keep only AdamW's second moment and step count; the first moment (the agent's own
    # last direction, its drift, which SCAFFOLD cancels) restarts from 0 every round, with
    # a fresh optimizer's bias correction (spec.rounds.optimizerState keep-second-moment).
    ("scaffold-lr4e-3-keepv", "SCAFFOLD (control variates, server lr 1), local lr 4e-3, local AdamW second "
     "moment kept across rounds (first moment restarted as fresh), int8 + EF",
     {"strategy": {"name": "scaffold"}, "rounds": {"learningRate": 0.004, "optimizerState": "keep-second-moment"},
      "compression": {"codec": "int8"}}),
    # Restricted softmax for locally absent classes (FedRS, Li & Zhan, KDD 2021): while an agent
    # trains, the logits of classes with no example in its shard are multiplied by r = 0.5.
    ("scaffold-lr4e-3-rs05", "SCAFFOLD (control variates, server lr 1), local lr 4e-3, restricted softmax "
     "r 0.5 for locally absent classes, int8 + EF",
     {"strategy": {"name": "scaffold", "restrictedSoftmax": 0.5}, "rounds": {"learningRate": 0.004},
      "compression": {"codec": "int8"}}),
    ("scaffold-lr4e-3-rs01", "SCAFFOLD (control variates, server lr 1), local lr 4e-3, restricted softmax "
     "r 0.1 for locally absent classes, int8 + EF",
     {"strategy": {"name": "scaffold", "restrictedSoftmax": 0.1}, "rounds": {"learningRate": 0.004},
      "compression": {"codec": "int8"}}),
    ("scaffold-lr4e-3-keepv-rs05", "SCAFFOLD (control variates, server lr 1), local lr 4e-3, local AdamW second "
     "moment kept across rounds, restricted softmax r 0.5, int8 + EF",
     {"strategy": {"name": "scaffold", "restrictedSoftmax": 0.5},
      "rounds": {"learningRate": 0.004, "optimizerState": "keep-second-moment"}, "compression": {"codec": "int8"}}),
    # Restricted step (spec.strategy.restrictedStep): the change every local AdamW step makes
    # to the head rows of classes with no example in the agent's shard (weight decay
    # included) is multiplied by r - after AdamW's normalisation, which undid FedRS's
    # scaled gradient. Fresh optimizer and kept state (the best rows at alpha 0.1 / 0.5).
    ("scaffold-lr4e-3-rstep05", "SCAFFOLD (control variates, server lr 1), local lr 4e-3, restricted step "
     "r 0.5 for locally absent classes' head rows, int8 + EF",
     {"strategy": {"name": "scaffold", "restrictedStep": 0.5}, "rounds": {"learningRate": 0.004},
      "compression": {"codec": "int8"}}),
    ("scaffold-lr4e-3-rstep01", "SCAFFOLD (control variates, server lr 1), local lr 4e-3, restricted step "
     "r 0.1 for locally absent classes' head rows, int8 + EF",
     {"strategy": {"name": "scaffold", "restrictedStep": 0.1}, "rounds": {"learningRate": 0.004},
      "compression": {"codec": "int8"}}),
    ("scaffold-lr4e-3-rstep0", "SCAFFOLD (control variates, server lr 1), local lr 4e-3, restricted step "
     "r 0 (locally absent classes' head rows not moved by the local optimizer), int8 + EF",
     {"strategy": {"name": "scaffold", "restrictedStep": 0.0}, "rounds": {"learningRate": 0.004},
      "compression": {"codec": "int8"}}),
    ("scaffold-lr4e-3-keep-rstep05", "SCAFFOLD (control variates, server lr 1), local lr 4e-3, local AdamW "
     "state kept across rounds, restricted step r 0.5 for locally absent classes' head rows, int8 + EF",
     {"strategy": {"name": "scaffold", "restrictedStep": 0.5},
      "rounds": {"learningRate": 0.004, "optimizerState": "keep"}, "compression": {"codec": "int8"}}),
    ("scaffold-lr4e-3-keep-rstep01", "SCAFFOLD (control variates, server lr 1), local lr 4e-3, local AdamW "
     "state kept across rounds, restricted step r 0.1 for locally absent classes' head rows, int8 + EF",
     {"strategy": {"name": "scaffold", "restrictedStep": 0.1},
      "rounds": {"learningRate": 0.004, "optimizerState": "keep"}, "compression": {"codec": "int8"}}),
    # Session 17 (issue 14 item 1, alpha 0.5): kept AdamW state changes the effective step
    # size (no bias-corrected sign steps after round 1), so the local rate that suits it need
    # not be fresh's 4e-3.
    ("scaffold-lr3e-3-keep", "SCAFFOLD (control variates, server lr 1), local lr 3e-3, local AdamW state kept "
     "across rounds, int8 + EF",
     {"strategy": {"name": "scaffold"}, "rounds": {"learningRate": 0.003, "optimizerState": "keep"},
      "compression": {"codec": "int8"}}),
    ("scaffold-lr5e-3-keep", "SCAFFOLD (control variates, server lr 1), local lr 5e-3, local AdamW state kept "
     "across rounds, int8 + EF",
     {"strategy": {"name": "scaffold"}, "rounds": {"learningRate": 0.005, "optimizerState": "keep"},
      "compression": {"codec": "int8"}}),
    # The restricted step widened to rare classes (spec.strategy.restrictedStepBelow): at
    # alpha 0.5 every shard has 4-6 classes under 0.1% of its examples (under 0.5 of them
    # sampled in a round of 30 x 16) but few with none, where the restricted step acted.
    ("scaffold-lr4e-3-keep-st01b001", "SCAFFOLD (control variates, server lr 1), local lr 4e-3, local AdamW "
     "state kept across rounds, restricted step r 0.1 for head rows of classes at most 0.1% of the shard, int8 + EF",
     {"strategy": {"name": "scaffold", "restrictedStep": 0.1, "restrictedStepBelow": 0.001},
      "rounds": {"learningRate": 0.004, "optimizerState": "keep"}, "compression": {"codec": "int8"}}),
    ("scaffold-lr4e-3-keep-st01b005", "SCAFFOLD (control variates, server lr 1), local lr 4e-3, local AdamW "
     "state kept across rounds, restricted step r 0.1 for head rows of classes at most 0.5% of the shard, int8 + EF",
     {"strategy": {"name": "scaffold", "restrictedStep": 0.1, "restrictedStepBelow": 0.005},
      "rounds": {"learningRate": 0.004, "optimizerState": "keep"}, "compression": {"codec": "int8"}}),
    # The quickstart default with the global (and the SCAFFOLD control) sent in fp16
    # (spec.compression.globalCodec): half the bytes down, the aggregator's global stays fp32.
    ("scaffold-lr4e-3-keep-st01b005-g16", "SCAFFOLD (control variates, server lr 1), local lr 4e-3, local AdamW "
     "state kept across rounds, restricted step r 0.1 for head rows of classes at most 0.5% of the shard, int8 + EF, "
     "global sent in fp16",
     {"strategy": {"name": "scaffold", "restrictedStep": 0.1, "restrictedStepBelow": 0.005},
      "rounds": {"learningRate": 0.004, "optimizerState": "keep"},
      "compression": {"codec": "int8", "globalCodec": "fp16"}}),
    ("scaffold-lr4e-3-keep-st01b002", "SCAFFOLD (control variates, server lr 1), local lr 4e-3, local AdamW "
     "state kept across rounds, restricted step r 0.1 for head rows of classes at most 0.2% of the shard, int8 + EF",
     {"strategy": {"name": "scaffold", "restrictedStep": 0.1, "restrictedStepBelow": 0.002},
      "rounds": {"learningRate": 0.004, "optimizerState": "keep"}, "compression": {"codec": "int8"}}),
    ("scaffold-lr4e-3-keep-st0b001", "SCAFFOLD (control variates, server lr 1), local lr 4e-3, local AdamW "
     "state kept across rounds, restricted step r 0 for head rows of classes at most 0.1% of the shard, int8 + EF",
     {"strategy": {"name": "scaffold", "restrictedStep": 0.0, "restrictedStepBelow": 0.001},
      "rounds": {"learningRate": 0.004, "optimizerState": "keep"}, "compression": {"codec": "int8"}}),
    ("scaffold-lr4e-3-st01b001", "SCAFFOLD (control variates, server lr 1), local lr 4e-3, restricted step "
     "r 0.1 for head rows of classes at most 0.1% of the shard, int8 + EF",
     {"strategy": {"name": "scaffold", "restrictedStep": 0.1, "restrictedStepBelow": 0.001},
      "rounds": {"learningRate": 0.004}, "compression": {"codec": "int8"}}),
    ("scaffold-lr4e-3-st01b005", "SCAFFOLD (control variates, server lr 1), local lr 4e-3, restricted step "
     "r 0.1 for head rows of classes at most 0.5% of the shard, int8 + EF",
     {"strategy": {"name": "scaffold", "restrictedStep": 0.1, "restrictedStepBelow": 0.005},
      "rounds": {"learningRate": 0.004}, "compression": {"codec": "int8"}}),
    # Kept state with a decaying local rate from a higher start (the round's rate, per round:
    # linear 1, 0.8, 0.6, 0.4, 0.2 x base; cosine 1, 0.905, 0.655, 0.345, 0.095 x base): round 1,
    # where the federated run lags the centralized one most (0.56 vs 0.75), moves further, the
    # last rounds less.
    ("scaffold-lr6e-3-keep-linear", "SCAFFOLD (control variates, server lr 1), local lr 6e-3 linear decay "
     "over the rounds, local AdamW state kept across rounds, int8 + EF",
     {"strategy": {"name": "scaffold"},
      "rounds": {"learningRate": 0.006, "learningRateSchedule": "linear", "optimizerState": "keep"},
      "compression": {"codec": "int8"}}),
    ("scaffold-lr6e-3-keep-cosine", "SCAFFOLD (control variates, server lr 1), local lr 6e-3 cosine decay "
     "over the rounds, local AdamW state kept across rounds, int8 + EF",
     {"strategy": {"name": "scaffold"},
      "rounds": {"learningRate": 0.006, "learningRateSchedule": "cosine", "optimizerState": "keep"},
      "compression": {"codec": "int8"}}),
    ("scaffold-lr8e-3-keep-linear", "SCAFFOLD (control variates, server lr 1), local lr 8e-3 linear decay "
     "over the rounds, local AdamW state kept across rounds, int8 + EF",
     {"strategy": {"name": "scaffold"},
      "rounds": {"learningRate": 0.008, "learningRateSchedule": "linear", "optimizerState": "keep"},
      "compression": {"codec": "int8"}}),
    # SCAFFOLD's global step size eta_g > 1 (spec.strategy.globalLearningRate): the global moves
    # by eta_g times the mean update; the control variates are as at 1.
    ("scaffold-lr4e-3-keep-g125", "SCAFFOLD (control variates, server lr 1.25), local lr 4e-3, local AdamW "
     "state kept across rounds, int8 + EF",
     {"strategy": {"name": "scaffold", "globalLearningRate": 1.25},
      "rounds": {"learningRate": 0.004, "optimizerState": "keep"}, "compression": {"codec": "int8"}}),
    ("scaffold-lr4e-3-keep-g15", "SCAFFOLD (control variates, server lr 1.5), local lr 4e-3, local AdamW "
     "state kept across rounds, int8 + EF",
     {"strategy": {"name": "scaffold", "globalLearningRate": 1.5},
      "rounds": {"learningRate": 0.004, "optimizerState": "keep"}, "compression": {"codec": "int8"}}),
    ("scaffold-lr4e-3-keep-g2", "SCAFFOLD (control variates, server lr 2), local lr 4e-3, local AdamW "
     "state kept across rounds, int8 + EF",
     {"strategy": {"name": "scaffold", "globalLearningRate": 2.0},
      "rounds": {"learningRate": 0.004, "optimizerState": "keep"}, "compression": {"codec": "int8"}}),
    ("scaffold-lr4e-3-g15", "SCAFFOLD (control variates, server lr 1.5), local lr 4e-3, int8 + EF",
     {"strategy": {"name": "scaffold", "globalLearningRate": 1.5}, "rounds": {"learningRate": 0.004},
      "compression": {"codec": "int8"}}),
    ("scaffold-lr8e-3", "SCAFFOLD (control variates, server lr 1), local lr 8e-3, int8 + EF",
     {"strategy": {"name": "scaffold"}, "rounds": {"learningRate": 0.008}, "compression": {"codec": "int8"}}),
    ("scaffold-lr16e-3", "SCAFFOLD (control variates, server lr 1), local lr 1.6e-2, int8 + EF",
     {"strategy": {"name": "scaffold"}, "rounds": {"learningRate": 0.016}, "compression": {"codec": "int8"}}),
    ("fedavgm-b05-cosine", "FedAvgM (server momentum 0.5, server lr 1), cosine local lr schedule, int8 + EF",
     {"strategy": {"name": "fedavgm", "serverMomentum": 0.5}, "rounds": {"learningRateSchedule": "cosine"},
      "compression": {"codec": "int8"}}),
    # SCAFFOLD (option II control variates; aggregator/src/strategy.cpp): no extra upload,
    # the aggregator derives each agent's control-variate change from its delta.
    ("scaffold", "SCAFFOLD (control variates, server lr 1), int8 + EF",
     {"strategy": {"name": "scaffold"}, "compression": {"codec": "int8"}}),
    ("fedavgm-b05-constant", "FedAvgM (server momentum 0.5, server lr 1), constant local lr, int8 + EF (binaries of the cosine run)",
     {"strategy": {"name": "fedavgm", "serverMomentum": 0.5}, "rounds": {"learningRateSchedule": "constant"},
      "compression": {"codec": "int8"}}),
    ("fedavgm-b03", "FedAvgM (server momentum 0.3, server lr 1), int8 + EF",
     {"strategy": {"name": "fedavgm", "serverMomentum": 0.3}, "compression": {"codec": "int8"}}),
    # FedAdam with b1 = 0 and tau = 1 (>> sqrt(v) ~ 0.1 |mean delta| ~ 1e-3 here) is FedAvg
    # with server learning rate eta / tau to within sqrt(v) / tau (strategy_test checks it).
    ("fedavg-slr2", "FedAvg, server lr 2 (as FedAdam b1 0, tau 1, lr 2), int8 + EF",
     {"strategy": {"name": "fedadam", "beta1": 0.0, "tau": 1.0, "serverLearningRate": 2.0},
      "compression": {"codec": "int8"}}),
    ("fedavg-slr3", "FedAvg, server lr 3 (as FedAdam b1 0, tau 1, lr 3), int8 + EF",
     {"strategy": {"name": "fedadam", "beta1": 0.0, "tau": 1.0, "serverLearningRate": 3.0},
      "compression": {"codec": "int8"}}),
    ("fedadam-t1e-2-lr3e-2", "FedAdam (server lr 3e-2, b1 0.9, b2 0.99, tau 1e-2), int8 + EF",
     {"strategy": {"name": "fedadam", "tau": 0.01, "serverLearningRate": 0.03}, "compression": {"codec": "int8"}}),
    ("fedadam-t1e-2-lr1e-1", "FedAdam (server lr 1e-1, b1 0.9, b2 0.99, tau 1e-2), int8 + EF",
     {"strategy": {"name": "fedadam", "tau": 0.01, "serverLearningRate": 0.1}, "compression": {"codec": "int8"}}),
    ("fedadam-t1e-1-lr5e-1", "FedAdam (server lr 5e-1, b1 0.9, b2 0.99, tau 1e-1), int8 + EF",
     {"strategy": {"name": "fedadam", "tau": 0.1, "serverLearningRate": 0.5}, "compression": {"codec": "int8"}}),
    ("fedyogi-t1e-2-lr3e-2", "FedYogi (server lr 3e-2, b1 0.9, b2 0.99, tau 1e-2), int8 + EF",
     {"strategy": {"name": "fedyogi", "tau": 0.01, "serverLearningRate": 0.03}, "compression": {"codec": "int8"}}),
    ("fedadam", "FedAdam (server lr 1e-2, b1 0.9, b2 0.99, tau 1e-3), int8 + EF",
     {"strategy": {"name": "fedadam"}, "compression": {"codec": "int8"}}),
    ("frozen-a", "LoRA frozen-a (only B travels), int8 + EF",
     {"adapter": {"aggregation": "frozen-a"}, "compression": {"codec": "int8"}}),
    ("int4-topk50", "top-k 50%, int4 values + EF",
     {"compression": {"codec": "int4", "topKFraction": 0.5, "errorFeedback": True}}),
    ("int4-topk25", "top-k 25%, int4 values + EF",
     {"compression": {"codec": "int4", "topKFraction": 0.25, "errorFeedback": True}}),
    ("fedadam-lr3e-3", "FedAdam (server lr 3e-3, b1 0.9, b2 0.99, tau 1e-3), int8 + EF",
     {"strategy": {"name": "fedadam", "serverLearningRate": 0.003}, "compression": {"codec": "int8"}}),
    ("fedadam-lr3e-2", "FedAdam (server lr 3e-2, b1 0.9, b2 0.99, tau 1e-3), int8 + EF",
     {"strategy": {"name": "fedadam", "serverLearningRate": 0.03}, "compression": {"codec": "int8"}}),
    # Secure aggregation (issue 12): masked Z_2^16 inputs; the codec does not apply.
    ("secagg", "secure aggregation (masked Z_2^16, 2 B/value), FedAvg",
     {"privacy": {"secureAggregation": {"enabled": True}}}),
    # Distributed DP under secure aggregation, clip norm 4 (honest quickstart updates have
    # norms ~2.4-5.9). noiseMultiplier reaches epsilon at delta 1e-5 after 5 rounds with every
    # agent in every round (q = 1; the engine's RDP accountant, bisected): 1.4268 -> 8,
    # 2.5889 -> 4, 9.0458 -> 1. With other --rounds the epsilon differs (the job reports it).
    ("secagg-ddp-e8", "secure aggregation + distributed DP (C 4, sigma 1.4268: eps 8 at 5 rounds)",
     {"privacy": {"secureAggregation": {"enabled": True},
                  "differentialPrivacy": {"mode": "distributed", "clipNorm": 4, "noiseMultiplier": 1.4268}}}),
    ("secagg-ddp-e4", "secure aggregation + distributed DP (C 4, sigma 2.5889: eps 4 at 5 rounds)",
     {"privacy": {"secureAggregation": {"enabled": True},
                  "differentialPrivacy": {"mode": "distributed", "clipNorm": 4, "noiseMultiplier": 2.5889}}}),
    ("secagg-ddp-e1", "secure aggregation + distributed DP (C 4, sigma 9.0458: eps 1 at 5 rounds)",
     {"privacy": {"secureAggregation": {"enabled": True},
                  "differentialPrivacy": {"mode": "distributed", "clipNorm": 4, "noiseMultiplier": 9.0458}}}),
]
BEGIN = "<!-- codec-experiment:begin (generated by bench/experiment/run_experiment.py) -->"
END = "<!-- codec-experiment:end -->"
# --report gap: the federated-centralized gap table (issue 14 item 1), its own block.
GAP_BEGIN = "<!-- gap-experiment:begin (generated by bench/experiment/run_experiment.py --report gap) -->"
GAP_END = "<!-- gap-experiment:end -->"
# Names in the gap table for configurations whose codec-table description says too little there.
GAP_DESC = {"int8": "FedAvg, int8 + EF (the quickstart's codec; its strategy until 2026-12-03)"}


def log(msg):
    print(time.strftime("%H:%M:%S"), msg, flush=True)


def merge(dst, src):
    for k, v in src.items():
        if isinstance(v, dict):
            merge(dst.setdefault(k, {}), v)
        else:
            dst[k] = v


def is_centralized(name):
    """A centralized run (`fedge run --centralized`): "centralized", the reference every Δ is
    against, or a variant of it ("centralized-lr4e-3")."""
    return name == "centralized" or name.startswith("centralized-")


def alpha_tag(alpha):
    return "a" + str(alpha).replace(".", "")


def seed_tag(args, seed):
    # --data-seed (7) keeps the names runs had before --data-seeds existed, so --resume still
    # finds them; any other seed is named, so invocations with different seed lists share a
    # work dir safely.
    return "" if seed == args.data_seed else "-s%d" % seed


def ensure_data(args, alpha, seed):
    out = os.path.join(args.work_dir, "data-" + alpha_tag(alpha) + seed_tag(args, seed))
    if os.path.exists(os.path.join(out, "meta.json")) or args.render_only:
        return out
    cmd = [args.fedge, "data", "wordnet", "--agents", str(args.agents), "--alpha", str(alpha),
           "--seed", str(seed), "--out", out]
    log("data: " + " ".join(cmd))
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return out


JOB_NAME_MAX = 40  # fedge's limit on metadata.name (child Services are <job>-aggregator, <job>-inference)


def job_name(tag):
    """The job's metadata.name for a run tag: the tag itself when it fits fedge's 40-character
    DNS-1123 label, else its first 33 characters and a hash of the whole tag (so two long
    configurations never share a name)."""
    tag = tag.replace("_", "-")
    if len(tag) <= JOB_NAME_MAX:
        return tag
    digest = hashlib.sha1(tag.encode()).hexdigest()[:6]
    return tag[:JOB_NAME_MAX - 7].rstrip("-") + "-" + digest


def manifest_for(args, base, name, overrides, alpha, data_dir, seed):
    m = json.loads(json.dumps(base))
    m["metadata"]["name"] = job_name("exp-%s-%s%s" % (alpha_tag(alpha), name, seed_tag(args, seed)))
    spec = m["spec"]
    spec["model"]["path"] = os.path.abspath(args.model_dir)
    spec["data"]["path"] = data_dir
    spec["agents"]["minAgents"] = args.agents
    spec["agents"]["replicas"] = args.agents
    spec["rounds"]["total"] = args.rounds
    spec["rounds"]["localSteps"] = args.local_steps
    spec["rounds"]["quorum"] = 0  # every agent in every round: bytes comparable across runs
    # A shared, loaded machine must not turn a slow agent into a different experiment.
    spec["rounds"]["timeoutSeconds"] = max(spec["rounds"].get("timeoutSeconds", 0), 1800)
    # Every configuration states its strategy and local learning rate against plain FedAvg at
    # 2e-3, whatever the quickstart's defaults are (fedavgm since 2026-12-03, then scaffold
    # at 4e-3 after the local learning-rate sweep): the codec rows stay FedAvg rows, and the
    # manifests of earlier runs still match (--resume, --render-only).
    # Likewise the local optimizer starts fresh every round unless a configuration keeps it:
    # the quickstart keeps its AdamW state since 2026-12-04 (c143bf5), and without this every
    # configuration that does not name optimizerState (the centralized reference among them)
    # silently became its -keep variant.
    spec["strategy"] = {"name": "fedavg"}
    spec["rounds"]["learningRate"] = 0.002
    spec["rounds"].pop("optimizerState", None)
    # And the global goes down in the spec's default codec (fp32) unless a configuration
    # names one, whatever the quickstart sends.
    spec.get("compression", {}).pop("globalCodec", None)
    merge(spec, overrides)
    return m


def run_one(args, name, desc, overrides, alpha, data_dir, base, seed):
    tag = "%s-%s%s" % (alpha_tag(alpha), name, seed_tag(args, seed))
    summary_path = os.path.join(args.work_dir, "summaries", tag + ".json")
    result = {"name": name, "desc": desc, "alpha": alpha, "seed": seed, "overrides": overrides}
    manifest = manifest_for(args, base, name, overrides, alpha, data_dir, seed)
    mpath = os.path.join(args.work_dir, "manifests", tag + ".yaml")
    if (args.resume or args.render_only) and os.path.exists(summary_path) and os.path.exists(mpath):
        # Reuse only a run of exactly this manifest (same budget, codec, data, model).
        with open(mpath) as f:
            previous = yaml.safe_load(f)
        if previous == manifest:
            with open(summary_path) as f:
                result["summary"] = json.load(f)
            result["reused"] = True
            log("%s: reusing %s" % (tag, summary_path))
            return result
        log("%s: the summary there is of another manifest; running again" % tag)
    if args.render_only:
        result["skipped"] = "not run"
        return result
    os.makedirs(os.path.dirname(mpath), exist_ok=True)
    os.makedirs(os.path.dirname(summary_path), exist_ok=True)
    with open(mpath, "w") as f:
        yaml.safe_dump(manifest, f, sort_keys=False)
    cmd = [args.fedge, "run", "-f", mpath, "--summary", summary_path, "--quiet",
           "--work-dir", os.path.join(args.work_dir, "runs", tag)]
    if args.bin_dir:
        cmd += ["--bin-dir", args.bin_dir]
    if is_centralized(name):
        cmd.append("--centralized")
    out_path = os.path.join(args.work_dir, "logs", tag + ".out")
    os.makedirs(os.path.dirname(out_path), exist_ok=True)
    log("%s: %s" % (tag, " ".join(cmd)))
    start = time.time()
    with open(out_path, "w") as out:
        rc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT).returncode
    result["wall_seconds"] = time.time() - start
    if rc == 0 and os.path.exists(summary_path):
        with open(summary_path) as f:
            result["summary"] = json.load(f)
        log("%s: done in %.0f s, final accuracy %s" %
            (tag, result["wall_seconds"], result["summary"].get("final_accuracy")))
    else:
        with open(out_path) as f:
            tail = f.read().strip().splitlines()[-3:]
        # Exit 2: the manifest was refused before anything started (e.g. a spec that does
        # not know frozen-a yet) -> a skip, not a failure.
        result["skipped" if rc == 2 else "failed"] = "exit %d: %s (%s)" % (rc, " / ".join(tail), out_path)
        log("%s: %s" % (tag, result.get("skipped") or result.get("failed")))
    return result


def bytes_per_round(summary):
    rounds = summary.get("rounds") or []
    vals = [r["bytes_up"] for r in rounds if r.get("bytes_up")]
    return sum(vals) / len(vals) if vals else None


def fmt_int(v):
    return "{:,}".format(int(round(v))) if v is not None else "—"


def table(results, alphas):
    lines = ["| α | configuration | bytes up / agent / round | × fewer than fp32 | final held-out acc. "
             "| Δ vs fp32 (points) | wall s |",
             "|---|---|--:|--:|--:|--:|--:|"]
    notes = []
    for alpha in alphas:
        rows = [r for r in results if r["alpha"] == alpha]
        fp32 = next((r for r in rows if r["name"] == "fp32" and "summary" in r), None)
        fp32_bytes = bytes_per_round(fp32["summary"]) if fp32 else None
        fp32_acc = fp32["summary"].get("final_accuracy") if fp32 else None
        for r in rows:
            if "summary" not in r:
                why = r.get("skipped") or r.get("failed") or "not run"
                lines.append("| %s | %s | — | — | — | — | — |" % (alpha, r["desc"]))
                notes.append("- α=%s %s: %s" % (alpha, r["name"], why))
                continue
            s = r["summary"]
            b = bytes_per_round(s)
            acc = s.get("final_accuracy")
            central = is_centralized(r["name"])
            ratio = "%.1f×" % (fp32_bytes / b) if (fp32_bytes and b and not central) else "—"
            delta = "%+.1f" % (100 * (acc - fp32_acc)) if (acc is not None and fp32_acc is not None) else "—"
            lines.append("| %s | %s | %s | %s | %s | %s | %.0f%s |" % (
                alpha, r["desc"], "—" if central else fmt_int(b), ratio,
                "%.4f" % acc if acc is not None else "—", delta,
                s.get("wall_seconds", r.get("wall_seconds", 0)), " †" if r.get("reused") else ""))
    if any(r.get("reused") for r in results):
        notes.append("- † reused with `--resume`: the summary of an earlier run of the identical "
                     "manifest in the work dir (same budget, codec, data and model), not re-run.")
    return lines, notes


def verdicts(results, alphas):
    out = []
    for alpha in alphas:
        rows = {r["name"]: r for r in results if r["alpha"] == alpha and "summary" in r}
        fp32 = rows.get("fp32")
        if not fp32:
            continue
        fb, fa = bytes_per_round(fp32["summary"]), fp32["summary"].get("final_accuracy")
        good = []
        for name, r in rows.items():
            if name in ("fp32", "centralized"):
                continue
            b, a = bytes_per_round(r["summary"]), r["summary"].get("final_accuracy")
            if b and a is not None and fa is not None and fb / b >= 8 and fa - a <= 0.01:
                good.append("%s (%.1f×, %+.1f points)" % (name, fb / b, 100 * (a - fa)))
        out.append("- α=%s, goal ≥ 8× fewer bytes than fp32 with ≤ 1 point accuracy loss: %s." %
                   (alpha, "met by " + ", ".join(good) if good else "not met by any configuration"))
        c = rows.get("centralized")
        if c and c["summary"].get("final_accuracy") is not None and fa is not None:
            ca = c["summary"]["final_accuracy"]
            out.append("- α=%s, federated fp32 vs centralized: %.4f vs %.4f (%+.1f points; goal within 2 "
                       "points at α=0.5)." % (alpha, fa, ca, 100 * (fa - ca)))
    return out


def write_doc(args, results, started):
    lines, notes = table(results, args.alphas)
    argv = " ".join(sys.argv[1:])
    body = [BEGIN, "",
            "### Codecs and strategies on the quickstart task (measured)", "",
            "Produced by `bench/experiment/run_experiment.sh %s` (started %s UTC, %s; "
            "fedge %s). Configuration: %d agents, Dirichlet α in {%s} (data seed %d), %d rounds × "
            "%d local steps of batch 16, every agent in every round (quorum 0), LoRA r=8 on "
            "query/value + classifier head, all-MiniLM-L6-v2. Bytes are the encoded update bytes the "
            "aggregator received per agent per round (round records, averaged over rounds), zstd on; "
            "accuracy is the example-weighted held-out accuracy of the final global over every "
            "agent's test slice (2,000 examples). Ratios and differences are against the fp32 run of "
            "the same invocation. EF = error feedback (spec.compression.errorFeedback, default on "
            "for lossy encodings)." % (
                argv, started, os.uname().nodename, args.version, args.agents,
                ", ".join(str(a) for a in args.alphas), args.data_seed, args.rounds,
                args.local_steps),
            ""] + lines + [""]
    v = verdicts(results, args.alphas)
    if v:
        body += ["Against the issue's goals (this configuration):", ""] + v + [""]
    if notes:
        body += ["Notes:", ""] + notes + [""]
    body += ["Full configuration (alpha 0.5 and 0.1, the quickstart's 5 rounds × 30 steps; "
             "~5 CPU-minutes per run, %d runs):" % (2 * len(CONFIGS)), "",
             "```", "bench/experiment/run_experiment.sh --alphas 0.5,0.1 --rounds 5 --local-steps 30",
             "```", "", END]
    text = ""
    if os.path.exists(args.doc):
        with open(args.doc) as f:
            text = f.read()
    block = "\n".join(body)
    if BEGIN in text and END in text:
        pre = text[:text.index(BEGIN)]
        post = text[text.index(END) + len(END):]
        text = pre + block + post
    else:
        if not text:
            text = "# Experiments\n\n"
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    with open(args.doc, "w") as f:
        f.write(text)
    with open(os.path.join(args.work_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=2)


def round_accuracies(summary):
    """Held-out accuracy of the global after each round, from the summary's round records."""
    return [r.get("accuracy") for r in summary.get("rounds") or []]


def mean(xs):
    return sum(xs) / len(xs)


def gap_groups(results, alphas):
    """(alpha, name) -> {"desc", "finals": [...], "curves": [[...]...], "seeds": [...], "missing": [...]}."""
    groups = []
    for alpha in alphas:
        names = []
        for r in results:
            if r["alpha"] == alpha and r["name"] not in names:
                names.append(r["name"])
        for name in names:
            rows = [r for r in results if r["alpha"] == alpha and r["name"] == name]
            g = {"alpha": alpha, "name": name, "desc": GAP_DESC.get(name, rows[0]["desc"]), "finals": [], "curves": [],
                 "seeds": [], "missing": [], "shared": any(r.get("shared") for r in rows)}
            for r in rows:
                s = r.get("summary")
                if s and s.get("final_accuracy") is not None:
                    g["finals"].append(s["final_accuracy"])
                    g["curves"].append(round_accuracies(s))
                    g["seeds"].append(r["seed"])
                else:
                    g["missing"].append("seed %s: %s" % (r["seed"], r.get("skipped") or r.get("failed") or "not run"))
                    if r.get("skipped") == "not run":
                        g.setdefault("unrun_seeds", []).append(r["seed"])
            groups.append(g)
    return groups


def mean_curve(curves):
    n = min(len(c) for c in curves)
    return [mean([c[i] for c in curves]) for i in range(n)]


def gap_table(args, results):
    """Markdown lines of the gap table and the verdicts against issue 14's goals."""
    groups = gap_groups(results, args.alphas)
    # The limit is the best centralized run: of the centralized configurations made at every seed
    # the reference ("centralized") ran at, the one with the highest seed-mean final accuracy.
    central = {}
    for alpha in args.alphas:
        base = next((g for g in groups if g["alpha"] == alpha and g["name"] == "centralized" and g["finals"]), None)
        if base is None:
            continue
        full = [g for g in groups if g["alpha"] == alpha and is_centralized(g["name"]) and g["finals"]
                and set(base["seeds"]) <= set(g["seeds"])]
        central[alpha] = max(full, key=lambda g: mean([f for f, s in zip(g["finals"], g["seeds"])
                                                       if s in base["seeds"]]))
    lines = ["| α | configuration | seeds | final acc. mean | spread (min–max) | Δ vs centralized (points) "
             "| mean accuracy after rounds 1..%d | first round within 1 point |" % args.rounds,
             "|---|---|---|--:|--:|--:|---|--:|"]
    notes, verdict = [], []
    unrun = {}
    for g in groups:
        if args.render_only and g.get("unrun_seeds"):
            # --render-only: seeds without a summary are listed once per alpha, not as failures.
            unrun.setdefault(g["alpha"], []).append("%s (%s)" % (
                g["name"], "no seed" if not g["finals"] else
                "seed" + ("s " if len(g["unrun_seeds"]) > 1 else " ") + ", ".join(str(x) for x in g["unrun_seeds"])))
            g["missing"] = [m for m in g["missing"] if not m.endswith(": not run")]
        if not g["finals"] and args.render_only:
            continue
        if not g["finals"]:
            lines.append("| %s | %s | — | — | — | — | — | — |" % (g["alpha"], g["desc"]))
            notes.append("- α=%s %s: %s" % (g["alpha"], g["name"], "; ".join(g["missing"])))
            continue
        m = mean(g["finals"])
        c = central.get(g["alpha"])
        cm = mean(c["finals"]) if c else None
        curve = mean_curve(g["curves"])
        within = "—"
        if cm is not None and g is not c:
            hit = [i + 1 for i, a in enumerate(curve) if a >= cm - 0.01]
            within = str(hit[0]) if hit else "not in %d" % len(curve)
        lines.append("| %s | %s%s | %s | %.4f | %s | %s | %s | %s |" % (
            g["alpha"], g["desc"], " ‡" if g["shared"] else "", ", ".join(str(x) for x in g["seeds"]), m,
            "%.4f–%.4f" % (min(g["finals"]), max(g["finals"])) if len(g["finals"]) > 1 else "(one seed)",
            "%+.1f" % (100 * (m - cm)) if cm is not None and g is not c else "—",
            ", ".join("%.3f" % a for a in curve), within))
        if g["missing"]:
            notes.append("- α=%s %s: %s" % (g["alpha"], g["name"], "; ".join(g["missing"])))
    for alpha in args.alphas:
        c = central.get(alpha)
        if not c:
            continue
        cm = mean(c["finals"])
        goal = 0.02 if alpha >= 0.5 else 0.05
        rows = [g for g in groups if g["alpha"] == alpha and g["finals"] and not is_centralized(g["name"])]
        # A goal is judged at the seeds the reference ran at: rows run at fewer are not candidates.
        rows = [g for g in rows if set(c["seeds"]) <= set(g["seeds"])] or rows
        if not rows:
            continue
        best = max(rows, key=lambda g: mean(g["finals"]))
        m = mean(best["finals"])
        verdict.append("- α=%s: best %s at %.4f (%d seed%s) vs %s %.4f: %+.1f points; goal within %d "
                       "points: %s." % (alpha, best["name"], m, len(best["finals"]),
                                        "" if len(best["finals"]) == 1 else "s", c["name"], cm, 100 * (m - cm),
                                        round(goal * 100), "met" if m >= cm - goal else "not met"))
    for alpha, names in unrun.items():
        notes.append("- α=%s, no run made: %s." % (alpha, ", ".join(names)))
    if any(g["shared"] and g["finals"] for g in groups):
        notes.append("- ‡ the centralized run depends on the data seed only (the train/test split; the union "
                     "of the shards is the same at every α), so it ran once per seed and is shown at each α.")
    return lines, notes, verdict


def write_gap_doc(args, results, started):
    lines, notes, verdict = gap_table(args, results)
    # A table rendered from earlier runs names the command that makes (or, with --resume, reuses) them.
    argv = " ".join(a for a in sys.argv[1:] if a != "--render-only")
    if args.render_only and "--resume" not in argv.split():
        argv += " --resume"
    body = [GAP_BEGIN, "",
            "### Federated vs centralized at the quickstart budget (measured)", "",
            "Produced by `bench/experiment/run_experiment.sh %s` (%s %s UTC, %s; fedge %s). "
            "Configuration: %d agents, Dirichlet α in {%s}, data seeds {%s} (the seed draws the "
            "train/test split and the shards), %d rounds × %d local steps of batch 16, every agent in every "
            "round (quorum 0), LoRA r=8 on query/value + classifier head, all-MiniLM-L6-v2, training seed 7. "
            "Accuracy is the example-weighted held-out accuracy of the global over every agent's test slice "
            "(2,000 examples) after each round (round records); mean and min–max over the seeds. Δ is "
            "against the best centralized run (`fedge run --centralized`: one agent on the union of the "
            "shards, localSteps × agents steps per round): of the centralized configurations run at every "
            "seed the reference ran at, the highest seed-mean (its Δ is —; the verdicts name it). \"First "
            "round within 1 point\": the first round whose seed-mean accuracy is at least that centralized "
            "final mean − 0.01." % (
                argv, "table written from the runs' summaries" if args.render_only else "started", started,
                os.uname().nodename, args.version, args.agents,
                ", ".join(str(a) for a in args.alphas), ", ".join(str(x) for x in args.data_seeds),
                args.rounds, args.local_steps),
            ""] + lines + [""]
    if args.curve:
        rel = os.path.relpath(os.path.abspath(args.curve), os.path.dirname(os.path.abspath(args.doc)))
        body += ["![accuracy after every round](%s)" % rel, ""]
    if verdict:
        body += ["Against the goals (within 2 points of centralized at α = 0.5, within 5 at α = 0.1):", ""] + \
            verdict + [""]
    if notes:
        body += ["Notes:", ""] + notes + [""]
    body += [GAP_END]
    text = ""
    if os.path.exists(args.doc):
        with open(args.doc) as f:
            text = f.read()
    block = "\n".join(body)
    if GAP_BEGIN in text and GAP_END in text:
        text = text[:text.index(GAP_BEGIN)] + block + text[text.index(GAP_END) + len(GAP_END):]
    else:
        if not text:
            text = "# Experiments\n\n"
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    with open(args.doc, "w") as f:
        f.write(text)
    with open(os.path.join(args.work_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    if args.curve:
        plot = os.path.join(os.path.dirname(os.path.abspath(__file__)), "plot_curves.py")
        cmd = [sys.executable, plot, os.path.join(args.work_dir, "results.json"), "--out", args.curve]
        if args.curve_configs:
            cmd += ["--configs", args.curve_configs]
        rc = subprocess.run(cmd).returncode
        if rc != 0:
            log("curve not drawn (plot_curves.py exit %d); the table is written" % rc)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fedge", default=os.path.join(ROOT, "build", "cli", "fedge"), help="fedge CLI binary")
    p.add_argument("--bin-dir", default="", help="directory with fedge-aggregator and fedge-agent "
                   "(default: fedge's own lookup)")
    p.add_argument("--manifest", default=os.path.join(ROOT, "deploy", "examples", "quickstart.yaml"))
    p.add_argument("--model-dir", default=os.path.join(ROOT, ".fedge", "models", "all-MiniLM-L6-v2"))
    p.add_argument("--work-dir", default=os.path.join(ROOT, ".fedge", "experiment"))
    p.add_argument("--doc", default=os.path.join(ROOT, "docs", "experiments.md"))
    p.add_argument("--alphas", default="0.5,0.1", help="comma-separated Dirichlet alphas")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--local-steps", type=int, default=30)
    p.add_argument("--agents", type=int, default=4)
    p.add_argument("--data-seed", type=int, default=7)
    p.add_argument("--data-seeds", default="", help="comma-separated data seeds (default: --data-seed); "
                   "every configuration runs once per seed")
    p.add_argument("--report", choices=["codecs", "gap"], default="codecs",
                   help="codecs: the codec/strategy table (bytes, accuracy vs fp32); gap: the "
                   "federated-centralized table (mean and spread over seeds, accuracy after every round, "
                   "its own block in --doc); the centralized run then happens once per seed")
    p.add_argument("--curve", default="", help="--report gap: also draw accuracy after every round to "
                   "this PNG (plot_curves.py; needs gnuplot)")
    p.add_argument("--curve-configs", default="", help="comma-separated configurations to draw (default: all)")
    p.add_argument("--configs", default=",".join(c[0] for c in CONFIGS),
                   help="comma-separated subset of: " + ", ".join(c[0] for c in CONFIGS))
    p.add_argument("--resume", action="store_true", help="reuse summaries already in --work-dir")
    p.add_argument("--render-only", action="store_true", help="run nothing: write the table from the "
                   "summaries of identical manifests already in --work-dir (others are listed as not run)")
    args = p.parse_args()
    args.alphas = [float(a) for a in args.alphas.split(",") if a]
    args.alphas = [int(a) if a == int(a) else a for a in args.alphas]
    args.data_seeds = [int(x) for x in args.data_seeds.split(",") if x] or [args.data_seed]
    if args.curve and args.report != "gap":
        p.error("--curve goes with --report gap")
    wanted = [c for c in args.configs.split(",") if c]
    unknown = set(wanted) - {c[0] for c in CONFIGS}
    if unknown:
        p.error("unknown configs: " + ", ".join(sorted(unknown)))
    if not os.path.exists(args.fedge):
        p.error("no fedge binary at %s (--fedge)" % args.fedge)
    args.version = subprocess.run([args.fedge, "--version"], capture_output=True, text=True).stdout.strip().splitlines()[:1]
    args.version = args.version[0] if args.version else "unknown"
    args.work_dir = os.path.abspath(args.work_dir)
    os.makedirs(args.work_dir, exist_ok=True)
    with open(args.manifest) as f:
        base = yaml.safe_load(f)
    started = datetime.datetime.utcnow().strftime("%Y-%m-%d %H:%M")
    results = []
    gap = args.report == "gap"
    # gap: seed-major (a run cut short still has every configuration at the first seeds).
    order = [(s, a) for s in args.data_seeds for a in args.alphas] if gap else \
        [(s, a) for a in args.alphas for s in args.data_seeds]
    for seed, alpha in order:
        data_dir = ensure_data(args, alpha, seed)
        for name, desc, overrides in sorted((c for c in CONFIGS if c[0] in wanted),
                                            key=lambda c: wanted.index(c[0])):
            first = next((r for r in results if r["name"] == name and r["seed"] == seed), None)
            if gap and is_centralized(name) and first is not None:
                # The union of the shards and the test set depend on the seed, not on alpha.
                results.append(dict(first, alpha=alpha, shared=True))
                continue
            results.append(run_one(args, name, desc, overrides, alpha, data_dir, base, seed))
            # After every run, with the configurations still to come listed as not run: an
            # invocation cut short leaves a true table.
            pending = [{"name": n, "desc": d, "alpha": a, "seed": s, "overrides": o,
                        "skipped": "not run: the invocation ended before it"}
                       for s, a in order for n, d, o in sorted(CONFIGS, key=lambda c: wanted.index(c[0])
                                                               if c[0] in wanted else len(wanted))
                       if n in wanted and not any(r["name"] == n and r["alpha"] == a and r["seed"] == s
                                                  for r in results)]
            (write_gap_doc if gap else write_doc)(args, results + pending, started)
    # Once more with everything: a shared centralized copy appended last is in no write above.
    (write_gap_doc if gap else write_doc)(args, results, started)
    log("wrote " + args.doc)


if __name__ == "__main__":
    main()
