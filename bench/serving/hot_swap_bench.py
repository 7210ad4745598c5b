#!/usr/bin/env python3
"""Hot swap under load (issue 13 item 4): latency of /v1/classify while the
agent installs new globals, against steady state, in one run.

Starts the real fedge-aggregator and real fedge-agent binaries on loopback with
the real all-MiniLM-L6-v2 weights and WordNet data (`fedge data wordnet`), runs
a job with enough rounds that several globals are installed while N client
threads (default 8) loop POST /v1/classify on agent-0 over keep-alive
connections, and a prober GETs /readyz every 200 ms.

Per request it records start/end (wall clock), latency, HTTP status and the
global version that answered (the response's "model": "<job>@v<N>"). Installs
come from agent-0's own log ("global installed": timestamp, install_seconds,
version). A request overlaps an install if its [start, end] meets
[install start - W, install end + W] (W = --window, 1 s); every other request
after the warm-up is steady state. Both are measured in the same run, on the
same busy machine, so the ratio p99_install / p99_steady is the figure.

Usage (from the repo root, after building fedge, fedge-agent, fedge-aggregator):
  python3 bench/serving/hot_swap_bench.py [--clients 8] [--rounds 14] [--agents 1]

Exits 1 if any request failed or stalled (no answer within --stall-seconds), if
fewer than --min-installs installs were seen under load, or (with --check) if
the ratio is above 2. Figures are printed only from this run.
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
from datetime import datetime, timezone

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests", "e2e"))
from local_job_test import AGENT, AGGREGATOR, FEDGE, JOB_TEMPLATE, MODEL, free_port, http, wait_for  # noqa: E402


def percentile(values, q):
    """Nearest-rank percentile (q in [0, 100]) of a non-empty list."""
    s = sorted(values)
    k = max(0, min(len(s) - 1, int(-(-q * len(s) // 100)) - 1))
    return s[k]


def parse_ts(ts):
    return datetime.strptime(ts, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc).timestamp()


def read_installs(log_path):
    """([(version, start, end, fetch_seconds)], [load times]) from the agent's
    JSON log, wall-clock seconds. A "text classifier loaded" line after start-up
    is a spare serving instance the ServingModel's factory built for an install."""
    installs, loads = [], []
    with open(log_path, errors="replace") as f:
        for line in f:
            line = line.strip()
            if not line.startswith("{"):
                continue
            try:
                j = json.loads(line)
            except ValueError:
                continue
            if j.get("msg") == "text classifier loaded":
                loads.append(parse_ts(j["ts"]))
            if j.get("msg") != "global installed":
                continue
            end = parse_ts(j["ts"])
            installs.append((int(j["version"]), end - float(j["install_seconds"]), end,
                             float(j.get("fetch_seconds", 0))))
    return installs, loads


class Client(threading.Thread):
    """Loops POST /v1/classify on one keep-alive connection until `stop`."""

    def __init__(self, idx, port, texts, stop, stall_seconds, records, lock):
        super().__init__(daemon=True)
        self.idx, self.port, self.texts, self.stop = idx, port, texts, stop
        self.stall_seconds, self.records, self.lock = stall_seconds, records, lock

    def run(self):
        conn = None
        i = self.idx
        while not self.stop.is_set():
            body = json.dumps({"input": self.texts[i % len(self.texts)]})
            i += 7
            t0, p0 = time.time(), time.perf_counter()
            status, version, error = 0, None, ""
            try:
                if conn is None:
                    conn = httpclient.HTTPConnection("127.0.0.1", self.port, timeout=self.stall_seconds)
                conn.request("POST", "/v1/classify", body, {"Content-Type": "application/json"})
                resp = conn.getresponse()
                data = resp.read()
                status = resp.status
                if status == 200:
                    model = json.loads(data)["model"]
                    version = int(model.rsplit("@v", 1)[1])
                else:
                    error = data[:200].decode(errors="replace")
                if resp.getheader("Connection", "").lower() == "close":
                    conn.close()
                    conn = None
            except Exception as e:  # a stall (timeout) or a broken connection: both are failures
                error = f"{type(e).__name__}: {e}"
                if conn is not None:
                    conn.close()
                conn = None
            latency = time.perf_counter() - p0
            if error:
                self.stop.wait(0.05)  # do not spin on a refused connection
            with self.lock:
                self.records.append({"client": self.idx, "start": t0, "end": t0 + latency, "latency": latency, "status": status,
                                     "version": version, "error": error})
        if conn is not None:
            conn.close()


