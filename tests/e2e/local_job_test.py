"""End-to-end tests of fedge on this machine: real binaries, the real
all-MiniLM-L6-v2 weights, real WordNet data, real gRPC over loopback.

Run by ctest (label e2e) with FEDGE_SOURCE_DIR and FEDGE_BINARY_DIR set.
"""
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import unittest
import urllib.error
import urllib.request

ROOT = os.environ.get("FEDGE_SOURCE_DIR", os.path.abspath(os.path.join(os.path.dirname(__file__), "../..")))
BUILD = os.environ.get("FEDGE_BINARY_DIR", os.path.join(ROOT, "build"))
FEDGE = os.path.join(BUILD, "cli", "fedge")
AGGREGATOR = os.path.join(BUILD, "aggregator", "fedge-aggregator")
AGENT = os.path.join(BUILD, "agent", "fedge-agent")
MODEL = os.environ.get("FEDGE_MODEL_DIR", os.path.join(ROOT, ".fedge", "models", "all-MiniLM-L6-v2"))

JOB_TEMPLATE = """\
apiVersion: fedge.io/v1alpha1
kind: FederatedTrainingJob
metadata:
  name: {name}
spec:
  model:
    path: {model}
    family: bert
    task: sequence-classification
    maxSeqLen: 32
    labels: {labels}
  adapter:
    rank: 4
    alpha: 8
    targetModules: [query, value]
  data:
    path: {data}
  agents:
    minAgents: {agents}
    replicas: {agents}
  rounds:
    total: {rounds}
    quorum: 1
    timeoutSeconds: 120
    localSteps: {steps}
    batchSize: 16
    learningRate: 0.003
    seed: 11
  compression: {compression}
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method, url, body=None, timeout=30):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def wait_for(predicate, timeout, what, procs=()):
    deadline = time.time() + timeout
    while time.time() < deadline:
        for name, p in procs:
            if p.poll() is not None:
                raise AssertionError(f"{name} exited with {p.returncode} while waiting for {what}")
        value = predicate()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def status(port):
    try:
        code, body = http("GET", f"http://127.0.0.1:{port}/v1/status", timeout=5)
    except (urllib.error.URLError, ConnectionError, socket.timeout):
        return None
    return json.loads(body) if code == 200 else None


@unittest.skipUnless(os.path.exists(os.path.join(MODEL, "model.safetensors")),
                     f"model not found at {MODEL}: run scripts/fetch-model.sh")
class LocalJobTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="fedge-e2e-")
        cls.data = os.path.join(cls.tmp, "data")
        out = subprocess.run([FEDGE, "data", "wordnet", "--agents", "2", "--alpha", "0.5", "--seed", "3",
                              "--test-size", "300", "--max-train", "4000", "--out", cls.data],
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        with open(os.path.join(cls.data, "meta.json")) as f:
            cls.meta = json.load(f)
        cls.labels = cls.meta["labels"]

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def write_job(self, name, rounds, steps, agents=2, compression="{codec: int8}"):
        path = os.path.join(self.tmp, f"{name}.yaml")
        with open(path, "w") as f:
            f.write(JOB_TEMPLATE.format(name=name, model=MODEL, data=self.data, agents=agents, rounds=rounds,
                                        steps=steps, labels=json.dumps(self.labels), compression=compression))
        return path

    def test_federated_job_learns_far_above_majority_baseline(self):
        job = self.write_job("e2e-fedavg", rounds=3, steps=25)
        summary_path = os.path.join(self.tmp, "summary.json")
        run = subprocess.run([FEDGE, "run", "-f", job, "--work-dir", os.path.join(self.tmp, "run1"),
                              "--summary", summary_path], capture_output=True, text=True, timeout=900)
        self.assertEqual(run.returncode, 0, run.stdout + run.stderr)
        with open(summary_path) as f:
            summary = json.load(f)
        self.assertEqual([r["round"] for r in summary["rounds"]], [1, 2, 3])
        for r in summary["rounds"]:
            self.assertEqual(r["participants"], 2)
            self.assertGreater(r["bytes_up"], 0)
            self.assertGreater(r["bytes_down"], 0)
            self.assertTrue(math.isfinite(r["loss"]))
        self.assertAlmostEqual(summary["chance"], 1 / 25)
        # Far above the majority class: the model learned the task, not the prior.
        self.assertGreater(summary["final_accuracy"], summary["majority_baseline"] + 0.15, summary)

    def test_bad_manifest_is_rejected_before_anything_starts(self):
        job = self.write_job("e2e-bad", rounds=2, steps=5).replace(".yaml", "-bad.yaml")
        with open(job, "w") as f:
            f.write(JOB_TEMPLATE.format(name="e2e-bad", model=MODEL, data=self.data, agents=2, rounds=-3, steps=5,
                                        labels=json.dumps(self.labels), compression="{codec: int8}"))
        run = subprocess.run([FEDGE, "run", "-f", job, "--work-dir", os.path.join(self.tmp, "bad")],
                             capture_output=True, text=True, timeout=60)
        self.assertEqual(run.returncode, 2, run.stdout + run.stderr)
        self.assertIn("spec.rounds.total", run.stdout + run.stderr)

    def test_aggregator_killed_mid_job_resumes_from_last_round_and_agents_serve(self):
        # Top-k + int4 with error feedback (format v2, residual in the agents' state dirs) across the
        # aggregator restart.
        job = self.write_job("e2e-restart", rounds=3, steps=10,
                             compression="{codec: int4, topKFraction: 0.1, errorFeedback: true}")
        grpc_port, http_port = free_port(), free_port()
        ckpt = os.path.join(self.tmp, "ckpt")
        logs = os.path.join(self.tmp, "restart-logs")
        os.makedirs(logs, exist_ok=True)

        open_logs = []

        def start_aggregator(tag):
            log = open(os.path.join(logs, f"aggregator-{tag}.log"), "w")
            open_logs.append(log)
            return subprocess.Popen([AGGREGATOR, "--config", job, "--listen", f"127.0.0.1:{grpc_port}",
                                     "--http", f"127.0.0.1:{http_port}", "--checkpoint-dir", ckpt,
                                     "--expected-agents", "2"], stdout=log, stderr=subprocess.STDOUT)

        agg = start_aggregator("first")
        agents, agent_ports = [], []

        def start_agent(i, tag):
            log = open(os.path.join(logs, f"agent-{i}{tag}.log"), "w")
            open_logs.append(log)
            # --job-uid as the operator passes it: the state directory belongs to this run of the job.
            return subprocess.Popen(
                [AGENT, "--config", job, "--aggregator", f"127.0.0.1:{grpc_port}", "--agent-id", f"agent-{i}",
                 "--node-name", f"node-{i}", "--data-dir", os.path.join(self.data, f"agent-{i}"),
                 "--model-dir", MODEL, "--http", f"127.0.0.1:{agent_ports[i]}", "--job-uid", "e2e-restart-1",
                 "--state-dir", os.path.join(self.tmp, f"state-{i}")], stdout=log, stderr=subprocess.STDOUT)

        for i in range(2):
            agent_ports.append(free_port())
            agents.append(start_agent(i, ""))
        procs = [("aggregator", agg)] + [(f"agent-{i}", a) for i, a in enumerate(agents)]
        try:
            first = wait_for(lambda: (s := status(http_port)) and len(s.get("rounds", [])) >= 1 and s, 600,
                             "round 1 to complete", procs)
            agg.send_signal(signal.SIGKILL)
            agg.wait()
            round1 = first["rounds"][0]

            agg = start_aggregator("second")
            procs[0] = ("aggregator", agg)
            done = wait_for(lambda: (s := status(http_port)) and s.get("state") == "Succeeded" and s, 900,
                            "the resumed job to succeed", procs)
            self.assertEqual([r["round"] for r in done["rounds"]], [1, 2, 3], done)
            # Round 1 survived the crash exactly as it was recorded before it.
            resumed1 = done["rounds"][0]
            for key in ("participants", "train_loss", "global_version", "bytes_up", "close_reason"):
                self.assertEqual(resumed1[key], round1[key], key)
            if round1["accuracy"] is None:
                # Recorded before its evaluation, which comes with round 2's updates: the resumed
                # aggregator asked round 2's agents for it.
                self.assertEqual(round1["evaluators"], 0, round1)
                self.assertIsNotNone(resumed1["accuracy"], done)
                self.assertEqual(resumed1["evaluators"], 2, done)
            else:
                self.assertEqual(resumed1["accuracy"], round1["accuracy"])
                self.assertEqual(resumed1["loss"], round1["loss"])
            self.assertIsNotNone(done["final_accuracy"])

            # The agents keep serving the final global model.
            base = f"http://127.0.0.1:{agent_ports[0]}"
            wait_for(lambda: http("GET", base + "/readyz")[0] == 200, 120, "agent readiness", procs[1:])
            code, body = http("POST", base + "/v1/classify", {"input": ["dog: a domesticated canine", "oak: a tree"]})
            self.assertEqual(code, 200, body)
            result = json.loads(body)
            self.assertEqual(len(result["data"]), 2)
            for item in result["data"]:
                self.assertIn(item["label"], self.labels)
            code, body = http("POST", base + "/v1/embeddings", {"input": "a small domesticated feline",
                                                                "model": "e2e-restart"})
            self.assertEqual(code, 200, body)
            emb = json.loads(body)["data"][0]["embedding"]
            self.assertEqual(len(emb), 384)
            self.assertAlmostEqual(math.sqrt(sum(x * x for x in emb)), 1.0, places=3)
            code, body = http("POST", base + "/v1/classify", {"nope": 1})
            self.assertEqual(code, 400, body)
            self.assertIn("error", json.loads(body))
            code, body = http("GET", base + "/metrics")
            self.assertIn("fedge_agent_", body)
            sent = {m: float(v) for m, v in re.findall(
                r"^(fedge_agent_update_(?:raw|encoded)_bytes_total) (\S+)$", body, re.M)}
            self.assertEqual(len(sent), 2, body)
            # Top-10% of int4 values: far fewer bytes than the fp32 deltas.
            self.assertGreater(sent["fedge_agent_update_encoded_bytes_total"], 0, body)
            self.assertGreater(sent["fedge_agent_update_raw_bytes_total"],
                               8 * sent["fedge_agent_update_encoded_bytes_total"], body)
            self.assertTrue(os.path.exists(os.path.join(self.tmp, "state-0", "error-feedback.safetensors")))
            code, body = http("GET", f"http://127.0.0.1:{http_port}/metrics")
            self.assertIn("fedge_aggregator_rounds_completed_total", body)

            # After the job: the aggregator goes (as its pod completes in a cluster) and agent-0
            # crashes (a node reboot); its restart serves the final global kept on the node
            # without an aggregator to join.
            agg.send_signal(signal.SIGTERM)
            self.assertEqual(agg.wait(timeout=30), 0)
            agents[0].send_signal(signal.SIGKILL)
            agents[0].wait()
            agents[0] = start_agent(0, "-restarted")
            procs[1] = ("agent-0 (restarted)", agents[0])
            def restarted_ready():
                try:
                    return http("GET", base + "/readyz", timeout=5)[0] == 200
                except (urllib.error.URLError, ConnectionError, socket.timeout):
                    return False  # not listening yet

            wait_for(restarted_ready, 120, "the restarted agent's readiness", [procs[1]])
            code, body = http("POST", base + "/v1/classify", {"input": ["dog: a domesticated canine", "oak: a tree"]})
            self.assertEqual(code, 200, body)
            again = json.loads(body)
            self.assertEqual([d["label"] for d in again["data"]], [d["label"] for d in result["data"]], again)
            for before, after in zip(result["data"], again["data"]):
                self.assertAlmostEqual(before["score"], after["score"], places=5)
            with open(os.path.join(logs, "agent-0-restarted.log")) as f:
                restarted_log = f.read()
            self.assertIn("the job was done before this start", restarted_log)
            self.assertNotIn('msg="joined"', restarted_log)
            self.assertNotIn("aggregator unreachable", restarted_log, "it never looks for the aggregator")
        finally:
            for _, p in procs:
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
            for name, p in procs:
                try:
                    rc = p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    p.kill()
                    raise AssertionError(f"{name} did not exit within 30 s of SIGTERM")
            for log in open_logs:
                log.close()
        for name, p in procs[1:]:
            self.assertEqual(p.returncode, 0, f"{name} exit code on SIGTERM")


if __name__ == "__main__":
    unittest.main()
