"""Every configuration bench/experiment/run_experiment.py can run yields a manifest fedge
accepts: each is built exactly as the harness builds it (from the quickstart manifest) at
both Dirichlet alphas and a non-default seed, and checked with the real `fedge validate`.
A configuration whose manifest fedge refuses costs a whole experiment invocation before
anyone notices (session 20: a 44-character job name).

Run by ctest (label e2e) with FEDGE_SOURCE_DIR and FEDGE_BINARY_DIR set.
"""
import argparse
import os
import subprocess
import sys
import tempfile
import unittest

import yaml

ROOT = os.environ.get("FEDGE_SOURCE_DIR", os.path.abspath(os.path.join(os.path.dirname(__file__), "../..")))
BUILD = os.environ.get("FEDGE_BINARY_DIR", os.path.join(ROOT, "build"))
FEDGE = os.path.join(BUILD, "cli", "fedge")
sys.path.insert(0, os.path.join(ROOT, "bench", "experiment"))
import run_experiment  # noqa: E402


class ExperimentConfigsTest(unittest.TestCase):
    def test_every_configuration_builds_a_manifest_fedge_accepts(self):
        with open(os.path.join(ROOT, "deploy", "examples", "quickstart.yaml")) as f:
            base = yaml.safe_load(f)
        args = argparse.Namespace(model_dir=os.path.join(ROOT, ".fedge", "models", "all-MiniLM-L6-v2"),
                                  agents=4, rounds=5, local_steps=30, data_seed=7)
        names = [c[0] for c in run_experiment.CONFIGS]
        self.assertGreater(len(names), 10)
        self.assertEqual(len(names), len(set(names)), "configuration names repeat")
        seen = {}
        with tempfile.TemporaryDirectory() as tmp:
            for name, _desc, overrides in run_experiment.CONFIGS:
                for alpha in (0.5, 0.1):
                    for seed in (7, 9):
                        m = run_experiment.manifest_for(args, base, name, overrides, alpha,
                                                        os.path.join(tmp, "data"), seed)
                        job = m["metadata"]["name"]
                        self.assertNotIn(job, seen, "%s and %s share a job name" % (seen.get(job), name))
                        seen[job] = name
                        path = os.path.join(tmp, job + ".yaml")
                        with open(path, "w") as f:
                            yaml.safe_dump(m, f, sort_keys=False)
                        r = subprocess.run([FEDGE, "validate", "-f", path], capture_output=True, text=True)
                        self.assertEqual(r.returncode, 0, "%s (alpha %s, seed %d): %s" % (name, alpha, seed, r.stderr))

    def test_a_long_tag_is_shortened_to_a_distinct_valid_name(self):
        a = run_experiment.job_name("exp-a05-scaffold-lr4e-3-keep-st01b005-g16-s9")
        b = run_experiment.job_name("exp-a05-scaffold-lr4e-3-keep-st01b005-g32-s9")
        self.assertLessEqual(len(a), 40)
        self.assertNotEqual(a, b)
        self.assertRegex(a, r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
        # A tag that fits is its own name (the names of earlier runs stay as they were).
        self.assertEqual(run_experiment.job_name("exp-a05-scaffold-lr4e-3-keep-st01b005-s9"),
                         "exp-a05-scaffold-lr4e-3-keep-st01b005-s9")


if __name__ == "__main__":
    unittest.main()
