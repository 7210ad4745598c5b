"""The feedback loop on the real binaries (issue 13, item 5).

fedge-aggregator and two fedge-agents on loopback, the real MiniLM model and WordNet data,
spec.feedback {maxExamples: 5, weight: 0.5}. The agents start before the aggregator, so
their /v1/feedback takes feedback before the job begins. Checks:
- bad feedback is a 400 that says what was wrong (unknown label, text too long, missing
  label, generative fields on a classifier job) and stores nothing;
- 7 distinct examples on agent-0 keep the newest 5 (the cap drops the oldest first); a
  repeated example is a duplicate;
- the feedback survives a restart of agent-0 (a duplicate after the restart is still one);
- both rounds' records count agent-0's feedback examples used (5) and none for agent-1;
- the feedback text never reaches the aggregator (its log and checkpoints).

Run by ctest (label e2e) with FEDGE_SOURCE_DIR and FEDGE_BINARY_DIR set.
"""
import json
import os
import shutil
import signal
import subprocess
import tempfile
import unittest

import yaml

from local_job_test import AGENT, AGGREGATOR, FEDGE, JOB_TEMPLATE, MODEL, free_port, http, wait_for

MARK = "zqxfeedbackmark"  # a word no WordNet gloss has: found only where feedback text went


@unittest.skipUnless(os.path.exists(os.path.join(MODEL, "model.safetensors")),
                     f"model not found at {MODEL}: run scripts/fetch-model.sh")
class FeedbackLoopTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="fedge-feedback-")
        data = os.path.join(cls.tmp, "data")
        out = subprocess.run([FEDGE, "data", "wordnet", "--agents", "2", "--alpha", "0.5", "--seed", "3",
                              "--test-size", "50", "--max-train", "200", "--out", data],
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        with open(os.path.join(data, "meta.json")) as f:
            cls.labels = json.load(f)["labels"]
        cls.data = data
        job = yaml.safe_load(JOB_TEMPLATE.format(name="feedback", model=MODEL, data=data, agents=2, rounds=2,
                                                 steps=2, labels=json.dumps(cls.labels),
                                                 compression="{codec: int8}"))
        job["spec"]["rounds"]["quorum"] = 0
        job["spec"]["feedback"] = {"maxExamples": 5, "weight": 0.5}
        cls.job = os.path.join(cls.tmp, "job.yaml")
        with open(cls.job, "w") as f:
            yaml.safe_dump(job, f)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def spawn(self, name, argv):
        log = open(os.path.join(self.tmp, f"{name}.log"), "a")
        self.addCleanup(log.close)
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        self.addCleanup(lambda: proc.poll() is None and (proc.kill(), proc.wait()))
        return proc

    def tail(self, name, n=20):
        with open(os.path.join(self.tmp, f"{name}.log")) as f:
            return "".join(f.readlines()[-n:])

    def agent(self, i, grpc_port, http_port):
        return self.spawn(f"agent-{i}", [
            AGENT, "--config", self.job, "--aggregator", f"127.0.0.1:{grpc_port}", "--agent-id", f"agent-{i}",
            "--data-dir", os.path.join(self.data, f"agent-{i}"), "--http", f"127.0.0.1:{http_port}",
            "--state-dir", os.path.join(self.tmp, f"state-{i}"), "--exit-when-done", "--threads", "1"])

    def healthy(self, name, proc, port):
        def up():
            try:
                return http("GET", f"http://127.0.0.1:{port}/healthz", timeout=2)[0] == 200
            except OSError:  # not listening yet
                return False
        wait_for(up, 300, f"{name}'s API", [(name, proc)])

    def test_feedback_is_validated_kept_across_a_restart_and_used_in_the_next_rounds(self):
        grpc_port, status_port = free_port(), free_port()
        ports = [free_port(), free_port()]
        agents = [self.agent(i, grpc_port, ports[i]) for i in range(2)]
        for i, a in enumerate(agents):
            self.healthy(f"agent-{i}", a, ports[i])
        url = f"http://127.0.0.1:{ports[0]}/v1/feedback"
        feedback_file = os.path.join(self.tmp, "state-0", "feedback.jsonl")

        # Bad feedback: a clear 400 each, nothing stored.
        bad = [
            ({"text": "a tabby cat", "label": "noun.dragon"}, "unknown_label", "noun.dragon"),
            ({"text": "x" * 16385, "label": self.labels[0]}, "input_too_long", "at most 16384"),
            ({"text": "a tabby cat"}, "missing_label", "'label' is required"),
            ({"prompt": "a tabby", "completion": "cat"}, "invalid_request", "classifies"),
            ({"text": "", "label": self.labels[0]}, "empty_input", "'text' is empty"),
        ]
        for body, code, words in bad:
            status, text = http("POST", url, body)
            self.assertEqual(status, 400, text)
            err = json.loads(text)["error"]
            self.assertEqual(err["code"], code, text)
            self.assertIn(words, err["message"])
        self.assertFalse(os.path.exists(feedback_file), "rejected feedback was stored")

        # 7 distinct examples; the cap (maxExamples 5) keeps the newest 5.
        label = "noun.animal" if "noun.animal" in self.labels else self.labels[1]
        texts = [f"{MARK}{k}: a small domestic animal number {k}" for k in range(7)]
        for k, t in enumerate(texts):
            status, text = http("POST", url, {"text": t, "label": label})
            self.assertEqual(status, 200, text)
            reply = json.loads(text)
            self.assertTrue(reply["stored"])
            self.assertEqual(reply["examples"], min(k + 1, 5))
            self.assertEqual(reply["dropped"], 1 if k >= 5 else 0)
        status, text = http("POST", url, {"text": texts[-1], "label": label})
        self.assertEqual((status, json.loads(text)["duplicate"]), (200, True), text)

        # Restart agent-0: its feedback is still held (a held example is still a duplicate).
        agents[0].send_signal(signal.SIGTERM)
        self.assertEqual(agents[0].wait(timeout=60), 0, self.tail("agent-0"))
        agents[0] = self.agent(0, grpc_port, ports[0])
        self.healthy("agent-0", agents[0], ports[0])
        status, text = http("POST", url, {"text": texts[4], "label": label})
        reply = json.loads(text)
        self.assertEqual(status, 200, text)
        self.assertTrue(reply["duplicate"], "feedback was lost in the restart")
        self.assertEqual(reply["examples"], 5)

        # The job: both rounds train agent-0 on its 5 feedback examples.
        agg = self.spawn("aggregator", [AGGREGATOR, "--config", self.job, "--listen", f"127.0.0.1:{grpc_port}",
                                        "--http", f"127.0.0.1:{status_port}",
                                        "--checkpoint-dir", os.path.join(self.tmp, "ckpt")])

        def finished():
            try:
                code, text = http("GET", f"http://127.0.0.1:{status_port}/v1/status", timeout=2)
            except OSError:
                return None
            st = json.loads(text) if code == 200 else {}
            return st if st.get("state") in ("Succeeded", "Failed") else None

        try:
            st = wait_for(finished, 600, "the job to end", [("aggregator", agg)])
        except AssertionError:
            raise AssertionError("\n".join(f"--- {n}\n{self.tail(n)}" for n in ("aggregator", "agent-0", "agent-1")))
        self.assertEqual(st["state"], "Succeeded", st.get("message"))
        self.assertEqual(len(st["rounds"]), 2)
        for r in st["rounds"]:
            self.assertEqual(r.get("feedback_examples"), {"agent-0": 5}, r)
        print(f"\n[feedback] round records: {[r.get('feedback_examples') for r in st['rounds']]}", flush=True)
        for i, a in enumerate(agents):
            self.assertEqual(a.wait(timeout=120), 0, self.tail(f"agent-{i}"))
        with open(os.path.join(self.tmp, "agent-0.log")) as f:
            self.assertIn("feedback_examples=5", f.read())

        # Feedback never leaves the node: no trace of its text at the aggregator.
        seen = []
        for root, _, files in os.walk(os.path.join(self.tmp, "ckpt")):
            seen += [os.path.join(root, f) for f in files]
        seen.append(os.path.join(self.tmp, "aggregator.log"))
        for path in seen:
            with open(path, "rb") as f:
                self.assertNotIn(MARK.encode(), f.read(), path)


if __name__ == "__main__":
    unittest.main()
