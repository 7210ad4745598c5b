"""End-to-end test of a generative (causal-LM) job: a tiny Llama pretrained here
with fedge-pretrain, WordNet gloss data from `fedge data wordnet --task gloss`,
two real agents fine-tuning LoRA adapters federatedly over real gRPC, then
OpenAI-style /v1/completions from an agent serving the final global.

Run by ctest (label e2e) with FEDGE_SOURCE_DIR and FEDGE_BINARY_DIR set.
"""
import json
import math
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import unittest
import urllib.error
import urllib.request

ROOT = os.environ.get("FEDGE_SOURCE_DIR", os.path.abspath(os.path.join(os.path.dirname(__file__), "../..")))
BUILD = os.environ.get("FEDGE_BINARY_DIR", os.path.join(ROOT, "build"))
FEDGE = os.path.join(BUILD, "cli", "fedge")
PRETRAIN = os.path.join(BUILD, "agent", "fedge-pretrain")

JOB = """\
apiVersion: fedge.io/v1alpha1
kind: FederatedTrainingJob
metadata:
  name: e2e-generative
spec:
  model:
    path: {model}
    family: llama
    task: causal-lm
    maxSeqLen: 48
  adapter:
    rank: 8
    alpha: 16
    targetModules: [q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj]
  data:
    path: {data}
  agents:
    minAgents: 2
    replicas: 2
  rounds:
    total: 2
    quorum: 2
    timeoutSeconds: 300
    localSteps: 100
    batchSize: 16
    learningRate: 0.005
    seed: 5
  compression:
    codec: int8
  serving:
    maxInputBytes: 2048
"""


def http(method, url, body=None, timeout=60):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


@unittest.skipUnless(os.path.exists(PRETRAIN) and os.path.exists("/usr/share/wordnet/data.noun"),
                     "needs fedge-pretrain and wordnet-base")
class GenerativeJobTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="fedge-e2e-gen-")
        cls.model = os.path.join(cls.tmp, "model")
        # A fixed step count (not a time budget) and fixed seeds make the base model, and so the
        # whole job, the same on every run: the loss comparison below cannot flip with machine load.
        out = subprocess.run([PRETRAIN, "--out", cls.model, "--steps", "150", "--max-seconds", "0", "--seed", "1",
                              "--hidden", "64", "--layers", "2",
                              "--heads", "2", "--kv-heads", "1", "--intermediate", "128", "--vocab-size", "512",
                              "--max-lines", "5000", "--threads", "1"],
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stdout + out.stderr
        cls.data = os.path.join(cls.tmp, "data")
        out = subprocess.run([FEDGE, "data", "wordnet", "--task", "gloss", "--agents", "2", "--alpha", "0.5",
                              "--seed", "3", "--test-size", "120", "--max-train", "2000", "--out", cls.data],
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stdout + out.stderr

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def test_federated_lora_lowers_held_out_loss_and_agents_serve_completions(self):
        job = os.path.join(self.tmp, "job.yaml")
        with open(job, "w") as f:
            f.write(JOB.format(model=self.model, data=self.data))
        summary_path = os.path.join(self.tmp, "summary.json")
        stdout_path = os.path.join(self.tmp, "run.out")
        with open(stdout_path, "w") as out:
            run = subprocess.Popen([FEDGE, "run", "-f", job, "--work-dir", os.path.join(self.tmp, "run"),
                                    "--summary", summary_path, "--serve", "--quiet"],
                                   stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.time() + 240
            urls = []
            while time.time() < deadline and run.poll() is None:
                with open(stdout_path) as f:
                    text = f.read()
                if "serving the final global model" in text:
                    urls = re.findall(r"agent-\d+\s+(http://[0-9.]+:\d+)", text)
                    if urls:
                        break
                time.sleep(0.25)
            with open(stdout_path) as f:
                text = f.read()
            self.assertIsNone(run.poll(), "fedge run exited early:\n" + text)
            self.assertEqual(len(urls), 2, text)
            self.assertIn("perplexity", text)

            with open(summary_path) as f:
                summary = json.load(f)
            rounds = summary["rounds"]
            self.assertEqual([r["round"] for r in rounds], [1, 2], summary)
            for r in rounds:
                self.assertEqual(r["participants"], 2)
                self.assertIsNone(r["accuracy"])  # a causal LM reports loss only
                self.assertTrue(math.isfinite(r["loss"]))
            print(f"\nheld-out loss: round 1 {rounds[0]['loss']:.4f}, round 2 {rounds[1]['loss']:.4f}")
            self.assertLess(rounds[1]["loss"], rounds[0]["loss"], summary)

            code, body = http("POST", urls[0] + "/v1/completions",
                              {"prompt": "dog:", "max_tokens": 12, "temperature": 0, "stop": ["\n"]})
            self.assertEqual(code, 200, body)
            resp = json.loads(body)
            self.assertEqual(resp["object"], "text_completion")
            choice = resp["choices"][0]
            self.assertIn(choice["finish_reason"], ("stop", "length"))
            self.assertIsInstance(choice["text"], str)
            usage = resp["usage"]
            self.assertGreater(usage["prompt_tokens"], 0)
            self.assertEqual(usage["total_tokens"], usage["prompt_tokens"] + usage["completion_tokens"])
            self.assertLessEqual(usage["completion_tokens"], 12)
            print(f"completion for 'dog:': {choice['text']!r} ({choice['finish_reason']})")

            # max_tokens 1 with greedy decoding ends on length unless EOS came first.
            code, body = http("POST", urls[1] + "/v1/completions",
                              {"prompt": "tree:", "max_tokens": 1, "temperature": 0})
            self.assertEqual(code, 200, body)
            self.assertLessEqual(json.loads(body)["usage"]["completion_tokens"], 1)

            code, body = http("POST", urls[0] + "/v1/completions", {"max_tokens": 4})
            self.assertEqual(code, 400, body)
            self.assertIn("prompt", json.loads(body)["error"]["message"])
            code, body = http("POST", urls[0] + "/v1/completions", {"prompt": "x:", "temperature": -1})
            self.assertEqual(code, 400, body)
            # spec.serving.maxInputBytes reaches the agents (the default is 16 KiB).
            code, body = http("POST", urls[0] + "/v1/completions", {"prompt": "x" * 3000, "max_tokens": 1})
            self.assertEqual(code, 400, body)
            self.assertEqual(json.loads(body)["error"]["code"], "input_too_long", body)
            self.assertIn("at most 2048", json.loads(body)["error"]["message"])
            code, body = http("POST", urls[0] + "/v1/classify", {"input": "dog: a canine"})
            self.assertEqual(code, 400, body)
            self.assertIn("causal-lm", json.loads(body)["error"]["message"])
        finally:
            if run.poll() is None:
                run.send_signal(signal.SIGINT)
                try:
                    run.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    run.kill()
                    run.wait()
        self.assertEqual(run.returncode, 0)


if __name__ == "__main__":
    unittest.main()
