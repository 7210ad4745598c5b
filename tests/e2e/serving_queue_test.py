"""The serving scheduler against the real fedge-agent binary (issue 13 item 2):
concurrent /v1/classify requests are batched and get the answers they get one
at a time, and a full queue answers 429 with Retry-After in OpenAI's error
shape.

One fedge-aggregator and two fedge-agents (real MiniLM weights, WordNet data)
run a one-round job and keep serving: agent "batched" with the default
scheduler flags, agent "tight" with --max-queued-requests 1.

Run by ctest (label e2e) with FEDGE_SOURCE_DIR and FEDGE_BINARY_DIR set.
"""
import http.client as httpclient
import json
import os
import shutil
import subprocess
import tempfile
import threading
import unittest
import urllib.error

from local_job_test import AGENT, AGGREGATOR, FEDGE, JOB_TEMPLATE, MODEL, free_port, http, wait_for


def post(port, body, timeout=120):
    """(status, headers, parsed body) of POST /v1/classify on a fresh connection."""
    conn = httpclient.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", "/v1/classify", json.dumps(body), {"Content-Type": "application/json"})
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, json.loads(data)
    finally:
        conn.close()


def in_parallel(n, fn):
    """Runs fn(i) for i in range(n) on n threads released together; returns the results in order."""
    results = [None] * n
    barrier = threading.Barrier(n)

    def run(i):
        barrier.wait()
        results[i] = fn(i)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    return results


def metric(port, name):
    _, body = http("GET", f"http://127.0.0.1:{port}/metrics", timeout=10)
    values = {}
    for line in body.splitlines():
        if line.startswith(name):
            key, value = line.rsplit(" ", 1)
            values[key] = float(value)
    return values


@unittest.skipUnless(os.path.exists(os.path.join(MODEL, "model.safetensors")),
                     f"model not found at {MODEL}: run scripts/fetch-model.sh")
class ServingQueueTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="fedge-queue-")
        cls.procs, cls.logs = [], []
        data = os.path.join(cls.tmp, "data")
        out = subprocess.run([FEDGE, "data", "wordnet", "--agents", "2", "--alpha", "0.5", "--seed", "3",
                              "--test-size", "100", "--max-train", "200", "--out", data],
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        with open(os.path.join(data, "meta.json")) as f:
            labels = json.load(f)["labels"]
        with open(os.path.join(data, "test.jsonl")) as f:
            cls.texts = [json.loads(line)["text"] for line in f if line.strip()]
        job = os.path.join(cls.tmp, "job.yaml")
        with open(job, "w") as f:
            f.write(JOB_TEMPLATE.format(name="serving-queue", model=MODEL, data=data, agents=2, rounds=1, steps=2,
                                        labels=json.dumps(labels), compression="{codec: int8}"))
        grpc_port, agg_http = free_port(), free_port()
        cls.spawn("aggregator", [AGGREGATOR, "--config", job, "--listen", f"127.0.0.1:{grpc_port}", "--http",
                                 f"127.0.0.1:{agg_http}", "--checkpoint-dir", os.path.join(cls.tmp, "ckpt"),
                                 "--expected-agents", "2"])
        cls.ports = {}
        for i, (name, flags) in enumerate([("batched", []), ("tight", ["--max-queued-requests", "1"])]):
            cls.ports[name] = free_port()
            cls.spawn(name, [AGENT, "--config", job, "--aggregator", f"127.0.0.1:{grpc_port}", "--agent-id",
                             f"agent-{i}", "--node-name", f"node-{i}", "--data-dir", os.path.join(data, f"agent-{i}"),
                             "--model-dir", MODEL, "--http", f"127.0.0.1:{cls.ports[name]}",
                             "--state-dir", os.path.join(cls.tmp, f"state-{i}")] + flags)

        def ready(port):
            try:
                return http("GET", f"http://127.0.0.1:{port}/readyz", timeout=5)[0] == 200
            except (OSError, urllib.error.URLError):
                return False

        for name, port in cls.ports.items():
            wait_for(lambda port=port: ready(port), 600, f"agent {name} /readyz", cls.procs)

        # The final global installed: no answer below changes version (the agents keep serving).
        def job_done():
            try:
                code, body = http("GET", f"http://127.0.0.1:{agg_http}/v1/status", timeout=5)
            except (OSError, urllib.error.URLError):
                return False
            return code == 200 and json.loads(body).get("state") == "Succeeded"

        wait_for(job_done, 600, "the job to finish", cls.procs)

    @classmethod
    def spawn(cls, name, argv):
        log = open(os.path.join(cls.tmp, f"{name}.log"), "w")
        cls.logs.append(log)
        cls.procs.append((name, subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)))

    @classmethod
    def tearDownClass(cls):
        for _, p in cls.procs:
            if p.poll() is None:
                p.terminate()
        for _, p in cls.procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        for log in cls.logs:
            log.close()
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def test_concurrent_classify_results_equal_sequential_ones(self):
        port = self.ports["batched"]
        texts = self.texts[:48]
        sequential, models = [], []
        for t in texts:
            code, _, body = post(port, {"input": t})
            self.assertEqual(code, 200, body)
            sequential.append(body["data"][0])
            models.append(body["model"])
        before = metric(port, "fedge_agent_inference_batch_requests")

        clients, per_client = 8, len(texts) // 8

        def client(i):
            out = []
            for k in range(per_client):
                idx = k * clients + i  # interleaved: neighbours in a batch are other clients' texts
                code, _, body = post(port, {"input": texts[idx]})
                out.append((idx, code, body))
            return out

        concurrent = [r for rs in in_parallel(clients, client) for r in rs]
        self.assertEqual(len(concurrent), len(texts))
        for idx, code, body in concurrent:
            self.assertEqual(code, 200, body)
            got, want = body["data"][0], sequential[idx]
            self.assertEqual(body["model"], models[idx], "the global changed during the test")
            self.assertEqual(got["label"], want["label"], texts[idx])
            self.assertAlmostEqual(got["score"], want["score"], delta=1e-4, msg=texts[idx])
            for label, p in want["scores"].items():
                self.assertAlmostEqual(got["scores"].get(label, -1), p, delta=1e-4, msg=texts[idx])

        # The concurrent requests were served by passes holding more than one of them.
        after = metric(port, "fedge_agent_inference_batch_requests")
        passes = after["fedge_agent_inference_batch_requests_count"] - before["fedge_agent_inference_batch_requests_count"]
        served = after["fedge_agent_inference_batch_requests_sum"] - before["fedge_agent_inference_batch_requests_sum"]
        self.assertEqual(served, len(texts))
        self.assertLess(passes, len(texts), "8 concurrent clients and not one batched pass")

    def test_a_full_queue_answers_429_with_retry_after(self):
        port = self.ports["tight"]
        # 64 texts per request run as one pass each (beyond --max-batch-size): one runs,
        # one waits, the rest arrive at a full queue.
        body = {"input": self.texts[:64]}
        results = in_parallel(12, lambda i: post(port, body))
        codes = sorted(code for code, _, _ in results)
        self.assertIn(429, codes, f"no request refused with a queue of 1: {codes}")
        self.assertIn(200, codes, codes)
        self.assertEqual(set(codes), {200, 429}, codes)
        for code, headers, reply in results:
            if code != 429:
                self.assertEqual(len(reply["data"]), 64)
                continue
            self.assertIn("retry-after", headers)
            self.assertGreaterEqual(int(headers["retry-after"]), 1)
            err = reply["error"]
            self.assertEqual(err["type"], "requests")
            self.assertEqual(err["code"], "rate_limit_exceeded")
            self.assertIn("param", err)
            self.assertIn("--max-queued-requests 1", err["message"])
        refused = metric(port, "fedge_agent_inference_requests_total")
        key = 'fedge_agent_inference_requests_total{code="429",endpoint="/v1/classify"}'
        self.assertEqual(refused.get(key), codes.count(429))
        # And the agent serves normally afterwards.
        code, _, reply = post(port, {"input": "oak: a deciduous tree"})
        self.assertEqual(code, 200, reply)


if __name__ == "__main__":
    unittest.main()
