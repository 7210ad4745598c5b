"""A job with central differential privacy on the real binaries (issue 12, item 2).

fedge-aggregator and two fedge-agents on loopback, the real MiniLM model and WordNet data,
spec.privacy.differentialPrivacy with a targetEpsilon that leaves room for 2 of the 5
rounds. Checks: /v1/status reports the epsilon after every round, increasing, equal to
the RDP bound recomputed here (integer orders 2..64, 128, 256, 512, q = 1: both agents
are invited every round); the job ends Succeeded after 2 rounds with budget_exhausted and
a message saying so; the fedge_aggregator_privacy_epsilon metric carries the same value;
the agents exit 0 (DONE).

Run by ctest (label e2e) with FEDGE_SOURCE_DIR and FEDGE_BINARY_DIR set.
"""
import json
import math
import os
import re
import shutil
import subprocess
import tempfile
import time
import unittest

import yaml

from local_job_test import AGENT, AGGREGATOR, FEDGE, JOB_TEMPLATE, MODEL, free_port, http, wait_for

SIGMA = 2.0
DELTA = 1e-5
ORDERS = list(range(2, 65)) + [128, 256, 512]


def epsilon(rounds):
    """(epsilon, delta) of `rounds` Gaussian-mechanism rounds with q = 1 (RDP a / (2 sigma^2))."""
    best = math.inf
    for a in ORDERS:
        rdp = rounds * a / (2 * SIGMA ** 2)
        if DELTA ** 2 + math.expm1(-rdp) > 0:
            return 0.0  # nothing spent yet
        best = min(best, rdp + math.log1p(-1 / a) - math.log(DELTA * a) / (a - 1))
    return max(0.0, best)


@unittest.skipUnless(os.path.exists(os.path.join(MODEL, "model.safetensors")),
                     f"model not found at {MODEL}: run scripts/fetch-model.sh")
class DifferentialPrivacyJobTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="fedge-dp-")
        data = os.path.join(cls.tmp, "data")
        out = subprocess.run([FEDGE, "data", "wordnet", "--agents", "2", "--alpha", "0.5", "--seed", "3",
                              "--test-size", "50", "--max-train", "200", "--out", data],
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        with open(os.path.join(data, "meta.json")) as f:
            labels = json.load(f)["labels"]
        cls.data = data
        job = yaml.safe_load(JOB_TEMPLATE.format(name="dp", model=MODEL, data=data, agents=2, rounds=5, steps=2,
                                                 labels=json.dumps(labels), compression="{codec: int8}"))
        cls.target = (epsilon(2) + epsilon(3)) / 2  # room for 2 rounds, not 3
        job["spec"]["privacy"] = {"differentialPrivacy": {"clipNorm": 0.5, "noiseMultiplier": SIGMA,
                                                          "targetEpsilon": cls.target, "delta": DELTA}}
        job["spec"]["rounds"]["quorum"] = 0
        cls.job = os.path.join(cls.tmp, "job.yaml")
        with open(cls.job, "w") as f:
            yaml.safe_dump(job, f)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def spawn(self, name, argv):
        log = open(os.path.join(self.tmp, f"{name}.log"), "w")
        self.addCleanup(log.close)
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        self.addCleanup(lambda: proc.poll() is None and proc.kill())
        return proc

    def tail(self, name, n=20):
        with open(os.path.join(self.tmp, f"{name}.log")) as f:
            return "".join(f.readlines()[-n:])

    def test_epsilon_is_reported_every_round_and_the_budget_ends_the_job(self):
        out = subprocess.run([FEDGE, "validate", "-f", self.job], capture_output=True, text=True, timeout=60)
        self.assertEqual(out.returncode, 0, out.stderr)
        grpc_port, http_port = free_port(), free_port()
        agg = self.spawn("aggregator", [AGGREGATOR, "--config", self.job, "--listen", f"127.0.0.1:{grpc_port}",
                                        "--http", f"127.0.0.1:{http_port}",
                                        "--checkpoint-dir", os.path.join(self.tmp, "ckpt")])
        agents = [self.spawn(f"agent-{i}", [
            AGENT, "--config", self.job, "--aggregator", f"127.0.0.1:{grpc_port}", "--agent-id", f"agent-{i}",
            "--data-dir", os.path.join(self.data, f"agent-{i}"), "--http", f"127.0.0.1:{free_port()}",
            "--state-dir", os.path.join(self.tmp, f"state-{i}"), "--exit-when-done"]) for i in range(2)]

        seen = {}  # rounds composed in the accountant -> epsilon reported

        def status():
            try:
                code, text = http("GET", f"http://127.0.0.1:{http_port}/v1/status", timeout=2)
            except OSError:
                return None
            if code != 200:
                return None
            st = json.loads(text)
            if "privacy" in st:
                seen[st["privacy"]["rounds_accounted"]] = st["privacy"]["epsilon"]
            return st if st["state"] in ("Succeeded", "Failed") else None

        try:
            st = wait_for(status, 600, "the job to end", [("aggregator", agg)])
        except AssertionError:
            raise AssertionError("\n".join(f"--- {n}\n{self.tail(n)}" for n in ("aggregator", "agent-0", "agent-1")))
        self.assertEqual(st["state"], "Succeeded", st["message"])
        self.assertEqual(len(st["rounds"]), 2, "the budget allows 2 of the 5 rounds")
        self.assertIn("privacy budget exhausted", st["message"])
        p = st["privacy"]
        self.assertTrue(p["budget_exhausted"])
        self.assertEqual(p["rounds_accounted"], 2)
        self.assertAlmostEqual(p["epsilon"], epsilon(2), places=9)
        self.assertLessEqual(p["epsilon"], self.target)
        print(f"\n[dp] epsilon after each round seen: {seen}; target {self.target:.3f}; final {p['epsilon']:.3f}",
              flush=True)
        # Every epsilon seen is the bound for the rounds composed when it was reported.
        for rounds, eps in seen.items():
            self.assertAlmostEqual(eps, epsilon(rounds), places=9, msg=f"after {rounds} rounds")
        code, metrics = http("GET", f"http://127.0.0.1:{http_port}/metrics", timeout=5)
        m = re.search(r"^fedge_aggregator_privacy_epsilon (\S+)$", metrics, re.M)
        self.assertIsNotNone(m, "the epsilon metric is missing")
        self.assertAlmostEqual(float(m.group(1)), p["epsilon"], places=6)
        for i, a in enumerate(agents):
            self.assertEqual(a.wait(timeout=120), 0, self.tail(f"agent-{i}"))
        # Each round record carries the epsilon spent after it (what `fedge run` prints).
        self.assertEqual([round(r["epsilon"], 9) for r in st["rounds"]], [round(epsilon(1), 9), round(epsilon(2), 9)])
        text = open(os.path.join(self.tmp, "aggregator.log")).read()
        self.assertIn("privacy noise added", text)
        self.assertIn("privacy budget exhausted", text)


if __name__ == "__main__":
    unittest.main()
