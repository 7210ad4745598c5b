#!/usr/bin/env python3
"""Concurrent /v1/classify throughput, batched vs one request per forward pass
(issue 13 item 2): the done-when figure "concurrent classify throughput at
1/4/8 clients (batched vs one at a time, a ratio)".

Starts two real serving setups side by side on loopback, each a
fedge-aggregator and one fedge-agent with the real all-MiniLM-L6-v2 weights
and WordNet data (`fedge data wordnet`), running a one-round job; the agents
keep serving after it. They differ only in the scheduler's flags:
  batched:   --max-batch-size 16 (the default)
  unbatched: --max-batch-size 1  (every request its own forward pass, in
             arrival order: the serving before the scheduler)
For each of --repeats rounds, each client count (default 1, 4, 8) and each
setup, interleaved, N client threads loop POST /v1/classify (one WordNet text
per request, keep-alive) for --seconds after --warmup seconds. Per point the
median over the repeats of requests/s is printed, with p50 and p99 latency over
all of its measured requests; the agent's own batch-size histogram gives the
mean requests per forward pass. The ratio is batched / unbatched requests per
second (medians). The machine is shared: interleaving puts both setups under
the same background load, the repeats show how much it moved.

Usage (from the repo root, after building fedge, fedge-agent, fedge-aggregator):
  nice -n 10 python3 bench/serving/batch_bench.py [--clients 1,4,8] [--seconds 15] [--threads 1]

Exits 1 if any request failed or if an answer under load differed from the
same agent's answer to that text alone, sent before the load (batching must
not change answers beyond float noise: same label, scores within 1e-4). The
two setups train their own one-round globals, so they are not compared with
each other.
"""
import argparse
import http.client as httpclient
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests", "e2e"))
from local_job_test import AGENT, AGGREGATOR, FEDGE, JOB_TEMPLATE, MODEL, free_port, http, wait_for  # noqa: E402


