"""Mutual TLS between real binaries: agents that dial the aggregator before it listens,
and `fedge run` with privacy.tls.

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

`fedge run` with `privacy.tls: true` makes its own CA and certificates (WORK/pki); the
second test checks what reaches the run's gRPC port: plaintext and a TLS client without
a certificate of the run's CA are refused, a client with an agent's certificate gets
HTTP/2.

Run by ctest (label e2e) with FEDGE_SOURCE_DIR and FEDGE_BINARY_DIR set.
"""
import json
import os
import re
import shutil
import signal
import socket
import ssl
import stat
import struct
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

    def test_fedge_run_with_privacy_tls_serves_grpc_only_over_mutual_tls(self):
        job = os.path.join(self.tmp, "run-tls.yaml")
        with open(self.job) as f:
            text = f.read().replace("name: mtls-dial", "name: run-tls")
        with open(job, "w") as f:
            f.write(text + "  privacy:\n    tls: true\n")
        work = os.path.join(self.tmp, "run-tls")
        out_path = os.path.join(self.tmp, "run-tls.out")
        out = open(out_path, "w")
        self.addCleanup(out.close)
        run = subprocess.Popen([FEDGE, "run", "-f", job, "--model-dir", MODEL, "--work-dir", work, "--serve",
                                "--quiet"], stdout=out, stderr=subprocess.STDOUT)
        self.addCleanup(lambda: run.poll() is None and run.kill())

        def printed():
            with open(out_path) as f:
                return f.read()

        wait_for(lambda: "serving the final global model" in printed(), 300, "the TLS run to succeed and serve",
                 [("fedge run", run)])
        banner = re.search(r"grpc  127\.0\.0\.1:(\d+), mutual TLS", printed())
        self.assertIsNotNone(banner, printed())
        port = int(banner.group(1))
        pki = os.path.join(work, "pki")
        self.assertEqual(stat.S_IMODE(os.stat(pki).st_mode), 0o700)
        for key in ("aggregator.key", "agent-0.key", "agent-1.key"):
            self.assertEqual(stat.S_IMODE(os.stat(os.path.join(pki, key)).st_mode), 0o600, key)
        self.assertFalse(os.path.exists(os.path.join(pki, "ca.key")))

        settings_frame = 4  # HTTP/2 frame type of the server's first frame
        preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + struct.pack(">I", 0)[1:] + bytes([settings_frame, 0]) + \
            struct.pack(">I", 0)

        def first_frame_type(sock):
            sock.settimeout(10)
            try:
                sock.sendall(preface)
                head = b""
                while len(head) < 9:
                    chunk = sock.recv(9 - len(head))
                    if not chunk:
                        return None
                    head += chunk
                return head[3]
            except (ssl.SSLError, ConnectionError, socket.timeout):
                return None

        def tls_client(cert=None):
            ctx = ssl.create_default_context(cafile=os.path.join(pki, "ca.crt"))
            ctx.set_alpn_protocols(["h2"])
            if cert:
                ctx.load_cert_chain(os.path.join(pki, f"{cert}.crt"), os.path.join(pki, f"{cert}.key"))
            return ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10),
                                   server_hostname="localhost")

        # An agent's certificate: the server's chain and name verify against the run's CA, h2 is served.
        with tls_client("agent-0") as s:
            self.assertEqual(s.selected_alpn_protocol(), "h2")
            self.assertEqual(first_frame_type(s), settings_frame)
        # Plaintext HTTP/2 gets no HTTP/2 answer.
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            self.assertNotEqual(first_frame_type(s), settings_frame)
        # TLS without a client certificate: refused (the alert arrives on the first read).
        try:
            with tls_client() as s:
                self.assertNotEqual(first_frame_type(s), settings_frame)
        except (ssl.SSLError, ConnectionError):
            pass
        # A certificate of another CA (this class's own PKI): refused in the handshake.
        other = ssl.create_default_context(cafile=os.path.join(pki, "ca.crt"))
        other.load_cert_chain(os.path.join(self.pki, "agent-0.crt"), os.path.join(self.pki, "agent-0.key"))
        other.set_alpn_protocols(["h2"])
        try:
            with other.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10),
                                   server_hostname="localhost") as s:
                self.assertNotEqual(first_frame_type(s), settings_frame)
        except (ssl.SSLError, ConnectionError):
            pass

        run.send_signal(signal.SIGINT)
        self.assertEqual(run.wait(timeout=60), 0, printed())


if __name__ == "__main__":
    unittest.main()
