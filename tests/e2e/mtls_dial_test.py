"""Agents that dial the aggregator over mutual TLS before it listens (real binaries).

On real nodes the operator creates the aggregator and the agents together, so agents
start first and back off while nothing listens. With mutual TLS (the CRD's default)
agents then stayed in the TLS handshake for minutes after the aggregator came up: the
server's handshake bytes sat unread in the agent's socket because nothing in the agent
process polled the channel between its own fail-fast RPCs (each attempt ended
`timed out before receiving SETTINGS frame` or `Handshake read failed`). In one process
(the gtest suite) the server's threads poll the client's sockets too, which hid it;
here the aggregator and each agent are separate processes, as in pods.

Certificates are made with the openssl CLI the way the operator makes them: a job CA,
a serving certificate for the Service name, one client certificate per agent naming it
in the URI SAN urn:fedge:agent:<id>.

Run by ctest (label e2e) with FEDGE_SOURCE_DIR and FEDGE_BINARY_DIR set.
"""
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import unittest

from local_job_test import AGENT, AGGREGATOR, FEDGE, JOB_TEMPLATE, MODEL, free_port, http, wait_for

AGENTS = 2
WAIT_BEFORE_AGGREGATOR_S = 15  # long enough for the agents' backoff to reach its 10 s cap


def openssl(*args, cwd):
    out = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr


def make_pki(d):
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "1",
            "-subj", "/CN=fedge job CA", "-keyout", "ca.key", "-out", "ca.crt", cwd=d)

    def issue(name, subject, san, usage):
        with open(os.path.join(d, f"{name}.ext"), "w") as f:
            f.write(f"subjectAltName={san}\nextendedKeyUsage={usage}\n")
        openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj", subject,
                "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=d)
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                "-days", "1", "-extfile", f"{name}.ext", "-out", f"{name}.crt", cwd=d)

    issue("server", "/CN=aggregator", "DNS:aggregator.fedge.svc", "serverAuth")
    for i in range(AGENTS):
        issue(f"agent-{i}", f"/CN=agent-{i}", f"URI:urn:fedge:agent:agent-{i}", "clientAuth")


@unittest.skipUnless(os.path.exists(os.path.join(MODEL, "model.safetensors")),
                     f"model not found at {MODEL}: run scripts/fetch-model.sh")
class MutualTlsDialTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="fedge-mtls-")
        cls.pki = os.path.join(cls.tmp, "pki")
        os.makedirs(cls.pki)
        make_pki(cls.pki)
        with open(os.path.join(cls.pki, "tokens"), "w") as f:
            f.writelines(f"agent-{i} token-{i}\n" for i in range(AGENTS))
        data = os.path.join(cls.tmp, "data")
        out = subprocess.run([FEDGE, "data", "wordnet", "--agents", str(AGENTS), "--alpha", "0.5", "--seed", "3",
                              "--test-size", "50", "--max-train", "200", "--out", data],
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        with open(os.path.join(data, "meta.json")) as f:
            labels = json.load(f)["labels"]
        cls.data = data
        cls.job = os.path.join(cls.tmp, "job.yaml")
        with open(cls.job, "w") as f:
            f.write(JOB_TEMPLATE.format(name="mtls-dial", model=MODEL, data=data, agents=AGENTS, rounds=2,
                                        steps=2, labels=json.dumps(labels), compression="{codec: int8}"))

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def spawn(self, name, argv):
        log = open(os.path.join(self.tmp, f"{name}.log"), "w")
        self.addCleanup(log.close)
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        self.addCleanup(lambda: proc.poll() is None and proc.kill())
        return proc

    def log_tail(self, name, n=15):
        with open(os.path.join(self.tmp, f"{name}.log")) as f:
            return "".join(f.readlines()[-n:])

    def test_agents_started_first_join_within_their_backoff(self):
        grpc_port, http_port = free_port(), free_port()
        p = lambda f: os.path.join(self.pki, f)  # noqa: E731
        agents = []
        for i in range(AGENTS):
            agents.append(self.spawn(f"agent-{i}", [
                AGENT, "--config", self.job, "--aggregator", f"127.0.0.1:{grpc_port}", "--agent-id", f"agent-{i}",
                "--token", f"token-{i}", "--data-dir", os.path.join(self.data, f"agent-{i}"),
                "--http", f"127.0.0.1:{free_port()}", "--state-dir", os.path.join(self.tmp, f"state-{i}"),
                "--tls-ca", p("ca.crt"), "--tls-server-name", "aggregator.fedge.svc",
                "--tls-cert", p(f"agent-{i}.crt"), "--tls-key", p(f"agent-{i}.key"), "--exit-when-done"]))
        time.sleep(WAIT_BEFORE_AGGREGATOR_S)
        for i, a in enumerate(agents):
            self.assertIsNone(a.poll(), f"agent-{i} exited while the aggregator was away:\n{self.log_tail(f'agent-{i}')}")
        agg = self.spawn("aggregator", [
            AGGREGATOR, "--config", self.job, "--listen", f"127.0.0.1:{grpc_port}", "--http",
            f"127.0.0.1:{http_port}", "--checkpoint-dir", os.path.join(self.tmp, "ckpt"),
            "--tokens-file", p("tokens"), "--tls-cert", p("server.crt"), "--tls-key", p("server.key"),
            "--tls-client-ca", p("ca.crt")])
        started = time.monotonic()

        def joined():
            try:
                code, text = http("GET", f"http://127.0.0.1:{http_port}/v1/status", timeout=2)
            except OSError:
                return None
            return code == 200 and json.loads(text).get("agents_joined", 0) >= AGENTS

        try:
            wait_for(joined, 60, f"{AGENTS} agents to join", [("aggregator", agg)])
        except AssertionError:
            tails = "\n".join(f"--- agent-{i}\n{self.log_tail(f'agent-{i}')}" for i in range(AGENTS))
            raise AssertionError(f"agents did not join within 60 s of the aggregator starting:\n{tails}")
        secs = time.monotonic() - started
        print(f"\n[mtls] {AGENTS} agents joined {secs:.1f} s after the aggregator started", flush=True)
        # The agents' retry backoff is capped at 10 s (+ jitter); the aggregator needs ~1 s to serve.
        self.assertLess(secs, 15.0, "agents over mutual TLS joined late (before the fix: one after ~46 s, one not in 60 s)")
        for i, a in enumerate(agents):
            self.assertEqual(a.wait(timeout=300), 0, self.log_tail(f"agent-{i}"))
        text = open(os.path.join(self.tmp, "aggregator.log")).read()
        self.assertIn('msg="job succeeded"', text, self.log_tail("aggregator"))


if __name__ == "__main__":
    unittest.main()