class ReadyzProber(threading.Thread):
    def __init__(self, port, stop):
        super().__init__(daemon=True)
        self.port, self.stop, self.latencies, self.failures = port, stop, [], 0

    def run(self):
        while not self.stop.wait(0.2):
            p0 = time.perf_counter()
            try:
                code, _ = http("GET", f"http://127.0.0.1:{self.port}/readyz", timeout=10)
            except Exception:
                code = 0
            self.latencies.append(time.perf_counter() - p0)
            if code != 200:
                self.failures += 1


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--agents", type=int, default=1, help="agents in the job; agent-0 takes the load")
    ap.add_argument("--rounds", type=int, default=14)
    ap.add_argument("--steps", type=int, default=4, help="spec.rounds.localSteps")
    ap.add_argument("--threads", type=int, default=1, help="fedge-agent --threads")
    ap.add_argument("--window", type=float, default=1.0, help="seconds either side of an install")
    ap.add_argument("--warmup", type=float, default=3.0, help="seconds of load discarded at the start")
    ap.add_argument("--stall-seconds", type=float, default=10.0)
    ap.add_argument("--min-installs", type=int, default=3)
    ap.add_argument("--check", action="store_true", help="exit 1 if p99_install / p99_steady > 2")
    ap.add_argument("--keep", action="store_true", help="keep the work dir (logs, records.json)")
    ap.add_argument("--json", help="write the summary here")
    args = ap.parse_args()

    for path in (FEDGE, AGGREGATOR, AGENT, os.path.join(MODEL, "model.safetensors")):
        if not os.path.exists(path):
            sys.exit(f"missing {path}: build fedge, fedge-agent and fedge-aggregator; run scripts/fetch-model.sh")

    tmp = tempfile.mkdtemp(prefix="fedge-hotswap-")
    data = os.path.join(tmp, "data")
    out = subprocess.run([FEDGE, "data", "wordnet", "--agents", str(args.agents), "--alpha", "0.5", "--seed", "3",
                          "--test-size", "100", "--max-train", "2000", "--out", data],
                         capture_output=True, text=True, timeout=300)
    if out.returncode != 0:
        sys.exit(out.stderr)
    with open(os.path.join(data, "meta.json")) as f:
        labels = json.load(f)["labels"]
    texts = []
    with open(os.path.join(data, "test.jsonl")) as f:
        texts = [json.loads(line)["text"] for line in f if line.strip()]
    job = os.path.join(tmp, "job.yaml")
    with open(job, "w") as f:
        f.write(JOB_TEMPLATE.format(name="hot-swap", model=MODEL, data=data, agents=args.agents, rounds=args.rounds,
                                    steps=args.steps, labels=json.dumps(labels), compression="{codec: int8}"))

    grpc_port, agg_http = free_port(), free_port()
    procs, logs = [], []

    def spawn(name, argv):
        log = open(os.path.join(tmp, f"{name}.log"), "w")
        logs.append(log)
        p = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        procs.append((name, p))
        return p

    spawn("aggregator", [AGGREGATOR, "--config", job, "--listen", f"127.0.0.1:{grpc_port}", "--http",
                         f"127.0.0.1:{agg_http}", "--checkpoint-dir", os.path.join(tmp, "ckpt"),
                         "--expected-agents", str(args.agents)])
    agent_port = free_port()
    for i in range(args.agents):
        port = agent_port if i == 0 else free_port()
        spawn(f"agent-{i}", [AGENT, "--config", job, "--aggregator", f"127.0.0.1:{grpc_port}", "--agent-id",
                             f"agent-{i}", "--node-name", f"node-{i}", "--data-dir", os.path.join(data, f"agent-{i}"),
                             "--model-dir", MODEL, "--http", f"127.0.0.1:{port}", "--threads", str(args.threads),
                             "--state-dir", os.path.join(tmp, f"state-{i}"), "--log-format", "json"])

    records, lock, stop = [], threading.Lock(), threading.Event()
    clients, prober = [], None
    try:
        def ready():
            try:
                return http("GET", f"http://127.0.0.1:{agent_port}/readyz", timeout=5)[0] == 200
            except Exception:
                return False

        wait_for(ready, 600, "agent-0 /readyz (first global installed)", procs)
        load_start = time.time()
        prober = ReadyzProber(agent_port, stop)
        prober.start()
        for c in range(args.clients):
            clients.append(Client(c, agent_port, texts, stop, args.stall_seconds, records, lock))
            clients[-1].start()

        def job_done():
            try:
                code, body = http("GET", f"http://127.0.0.1:{agg_http}/v1/status", timeout=5)
            except Exception:
                return False
            return code == 200 and json.loads(body).get("state") in ("Succeeded", "Failed")

        wait_for(job_done, 60 * args.rounds + 300, "the job to finish", procs)
        # Keep the load on past the last install's window.
        time.sleep(args.window + 2.0)
    finally:
        stop.set()
        for c in clients:
            c.join(timeout=args.stall_seconds + 5)
        if prober:
            prober.join(timeout=15)
        for _, p in procs:
            if p.poll() is None:
                p.terminate()
        for _, p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for log in logs:
            log.close()

    installs, loads = read_installs(os.path.join(tmp, "agent-0.log"))
    installs = [x for x in installs if x[2] >= load_start]
    built = len([t for t in loads if t >= load_start])
    W = args.window
    windows = [(s - W, e + W) for _, s, e, _ in installs]
    measured = [r for r in records if r["start"] >= load_start + args.warmup]
    failed = [r for r in measured if r["status"] != 200]
    stalled = [r for r in measured if r["latency"] >= args.stall_seconds]
    ok = [r for r in measured if r["status"] == 200]
    for r in ok:
        r["install"] = any(r["start"] <= hi and r["end"] >= lo for lo, hi in windows)
        # Running while the new global was imported and published (no margin):
        # answered by the global it replaced ("old") or by the new one.
        r["swap"] = None
        for v, s, e, _ in installs:
            if r["start"] <= e and r["end"] >= s:
                r["swap"] = "new" if r["version"] >= v else "old"
    steady = [r["latency"] for r in ok if not r["install"]]
    during = [r["latency"] for r in ok if r["install"]]
    swap = [r["latency"] for r in ok if r["swap"]]
    swap_old = [r["latency"] for r in ok if r["swap"] == "old"]
    swap_new = [r["latency"] for r in ok if r["swap"] == "new"]
    versions = sorted({r["version"] for r in ok})
    # Each client's requests are sequential: the version it sees must never go back.
    backwards, last = 0, {}
    for r in sorted(ok, key=lambda r: r["start"]):
        if r["version"] < last.get(r["client"], 0):
            backwards += 1
        last[r["client"]] = r["version"]
    summary = {
        "clients": args.clients, "agents": args.agents, "rounds": args.rounds, "threads": args.threads,
        "window_s": W, "duration_s": round(max((r["end"] for r in measured), default=load_start) - load_start, 1),
        "requests": len(measured), "failures": len(failed), "stalled": len(stalled),
        "installs_seen": len(installs), "spare_instances_built": built, "versions_answered": versions, "version_went_back": backwards,
        "install_seconds": [round(e - s, 4) for _, s, e, _ in installs],
        "fetch_seconds": [round(f, 4) for *_, f in installs],
        "steady_requests": len(steady), "install_requests": len(during),
    }
    if steady:
        summary.update({"steady_p50_ms": 1e3 * percentile(steady, 50), "steady_p99_ms": 1e3 * percentile(steady, 99)})
    if during:
        summary.update({"install_p50_ms": 1e3 * percentile(during, 50),
                        "install_p99_ms": 1e3 * percentile(during, 99)})
    if swap:
        summary.update({"swap_requests": len(swap), "swap_p99_ms": 1e3 * percentile(swap, 99),
                        "swap_max_ms": 1e3 * max(swap)})
        for name, xs in (("old", swap_old), ("new", swap_new)):
            if xs:
                summary[f"swap_{name}_requests"] = len(xs)
                summary[f"swap_{name}_p99_ms"] = 1e3 * percentile(xs, 99)
    # Each install's own window: one slow install (say, one that loads a model)
    # shows here even when the pooled p99 hides it.
    per_install = []
    for (v, s, e, _), (lo, hi) in zip(installs, windows):
        xs = [r["latency"] for r in ok if r["start"] <= hi and r["end"] >= lo]
        if xs:
            per_install.append((v, len(xs), 1e3 * percentile(xs, 50), 1e3 * max(xs)))
    summary["per_install_window"] = [{"version": v, "requests": n, "p50_ms": p50, "max_ms": mx}
                                     for v, n, p50, mx in per_install]
    if steady and during:
        summary["ratio_p99_install_over_steady"] = summary["install_p99_ms"] / summary["steady_p99_ms"]
    summary["max_latency_ms"] = 1e3 * max((r["latency"] for r in measured), default=0)
    if prober and prober.latencies:
        summary["readyz_probes"] = len(prober.latencies)
        summary["readyz_failures"] = prober.failures
        summary["readyz_max_ms"] = 1e3 * max(prober.latencies)

    print(f"hot swap under load: {args.clients} clients on agent-0 ({args.agents} agent(s), "
          f"--threads {args.threads}), {args.rounds} rounds x {args.steps} local steps, window ±{W:g} s")
    print(f"  duration            {summary['duration_s']} s after {args.warmup:g} s warm-up")
    print(f"  requests            {summary['requests']}  (steady {len(steady)}, during installs {len(during)})")
    print(f"  failures            {len(failed)}   stalled (>= {args.stall_seconds:g} s): {len(stalled)}   "
          f"version went back: {backwards}")
    print(f"  installs seen       {len(installs)}  (versions answered: {versions[0] if versions else '-'}"
          f"..{versions[-1] if versions else '-'}, {len(versions)} distinct)")
    if installs:
        ins = [e - s for _, s, e, _ in installs]
        print(f"  install_seconds     median {1e3 * percentile(ins, 50):.1f} ms, max {1e3 * max(ins):.1f} ms; "
              f"spare instances built under load: {built}")
    if steady:
        print(f"  steady   p50/p99    {summary['steady_p50_ms']:.1f} / {summary['steady_p99_ms']:.1f} ms")
    if during:
        print(f"  install  p50/p99    {summary['install_p50_ms']:.1f} / {summary['install_p99_ms']:.1f} ms")
    if swap:
        print(f"  in flight at a swap {len(swap)} requests, p99 {summary['swap_p99_ms']:.1f} ms, "
              f"max {summary['swap_max_ms']:.1f} ms (no margin)")
        for name in ("old", "new"):
            if f"swap_{name}_requests" in summary:
                print(f"    answered by the {name} global: {summary[f'swap_{name}_requests']}, "
                      f"p99 {summary[f'swap_{name}_p99_ms']:.1f} ms")
    if per_install:
        print("  per install window  " + " ".join(f"v{v}:{p50:.0f}/{mx:.0f}" for v, _, p50, mx in per_install)
              + " (p50/max ms)")
    if "ratio_p99_install_over_steady" in summary:
        print(f"  ratio p99 install/steady  {summary['ratio_p99_install_over_steady']:.2f}")
    print(f"  max latency         {summary['max_latency_ms']:.1f} ms")
    if "readyz_probes" in summary:
        print(f"  /readyz             {summary['readyz_probes']} probes, {summary['readyz_failures']} not 200, "
              f"max {summary['readyz_max_ms']:.1f} ms")
    for r in failed[:5]:
        print(f"  failed: status {r['status']} after {r['latency']:.2f}s: {r['error']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=1)
    if args.keep:
        with open(os.path.join(tmp, "records.json"), "w") as f:
            json.dump({"installs": installs, "records": records, "load_start": load_start}, f)
        print(f"  work dir kept: {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)

    bad = []
    if failed or stalled:
        bad.append(f"{len(failed)} failed and {len(stalled)} stalled requests")
    if backwards:
        bad.append(f"{backwards} answers came from an older global than the client had already seen")
    if len(installs) < args.min_installs:
        bad.append(f"only {len(installs)} installs under load (want >= {args.min_installs}: more --rounds)")
    if not steady or not during:
        bad.append("no steady-state or no install-window requests to compare")
    if args.check and summary.get("ratio_p99_install_over_steady", 0) > 2:
        bad.append(f"p99 during installs is {summary['ratio_p99_install_over_steady']:.2f}x steady state (> 2)")
    if bad:
        print("FAIL: " + "; ".join(bad))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