def percentile(values, q):
    """Nearest-rank percentile (q in [0, 100]) of a non-empty list."""
    s = sorted(values)
    k = max(0, min(len(s) - 1, int(-(-q * len(s) // 100)) - 1))
    return s[k]


class Client(threading.Thread):
    """Loops POST /v1/classify on one keep-alive connection until `stop`;
    records (start, latency, status) and the answer per text."""

    def __init__(self, idx, port, texts, stop, answers):
        super().__init__(daemon=True)
        self.idx, self.port, self.texts, self.stop, self.answers = idx, port, texts, stop, answers
        self.records = []

    def run(self):
        conn = None
        i = self.idx * 13
        while not self.stop.is_set():
            text = self.texts[i % len(self.texts)]
            i += 1
            body = json.dumps({"input": text})
            t0 = time.perf_counter()
            status, data = 0, b""
            try:
                if conn is None:
                    conn = httpclient.HTTPConnection("127.0.0.1", self.port, timeout=60)
                conn.request("POST", "/v1/classify", body, {"Content-Type": "application/json"})
                resp = conn.getresponse()
                data = resp.read()
                status = resp.status
            except Exception as e:  # counted as a failure
                data = f"{type(e).__name__}: {e}".encode()
                if conn is not None:
                    conn.close()
                conn = None
            latency = time.perf_counter() - t0
            self.records.append((t0, latency, status))
            if status == 200:
                d = json.loads(data)["data"][0]
                self.answers.append((text, json.loads(data)["model"], d["label"], d["scores"]))
            elif status != 200:
                self.records[-1] = (t0, latency, status, data[:200].decode(errors="replace"))
        if conn is not None:
            conn.close()


def metric_sum(port, name):
    """(sum, count) of an unlabelled histogram on the agent's /metrics."""
    code, body = http("GET", f"http://127.0.0.1:{port}/metrics", timeout=10)
    total = count = 0.0
    for line in body.splitlines():
        if line.startswith(name + "_sum "):
            total = float(line.split()[1])
        elif line.startswith(name + "_count "):
            count = float(line.split()[1])
    return total, count


def run_load(port, clients, texts, warmup, seconds, answers):
    stop = threading.Event()
    threads = [Client(c, port, texts, stop, answers) for c in range(clients)]
    for t in threads:
        t.start()
    time.sleep(warmup)
    r0, n0 = metric_sum(port, "fedge_agent_inference_batch_requests")
    t_begin = time.perf_counter()
    time.sleep(seconds)
    t_end = time.perf_counter()
    r1, n1 = metric_sum(port, "fedge_agent_inference_batch_requests")
    stop.set()
    for t in threads:
        t.join(timeout=120)
    window = [r for t in threads for r in t.records if t_begin <= r[0] and r[0] + r[1] <= t_end]
    failed = [r for t in threads for r in t.records if r[2] != 200]
    lat = [r[1] for r in window if r[2] == 200]
    return {
        "requests": len(lat),
        "rps": len(lat) / (t_end - t_begin),
        "p50_ms": percentile(lat, 50) * 1000 if lat else float("nan"),
        "p99_ms": percentile(lat, 99) * 1000 if lat else float("nan"),
        "failed": len(failed),
        "failures": [r[3] if len(r) > 3 else f"status {r[2]}" for r in failed[:3]],
        "latencies": lat,
        "mean_batch_requests": (r1 - r0) / (n1 - n0) if n1 > n0 else float("nan"),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", default="1,4,8", help="comma-separated client counts")
    ap.add_argument("--seconds", type=float, default=15.0, help="measured seconds per point")
    ap.add_argument("--warmup", type=float, default=2.0, help="seconds of load before measuring")
    ap.add_argument("--threads", type=int, default=1, help="fedge-agent --threads (torch intra-op)")
    ap.add_argument("--max-batch-size", type=int, default=16, help="the batched agent's --max-batch-size")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved rounds over every point")
    ap.add_argument("--gather-window-us", type=int, help="the batched agent's --batch-gather-window-us "
                    "(default: the agent's)")
    ap.add_argument("--keep", action="store_true", help="keep the work dir (logs)")
    ap.add_argument("--json", help="write the summary here")
    args = ap.parse_args()
    counts = [int(c) for c in args.clients.split(",")]

    for path in (FEDGE, AGGREGATOR, AGENT, os.path.join(MODEL, "model.safetensors")):
        if not os.path.exists(path):
            sys.exit(f"missing {path}: build fedge, fedge-agent and fedge-aggregator; run scripts/fetch-model.sh")

    tmp = tempfile.mkdtemp(prefix="fedge-batch-")
    data = os.path.join(tmp, "data")
    out = subprocess.run([FEDGE, "data", "wordnet", "--agents", "1", "--alpha", "0.5", "--seed", "3",
                          "--test-size", "400", "--max-train", "300", "--out", data],
                         capture_output=True, text=True, timeout=300)
    if out.returncode != 0:
        sys.exit(out.stderr)
    with open(os.path.join(data, "meta.json")) as f:
        labels = json.load(f)["labels"]
    with open(os.path.join(data, "test.jsonl")) as f:
        texts = [json.loads(line)["text"] for line in f if line.strip()][:200]  # each has a reference answer

    procs, logs = [], []

    def spawn(name, argv):
        log = open(os.path.join(tmp, f"{name}.log"), "w")
        logs.append(log)
        p = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        procs.append((name, p))
        return p

    setups = {"batched": args.max_batch_size, "unbatched": 1}
    ports, aggregators = {}, {}
    for mode, batch in setups.items():
        job = os.path.join(tmp, f"job-{mode}.yaml")
        with open(job, "w") as f:
            f.write(JOB_TEMPLATE.format(name=f"batch-{mode}", model=MODEL, data=data, agents=1, rounds=1, steps=2,
                                        labels=json.dumps(labels), compression="{codec: int8}"))
        grpc_port, agg_http, port = free_port(), free_port(), free_port()
        spawn(f"aggregator-{mode}", [AGGREGATOR, "--config", job, "--listen", f"127.0.0.1:{grpc_port}", "--http",
                                     f"127.0.0.1:{agg_http}", "--checkpoint-dir", os.path.join(tmp, f"ckpt-{mode}"),
                                     "--expected-agents", "1"])
        spawn(f"agent-{mode}", [AGENT, "--config", job, "--aggregator", f"127.0.0.1:{grpc_port}", "--agent-id",
                                f"agent-{mode}", "--node-name", "node-0", "--data-dir", os.path.join(data, "agent-0"),
                                "--model-dir", MODEL, "--http", f"127.0.0.1:{port}", "--threads", str(args.threads),
                                "--state-dir", os.path.join(tmp, f"state-{mode}"), "--log-format", "json",
                                "--max-batch-size", str(batch)] +
              (["--batch-gather-window-us", str(args.gather_window_us)]
               if args.gather_window_us is not None and mode == "batched" else []))
        ports[mode] = port
        aggregators[mode] = agg_http

    results, probe = {}, {1: float("nan"), 8: float("nan")}
    answers = {"batched": [], "unbatched": []}  # (text, model, label, scores) of every answer under load
    bad = []
    try:
        for mode, port in ports.items():
            def ready(port=port):
                try:
                    return http("GET", f"http://127.0.0.1:{port}/readyz", timeout=5)[0] == 200
                except Exception:
                    return False
            wait_for(ready, 900, f"the {mode} agent's /readyz", procs)
        # The job's last global installed: answers no longer change version.
        for mode, agg in aggregators.items():
            def job_done(agg=agg):
                try:
                    code, body = http("GET", f"http://127.0.0.1:{agg}/v1/status", timeout=5)
                except Exception:
                    return False
                return code == 200 and json.loads(body).get("state") in ("Succeeded", "Failed")
            wait_for(job_done, 900, f"the {mode} job to finish", procs)
        # Each agent's answers to the texts, one request at a time, before any load.
        versions = {}
        reference = {}
        for mode, port in ports.items():
            reference[mode] = {}
            for text in texts[:200]:
                code, body = http("POST", f"http://127.0.0.1:{port}/v1/classify", {"input": text}, timeout=60)
                if code != 200:
                    sys.exit(f"{mode}: {code} {body[:200]}")
                reply = json.loads(body)
                d = reply["data"][0]
                reference[mode][text] = (d["label"], d["scores"])
                versions.setdefault(mode, set()).add(reply["model"])
        # The model alone: one client, one request at a time, k texts per request (one
        # Classify call of k texts) on the unbatched agent: texts/s at k = 1 vs 8 is what
        # batching can gain inside the model on this CPU, without HTTP or scheduling.
        probe = {}
        for k in (1, 8, 1, 8):
            t0, n = time.perf_counter(), 0
            while time.perf_counter() - t0 < args.seconds / 2:
                chunk = [texts[(n * k + j) % len(texts)] for j in range(k)]
                code, body = http("POST", f"http://127.0.0.1:{ports['unbatched']}/v1/classify", {"input": chunk},
                                  timeout=60)
                if code != 200:
                    sys.exit(f"probe: {code} {body[:200]}")
                n += 1
            probe.setdefault(k, []).append(n * k / (time.perf_counter() - t0))
        probe = {k: max(v) for k, v in probe.items()}
        print(f"  model probe (one client, k texts per request): k=1 {probe[1]:.1f} texts/s, k=8 {probe[8]:.1f} "
              f"texts/s: x{probe[8] / probe[1]:.2f}", flush=True)
        for rep in range(args.repeats):
            for n in counts:
                for mode in ("unbatched", "batched") if rep % 2 == 0 else ("batched", "unbatched"):
                    r = run_load(ports[mode], n, texts, args.warmup, args.seconds, answers[mode])
                    results.setdefault((mode, n), []).append(r)
                    print(f"  round {rep + 1}: {mode:9s} {n} clients: {r['rps']:7.1f} req/s  p50 {r['p50_ms']:7.1f} ms  "
                          f"p99 {r['p99_ms']:7.1f} ms  mean batch {r['mean_batch_requests']:.2f} requests  "
                          f"failed {r['failed']}", flush=True)
                    if r["failed"]:
                        bad.append(f"{mode} at {n} clients: {r['failed']} failed requests, e.g. {r['failures']}")
    finally:
        for name, p in procs:
            if p.poll() is None:
                p.terminate()
        for name, p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        for log in logs:
            log.close()

    # Under load (batched with other clients' texts) a text must get the answer it got alone.
    compared = 0
    for mode in ("batched", "unbatched"):
        for text, model, label, scores in answers[mode]:
            want = reference.get(mode, {}).get(text)
            if want is None:
                continue
            if {model} != versions.get(mode):
                bad.append(f"{mode}: answered by {model} under load, by {sorted(versions.get(mode, []))} alone")
                continue
            compared += 1
            if want[0] != label or any(abs(scores.get(k, -1) - v) > 1e-4 for k, v in want[1].items()):
                bad.append(f"{mode}: {text[:60]!r} got {label} under load, {want[0]} alone")

    print()
    print(f"/v1/classify, one text per request, MiniLM-L6 (real weights), fedge-agent --threads {args.threads}, "
          f"{args.seconds:g} s per point after {args.warmup:g} s warm-up, {args.repeats} interleaved rounds "
          f"(median req/s; p50/p99 over all rounds' requests), {os.cpu_count()} CPUs shared with the client "
          f"threads; load average at the end {os.getloadavg()[0]:.1f}")
    print(f"{'clients':>7} | {'unbatched req/s':>15} {'p50 ms':>7} {'p99 ms':>7} | {'batched req/s':>13} "
          f"{'p50 ms':>7} {'p99 ms':>7} {'batch':>5} | {'ratio':>5}")
    summary = []

    def median(xs):
        xs = sorted(xs)
        return xs[len(xs) // 2] if len(xs) % 2 else (xs[len(xs) // 2 - 1] + xs[len(xs) // 2]) / 2

    def pooled(mode, n):
        runs = results[(mode, n)]
        lat = [r for run in runs for r in run["latencies"]]
        return {"rps": median([run["rps"] for run in runs]), "rps_runs": [round(run["rps"], 1) for run in runs],
                "p50_ms": percentile(lat, 50) * 1000 if lat else float("nan"),
                "p99_ms": percentile(lat, 99) * 1000 if lat else float("nan"),
                "mean_batch_requests": median([run["mean_batch_requests"] for run in runs])}

    for n in counts:
        u, b = pooled("unbatched", n), pooled("batched", n)
        ratio = b["rps"] / u["rps"] if u["rps"] else float("nan")
        print(f"{n:>7} | {u['rps']:>15.1f} {u['p50_ms']:>7.1f} {u['p99_ms']:>7.1f} | {b['rps']:>13.1f} "
              f"{b['p50_ms']:>7.1f} {b['p99_ms']:>7.1f} {b['mean_batch_requests']:>5.2f} | {ratio:>5.2f}")
        summary.append({"clients": n, "unbatched": u, "batched": b, "ratio_rps": ratio,
                        "ratio_p99": b["p99_ms"] / u["p99_ms"] if u["p99_ms"] else float("nan")})
    print("req/s per round (unbatched / batched): " + "; ".join(
        f"{p['clients']} clients {p['unbatched']['rps_runs']} / {p['batched']['rps_runs']}" for p in summary))
    print(f"answers under load compared with the same agent's answer alone: {compared}")
    print(f"model probe: one request of 8 texts vs 8 requests of 1, one client: texts/s x{probe[8] / probe[1]:.2f} "
          f"({probe[1]:.1f} -> {probe[8]:.1f})")
    if args.json:
        with open(args.json, "w") as f:
            for p in summary:
                for mode in ("unbatched", "batched"):
                    p[mode].pop("latencies", None)
            json.dump({"threads": args.threads, "seconds": args.seconds, "repeats": args.repeats, "points": summary,
                       "probe_texts_per_s": probe,
                       "compared": compared, "problems": bad}, f, indent=2)
    if args.keep:
        print(f"work dir kept: {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    if bad:
        print("FAILED:\n  " + "\n  ".join(bad))
        sys.exit(1)


if __name__ == "__main__":
    main()
