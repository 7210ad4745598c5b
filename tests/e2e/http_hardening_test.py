"""Slow and oversized HTTP clients against the real fedge-aggregator and fedge-agent
binaries on loopback (issue 10, items 1 and 2).

Before the Beast-based server, ~40 connections that sent headers with
`Content-Length: 100` and one body byte blocked every cpprest thread: /healthz,
/readyz, /metrics and /v1/classify stopped answering even after the clients left,
and SIGTERM hung. Here 250 such connections plus 250 half-sent header blocks are
held open while the probes, /metrics and inference must answer within 1 s, an
oversized chunked body must be refused while it streams, and SIGTERM must end the
process within 5 s.

Run by ctest (label e2e) with FEDGE_SOURCE_DIR and FEDGE_BINARY_DIR set.
"""
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import unittest
import urllib.error

from local_job_test import AGENT, AGGREGATOR, FEDGE, JOB_TEMPLATE, MODEL, free_port, http, wait_for

SLOW_BODIES = 250
SLOW_HEADERS = 250


def raise_fd_limit():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, 4096)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def open_slow_clients(port, path):
    socks = []
    for _ in range(SLOW_BODIES):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nx".encode())
        socks.append(s)
    for _ in range(SLOW_HEADERS):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: ")
        socks.append(s)
    return socks


def answers(url):
    """The status of GET url, or None while nothing listens there yet."""
    try:
        return http("GET", url, timeout=2)[0]
    except (OSError, urllib.error.URLError):
        return None


def timed(method, url, body=None):
    t0 = time.monotonic()
    code, text = http(method, url, body, timeout=5)
    return code, text, time.monotonic() - t0


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def chunked_flood(port, path, total_bytes):
    """Sends a chunked body of up to total_bytes; returns (bytes sent, response head)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".encode())
    chunk = b"10000\r\n" + b"z" * 0x10000 + b"\r\n"
    sent = 0
    try:
        while sent < total_bytes:
            s.sendall(chunk)
            sent += 0x10000
    except (BrokenPipeError, ConnectionResetError):
        pass
    try:
        head = s.recv(4096).decode(errors="replace")
    except (ConnectionResetError, socket.timeout):
        head = ""
    s.close()
    return sent, head


def sigterm_seconds(proc):
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return float("inf")
    return time.monotonic() - t0


@unittest.skipUnless(os.path.exists(os.path.join(MODEL, "model.safetensors")),
                     f"model not found at {MODEL}: run scripts/fetch-model.sh")
class HttpHardeningTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        raise_fd_limit()
        cls.tmp = tempfile.mkdtemp(prefix="fedge-http-")
        data = os.path.join(cls.tmp, "data")
        out = subprocess.run([FEDGE, "data", "wordnet", "--agents", "1", "--alpha", "0.5", "--seed", "3",
                              "--test-size", "50", "--max-train", "200", "--out", data],
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        with open(os.path.join(data, "meta.json")) as f:
            labels = json.load(f)["labels"]
        cls.job = os.path.join(cls.tmp, "job.yaml")
        with open(cls.job, "w") as f:
            # Many rounds: the job must still be running while the test attacks it.
            f.write(JOB_TEMPLATE.format(name="http-hardening", model=MODEL, data=data, agents=1, rounds=50,
                                        steps=2, labels=json.dumps(labels), compression="{codec: int8}"))
        cls.agent_data = os.path.join(data, "agent-0")

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def start_aggregator(self):
        grpc_port, http_port = free_port(), free_port()
        log = open(os.path.join(self.tmp, "aggregator.log"), "w")
        self.addCleanup(log.close)
        proc = subprocess.Popen([AGGREGATOR, "--config", self.job, "--listen", f"127.0.0.1:{grpc_port}",
                                 "--http", f"127.0.0.1:{http_port}",
                                 "--checkpoint-dir", os.path.join(self.tmp, "ckpt")],
                                stdout=log, stderr=subprocess.STDOUT)
        self.addCleanup(lambda: proc.poll() is None and proc.kill())
        wait_for(lambda: answers(f"http://127.0.0.1:{http_port}/healthz") == 200, 30, "aggregator /healthz",
                 [("aggregator", proc)])
        return proc, grpc_port, http_port

    def assert_serving_under_attack(self, http_port, probes, post=None):
        for path in probes:
            code, text, secs = timed("GET", f"http://127.0.0.1:{http_port}{path}")
            self.assertIn(code, (200, 503), f"{path}: {code} {text[:200]}")  # /readyz may say not ready
            self.assertLess(secs, 1.0, f"{path} took {secs:.2f}s under attack")
        if post:
            path, body = post
            code, text, secs = timed("POST", f"http://127.0.0.1:{http_port}{path}", body)
            self.assertEqual(code, 200, f"{path}: {text[:300]}")
            self.assertLess(secs, 1.0, f"{path} took {secs:.2f}s under attack")

    def test_aggregator_survives_slow_clients_and_floods(self):
        proc, _, http_port = self.start_aggregator()
        socks = open_slow_clients(http_port, "/v1/status")
        try:
            self.assert_serving_under_attack(http_port, ["/healthz", "/readyz", "/metrics", "/v1/status"])
            before = rss_kib(proc.pid)
            sent, head = chunked_flood(http_port, "/v1/status", 100 << 20)
            self.assertTrue(head.startswith("HTTP/1.1 4"), head[:200])
            self.assertLess(sent, 100 << 20, "the aggregator read a 100 MiB chunked body")
            self.assertLess(rss_kib(proc.pid) - before, 64 << 10, "RSS grew by more than 64 MiB")
            secs = sigterm_seconds(proc)
        finally:
            for s in socks:
                s.close()
        self.assertLess(secs, 5.0, "SIGTERM with 500 slow clients connected")

    def test_agent_survives_slow_clients_and_floods(self):
        agg, grpc_port, _ = self.start_aggregator()
        agent_http = free_port()
        log = open(os.path.join(self.tmp, "agent.log"), "w")
        self.addCleanup(log.close)
        agent = subprocess.Popen([AGENT, "--config", self.job, "--aggregator", f"127.0.0.1:{grpc_port}",
                                  "--agent-id", "agent-0", "--data-dir", self.agent_data,
                                  "--http", f"127.0.0.1:{agent_http}",
                                  "--state-dir", os.path.join(self.tmp, "agent-state")],
                                 stdout=log, stderr=subprocess.STDOUT)
        self.addCleanup(lambda: agent.poll() is None and agent.kill())
        # Ready once it holds a global model and can classify.
        wait_for(lambda: answers(f"http://127.0.0.1:{agent_http}/readyz") == 200, 300, "agent /readyz",
                 [("agent", agent), ("aggregator", agg)])
        socks = open_slow_clients(agent_http, "/v1/classify")
        try:
            self.assert_serving_under_attack(agent_http, ["/healthz", "/readyz", "/metrics"],
                                             post=("/v1/classify", {"input": "oak: a deciduous tree"}))
            before = rss_kib(agent.pid)
            sent, head = chunked_flood(agent_http, "/v1/classify", 100 << 20)
            self.assertTrue(head.startswith("HTTP/1.1 413"), head[:200])
            self.assertLess(sent, 100 << 20, "the agent read a 100 MiB chunked body")
            self.assertLess(rss_kib(agent.pid) - before, 64 << 10, "RSS grew by more than 64 MiB")
            secs = sigterm_seconds(agent)
        finally:
            for s in socks:
                s.close()
        self.assertLess(secs, 5.0, "SIGTERM with 500 slow clients connected")
        sigterm_seconds(agg)


if __name__ == "__main__":
    unittest.main()
