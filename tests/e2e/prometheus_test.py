"""End-to-end observability test: Debian's real `prometheus` scrapes a real
fedge job (fedge-aggregator + 2 fedge-agent processes, the real MiniLM, real
WordNet data) on loopback, using the shipped deploy/prometheus/prometheus.yml;
the shipped Grafana dashboard's queries are checked against what the
processes really expose.

The shipped config's kubernetes_sd blocks are replaced by static targets that
carry the `__meta_kubernetes_*` labels a pod of fedge-operator would have, so
Prometheus's own relabeling engine runs the cluster rules too.

Run by ctest (label e2e) with FEDGE_SOURCE_DIR and FEDGE_BINARY_DIR set; the
binaries may also be named one by one with FEDGE_BIN, FEDGE_AGGREGATOR_BIN and
FEDGE_AGENT_BIN (then FEDGE_BIN_DIR: a directory with fedge-aggregator and
fedge-agent for `fedge run --bin-dir`). SKIPs when prometheus/promtool or the model are missing.
"""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import urllib.error
import urllib.parse
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from local_job_test import JOB_TEMPLATE, ROOT, BUILD, MODEL, free_port, http, wait_for, status  # noqa: E402

FEDGE = os.environ.get("FEDGE_BIN", os.path.join(BUILD, "cli", "fedge"))
AGGREGATOR = os.environ.get("FEDGE_AGGREGATOR_BIN", os.path.join(BUILD, "aggregator", "fedge-aggregator"))
AGENT = os.environ.get("FEDGE_AGENT_BIN", os.path.join(BUILD, "agent", "fedge-agent"))
PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")
PROM_CONFIG = os.path.join(ROOT, "deploy", "prometheus", "prometheus.yml")
DASHBOARD = os.path.join(ROOT, "deploy", "grafana", "fedge-dashboard.json")

ROUNDS = 2
STEPS = 5
AGENTS = 2
JOB_NAME = "e2e-prom"
JOB_KEY = "default/" + JOB_NAME

# Dashboard metrics no process of this test exposes, and why. Each must still be
# registered in the named source tree, so this list cannot hide a typo.
NOT_EXPOSED_HERE = {
    "fedge_operator_": ("operator", "fedge-operator needs a Kubernetes API server; not run here"),
    "fedge_aggregator_updates_rejected_total": (
        "aggregator", "labelled by reason: no series until an update is rejected, none is in a healthy job"),
    # Labelled by endpoint: no series until a generation; the job here is a MiniLM classifier.
    "fedge_agent_time_to_first_token_seconds_": (
        "agent", "generation only (labelled by endpoint); this job's MiniLM classifier generates nothing"),
    "fedge_agent_generated_tokens_total": (
        "agent", "generation only (labelled by endpoint); this job's MiniLM classifier generates nothing"),
}


def prom_api(port, path, params=None):
    url = f"http://127.0.0.1:{port}/api/v1/{path}"
    if params:
        url += "?" + urllib.parse.urlencode(params)
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return json.loads(resp.read().decode())
    except urllib.error.HTTPError as e:
        return json.loads(e.read().decode())


def query(port, expr):
    """The result vector of an instant query; fails the test on a query error."""
    r = prom_api(port, "query", {"query": expr})
    if r.get("status") != "success":
        raise AssertionError(f"query {expr!r} failed: {r.get('errorType')}: {r.get('error')}")
    return r["data"]["result"]


def scalar_by(result, label):
    return {s["metric"].get(label): float(s["value"][1]) for s in result}


def metric_families(metrics_text):
    """{name: type} from the # TYPE lines of a Prometheus text exposition."""
    out = {}
    for line in metrics_text.splitlines():
        m = re.match(r"# TYPE (\S+) (\S+)", line)
        if m:
            out[m.group(1)] = m.group(2)
    return out


def metric_names(expr):
    """The fedge metric names a PromQL expression reads (not label names)."""
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    expr = re.sub(r"\{[^}]*\}", " ", expr)
    return set(re.findall(r"\bfedge_[a-z0-9_]+\b", expr))


def dashboard_targets():
    with open(DASHBOARD) as f:
        dash = json.load(f)
    out = []

    def walk(panels):
        for p in panels:
            walk(p.get("panels", []))
            for t in p.get("targets", []):
                if "expr" in t:
                    out.append((p.get("title", "?"), t))
    walk(dash.get("panels", []))
    return out


def kube_pod_target(address, ns, job, role, port_name, node=None, pod=None, annotations=None, labels_=None):
    """A static target labelled as kubernetes_sd (role: pod) labels one pod port."""
    labels = {"__meta_kubernetes_namespace": ns, "__meta_kubernetes_pod_name": pod or f"{job}-{role}",
              "__meta_kubernetes_pod_container_port_name": port_name}
    if job:
        labels["__meta_kubernetes_pod_label_fedge_io_job"] = job
    if role:
        labels["__meta_kubernetes_pod_label_fedge_io_role"] = role
    if node:
        labels["__meta_kubernetes_pod_annotation_fedge_io_node"] = node
        labels["__meta_kubernetes_pod_node_name"] = node
    for k, v in (annotations or {}).items():
        labels["__meta_kubernetes_pod_annotation_" + re.sub(r"[^a-zA-Z0-9_]", "_", k)] = v
    for k, v in (labels_ or {}).items():
        labels["__meta_kubernetes_pod_label_" + re.sub(r"[^a-zA-Z0-9_]", "_", k)] = v
    return {"targets": [address], "labels": labels}


def derive_config(text, kube_targets, scrape_interval="1s"):
    """The shipped config with each `kubernetes_sd_configs: [- role: pod]` block
    replaced by static targets, and a short scrape interval."""
    block = re.compile(r"^( *)kubernetes_sd_configs:\n\1  - role: pod\n", re.M)
    if len(block.findall(text)) != 2:
        raise AssertionError("expected two kubernetes_sd_configs blocks (fedge-pods, fedge-annotated) in "
                             f"{PROM_CONFIG}; update derive_config in this test")
    text = block.sub(lambda m: f"{m.group(1)}static_configs: {json.dumps(kube_targets)}\n", text)
    text, n = re.subn(r"^(  scrape_interval:) \S+$", rf"\1 {scrape_interval}", text, flags=re.M)
    if n != 1:
        raise AssertionError(f"no global scrape_interval in {PROM_CONFIG}")
    return text


@unittest.skipUnless(PROMETHEUS and PROMTOOL, "prometheus/promtool not installed: run scripts/install-deps.sh "
                     "(Debian package `prometheus`)")
@unittest.skipUnless(os.path.exists(os.path.join(MODEL, "model.safetensors")),
                     f"model not found at {MODEL}: run scripts/fetch-model.sh")
class PrometheusScrapeTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="fedge-prom-")
        cls.procs = []
        try:
            cls._start()
        except BaseException:
            cls.tearDownClass()
            raise

    @classmethod
    def _start(cls):
        cls.data = os.path.join(cls.tmp, "data")
        out = subprocess.run([FEDGE, "data", "wordnet", "--agents", str(AGENTS), "--alpha", "0.5", "--seed", "5",
                              "--test-size", "200", "--max-train", "3000", "--out", cls.data],
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        with open(os.path.join(cls.data, "labels.json")) as f:
            cls.labels = json.load(f)
        cls.job = os.path.join(cls.tmp, "job.yaml")
        with open(cls.job, "w") as f:
            f.write(JOB_TEMPLATE.format(compression="{codec: int8}", name=JOB_NAME, model=MODEL, data=cls.data, agents=AGENTS, rounds=ROUNDS,
                                        steps=STEPS, labels=json.dumps(cls.labels)))
        logs = os.path.join(cls.tmp, "logs")
        os.makedirs(logs)

        def spawn(name, argv):
            with open(os.path.join(logs, f"{name}.log"), "w") as log:
                p = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
            cls.procs.append((name, p))
            return p

        # The job: no --exit-when-done, so everyone keeps serving after the last round.
        cls.grpc_port, cls.agg_port = free_port(), free_port()
        spawn("aggregator", [AGGREGATOR, "--config", cls.job, "--listen", f"127.0.0.1:{cls.grpc_port}",
                             "--http", f"127.0.0.1:{cls.agg_port}",
                             "--checkpoint-dir", os.path.join(cls.tmp, "ckpt"),
                             "--expected-agents", str(AGENTS)])
        cls.agent_ports = {}
        for i in range(AGENTS):
            agent_id = f"agent-{i}"
            cls.agent_ports[agent_id] = free_port()
            spawn(agent_id, [AGENT, "--config", cls.job, "--aggregator", f"127.0.0.1:{cls.grpc_port}",
                             "--agent-id", agent_id, "--node-name", f"node-{i}",
                             "--data-dir", os.path.join(cls.data, agent_id), "--model-dir", MODEL,
                             "--http", f"127.0.0.1:{cls.agent_ports[agent_id]}",
                             "--state-dir", os.path.join(cls.tmp, f"state-{i}")])

        # Prometheus runs the shipped config from a copy whose targets/ holds
        # the file_sd list of this job (the format `fedge run` writes).
        cls.prom_dir = os.path.join(cls.tmp, "prometheus")
        os.makedirs(os.path.join(cls.prom_dir, "targets"))
        file_sd = [{"targets": [f"127.0.0.1:{cls.agg_port}"],
                    "labels": {"job": "fedge-local", "component": "aggregator", "fedge_job": JOB_KEY}}]
        file_sd += [{"targets": [f"127.0.0.1:{port}"],
                     "labels": {"job": "fedge-local", "component": "agent", "fedge_job": JOB_KEY, "agent": a}}
                    for a, port in cls.agent_ports.items()]
        with open(os.path.join(cls.prom_dir, "targets", "direct.json"), "w") as f:
            json.dump(file_sd, f)
        kube = [kube_pod_target(f"127.0.0.1:{cls.agg_port}", "default", JOB_NAME, "aggregator", "http"),
                # Not scraped: the aggregator's gRPC port, and a pod that is not fedge's.
                kube_pod_target(f"127.0.0.1:{cls.grpc_port}", "default", JOB_NAME, "aggregator", "grpc"),
                kube_pod_target("127.0.0.1:1", "default", None, None, "http", pod="unrelated")]
        kube += [kube_pod_target(f"127.0.0.1:{port}", "default", JOB_NAME, "agent", "http", node=a,
                                 pod=f"{JOB_NAME}-agent-{a}") for a, port in cls.agent_ports.items()]
        # An annotated pod (as helm/fedge's operator pods): its port comes from
        # the annotation. Prometheus's own /metrics stands in for the operator.
        cls.prom_port = free_port()
        kube.append(kube_pod_target("127.0.0.1:1", "fedge-system", None, None, "", pod="fedge-operator-0",
                                    annotations={"prometheus.io/scrape": "true",
                                                 "prometheus.io/port": str(cls.prom_port)},
                                    labels_={"app.kubernetes.io/name": "fedge",
                                             "app.kubernetes.io/component": "operator"}))
        with open(PROM_CONFIG) as f:
            cls.shipped_config = f.read()
        cls.config = os.path.join(cls.prom_dir, "prometheus.yml")
        with open(cls.config, "w") as f:
            f.write(derive_config(cls.shipped_config, kube))
        spawn("prometheus", [PROMETHEUS, "--config.file", cls.config,
                             "--web.listen-address", f"127.0.0.1:{cls.prom_port}",
                             "--storage.tsdb.path", os.path.join(cls.prom_dir, "tsdb")])
        wait_for(lambda: cls._reachable(cls.prom_port), 60, "prometheus to be ready", cls.procs)

    @staticmethod
    def _reachable(port):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=2).close()
            return True
        except (urllib.error.URLError, ConnectionError, OSError):
            return False

    @classmethod
    def tearDownClass(cls):
        for _, p in cls.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for _, p in cls.procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        if os.environ.get("FEDGE_KEEP_TMP"):
            print(f"kept {cls.tmp}", file=sys.stderr)
        else:
            shutil.rmtree(cls.tmp, ignore_errors=True)

    # ---- helpers ----

    def job_done(self):
        """Waits for the direct job to succeed; returns its /v1/status."""
        if not hasattr(type(self), "done_status"):
            type(self).done_status = wait_for(
                lambda: (s := status(self.agg_port)) and s.get("state") == "Succeeded" and s, 900,
                "the job to succeed", self.procs)
        return self.done_status

    def wait_query(self, expr, predicate, what, timeout=60):
        last = []

        def check():
            nonlocal last
            last = query(self.prom_port, expr)
            return predicate(last)
        try:
            wait_for(check, timeout, what, self.procs)
        except AssertionError as e:
            raise AssertionError(f"{e}; last result of {expr!r}: {last}") from None
        return last

    def scrape(self, port):
        code, body = http("GET", f"http://127.0.0.1:{port}/metrics")
        self.assertEqual(code, 200, body)
        return body

    def exposed_families(self):
        families = {}
        for port in [self.agg_port] + list(self.agent_ports.values()):
            families.update(metric_families(self.scrape(port)))
        return families

    # ---- tests ----

    def test_config_passes_promtool(self):
        out = subprocess.run([PROMTOOL, "check", "config", PROM_CONFIG], capture_output=True, text=True, timeout=60)
        text = out.stdout + out.stderr
        if out.returncode != 0:
            # Debian's prometheus is built without kubernetes_sd; the derived
            # copy (static targets in its place) must then pass instead.
            self.assertIn("field kubernetes_sd_configs not found", text, text)
            self.assertEqual(len(re.findall(r"line \d+:", text)), 2, text)
        local = os.path.join(os.path.dirname(PROM_CONFIG), "prometheus-local.yml")
        for config in (self.config, local):
            out = subprocess.run([PROMTOOL, "check", "config", config], capture_output=True, text=True, timeout=60)
            self.assertEqual(out.returncode, 0, out.stdout + out.stderr)

    def test_every_target_is_up_and_cluster_relabeling_yields_fedge_labels(self):
        expected = {("fedge-local", "aggregator", None), ("fedge-pods", "aggregator", None),
                    ("fedge-annotated", "operator", None)}
        expected |= {(job, "agent", a) for job in ("fedge-local", "fedge-pods") for a in self.agent_ports}
        self.wait_query("up == 1", lambda r: len(r) == len(expected), f"{len(expected)} targets up", timeout=300)
        seen = set()
        for s in query(self.prom_port, "up"):
            m = s["metric"]
            self.assertEqual(s["value"][1], "1", m)
            seen.add((m["job"], m.get("component"), m.get("agent")))
            if m["job"] != "fedge-annotated":
                self.assertEqual(m.get("fedge_job"), JOB_KEY, m)
        self.assertEqual(seen, expected)
        targets = prom_api(self.prom_port, "targets")["data"]
        dropped = {t["discoveredLabels"]["__address__"] for t in targets["droppedTargets"]}
        self.assertIn(f"127.0.0.1:{self.grpc_port}", dropped, "the gRPC port is not scraped")
        annotated = [t for t in targets["activeTargets"] if t["labels"]["job"] == "fedge-annotated"]
        self.assertEqual([t["scrapeUrl"] for t in annotated], [f"http://127.0.0.1:{self.prom_port}/metrics"])
        pods = {t["labels"].get("agent"): t["labels"] for t in targets["activeTargets"]
                if t["labels"]["job"] == "fedge-pods"}
        self.assertEqual(pods["agent-1"].get("node"), "agent-1")
        self.assertEqual(pods["agent-1"].get("pod"), f"{JOB_NAME}-agent-agent-1")

    def test_job_metrics_reach_prometheus(self):
        done = self.job_done()
        local = f'job="fedge-local",fedge_job="{JOB_KEY}"'
        # Counted rounds as Prometheus stores them, once it has scraped the end.
        self.wait_query(f"fedge_aggregator_rounds_completed_total{{{local}}}",
                        lambda r: r and float(r[0]["value"][1]) == ROUNDS, f"rounds_completed_total == {ROUNDS}")
        acc = float(query(self.prom_port, f"fedge_aggregator_round_accuracy{{{local}}}")[0]["value"][1])
        self.assertGreater(acc, 0.0)
        self.assertLessEqual(acc, 1.0)
        self.assertAlmostEqual(acc, done["rounds"][-1]["accuracy"], places=6)
        self.assertEqual(len(done["rounds"]), ROUNDS)

        # Every agent's series, and they agree with the aggregator's account.
        participated = scalar_by(self.wait_query(
            f"fedge_agent_rounds_participated_total{{{local}}}",
            lambda r: sum(float(s["value"][1]) for s in r) == sum(x["participants"] for x in done["rounds"]),
            "agents' participations to match the aggregator's rounds"), "agent")
        self.assertEqual(set(participated), set(self.agent_ports))
        for name in ("fedge_agent_train_steps_total", "fedge_agent_global_version", "fedge_agent_eval_accuracy",
                     "fedge_agent_bytes_sent_total", "fedge_agent_bytes_received_total"):
            by_agent = scalar_by(query(self.prom_port, f"{name}{{{local}}}"), "agent")
            self.assertEqual(set(by_agent), set(self.agent_ports), name)
            self.assertTrue(all(v > 0 for v in by_agent.values()), (name, by_agent))
        versions = scalar_by(self.wait_query(
            f"fedge_agent_global_version{{{local}}}",
            lambda r: {float(s["value"][1]) for s in r} == {float(done["global_version"])},
            "every agent to serve the final global version"), "agent")
        self.assertEqual(len(versions), AGENTS)

        # Inference traffic shows up as an increase of exactly the requests made.
        agent = "agent-1"
        base = f"http://127.0.0.1:{self.agent_ports[agent]}"
        wait_for(lambda: http("GET", base + "/readyz")[0] == 200, 120, "agent readiness", self.procs)
        counter = (f'fedge_agent_inference_requests_total{{{local},agent="{agent}",'
                   f'endpoint="/v1/classify",code="200"}}')
        r = query(self.prom_port, counter)
        before = float(r[0]["value"][1]) if r else 0.0
        for text in ("dog: a domesticated canine", "oak: a deciduous tree", "violin: a bowed string instrument"):
            code, body = http("POST", base + "/v1/classify", {"input": [text]})
            self.assertEqual(code, 200, body)
        self.wait_query(counter, lambda r: r and float(r[0]["value"][1]) == before + 3,
                        f"{counter} to reach {before + 3}")
        self.wait_query(f'rate(fedge_agent_inference_duration_seconds_count{{{local},agent="{agent}",'
                        'endpoint="/v1/classify"}[1m]) > 0', lambda r: len(r) == 1, "a positive inference rate")

    def test_dashboard_queries_parse_and_use_exposed_metrics(self):
        self.job_done()
        self.wait_query('up{job="fedge-local"} == 1', lambda r: len(r) == 1 + AGENTS, "local targets up", 300)
        # Request series exist once an agent has served a request.
        for port in self.agent_ports.values():
            code, body = http("POST", f"http://127.0.0.1:{port}/v1/classify", {"input": ["cat: a feline"]})
            self.assertEqual(code, 200, body)
        self.wait_query('fedge_agent_inference_requests_total{job="fedge-local"}', lambda r: len(r) >= AGENTS,
                        "inference request series of every agent")
        families = self.exposed_families()
        # Histograms are queried through their _bucket/_sum/_count series.
        series = set(families)
        for name, kind in families.items():
            if kind == "histogram":
                series |= {name + "_bucket", name + "_sum", name + "_count"}
        stored = set(prom_api(self.prom_port, "label/__name__/values")["data"])
        targets = dashboard_targets()
        self.assertGreater(len(targets), 5)
        for title, t in targets:
            expr = t["expr"]
            with self.subTest(panel=title, expr=expr):
                r = prom_api(self.prom_port, "query", {"query": expr})
                self.assertEqual(r.get("status"), "success", f"{r.get('errorType')}: {r.get('error')}")
                names = metric_names(expr)
                self.assertTrue(names, "the expression names no fedge metric")
                for name in names:
                    if name in series:
                        self.assertIn(name, stored, "exposed but never stored by Prometheus")
                        continue
                    exempt = [k for k in NOT_EXPOSED_HERE if name == k or (k.endswith("_") and name.startswith(k))]
                    self.assertTrue(exempt, f"{name} is not exposed by the aggregator or the agents")
                    folder, why = NOT_EXPOSED_HERE[exempt[0]]
                    family = re.sub(r"_(bucket|sum|count)$", "", name)
                    found = subprocess.run(["grep", "-rqF", f'"{family}"', os.path.join(ROOT, folder)])
                    self.assertEqual(found.returncode, 0, f"{name} ({why}) is not registered under {folder}/")
                # Legends may only use labels the series carry.
                result = r["data"]["result"] if r.get("status") == "success" else []
                if r.get("status") == "success" and r["data"]["resultType"] == "vector":
                    for label in re.findall(r"\{\{\s*(\w+)\s*\}\}", t.get("legendFormat", "")):
                        for series_ in result:
                            self.assertIn(label, series_["metric"], f"legend label {label} not on the series")

    def test_zfedge_run_publishes_and_then_withdraws_its_targets(self):
        # Runs after the direct job (name order), so the two do not share the CPU.
        self.job_done()
        name = "e2e-prom-run"
        job = os.path.join(self.tmp, f"{name}.yaml")
        with open(job, "w") as f:
            f.write(JOB_TEMPLATE.format(compression="{codec: int8}", name=name, model=MODEL, data=self.data, agents=AGENTS, rounds=1, steps=2,
                                        labels=json.dumps(self.labels)))
        published = os.path.join(self.prom_dir, "targets", f"{name}.json")
        work = os.path.join(self.tmp, "run")
        bin_dir = ["--bin-dir", os.environ["FEDGE_BIN_DIR"]] if os.environ.get("FEDGE_BIN_DIR") else []
        # --serve keeps every process up after the job until SIGTERM: a job this small
        # can finish between two scrapes, and a user who ran it can still query it.
        run = subprocess.Popen([FEDGE, "run", "-f", job, "--work-dir", work, "--quiet", "--serve",
                                "--prometheus-targets", published] + bin_dir,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        lines = []
        reader = threading.Thread(target=lambda: lines.extend(iter(run.stdout.readline, "")), daemon=True)
        reader.start()
        try:
            up = f'up{{job="fedge-local",fedge_job="default/{name}"}} == 1'
            seen = {}

            def all_up():
                if run.poll() is not None:
                    reader.join(10)
                    raise AssertionError(f"fedge run ended (exit {run.returncode}) before Prometheus saw all "
                                         f"{1 + AGENTS} of its processes up: {seen}\n{''.join(lines)}")
                r = query(self.prom_port, up)
                seen.update({s["metric"].get("agent", s["metric"]["component"]): s["metric"] for s in r})
                return len(seen) == 1 + AGENTS
            wait_for(all_up, 600, "Prometheus to scrape every process of `fedge run`")
            self.assertEqual(set(seen), {"aggregator"} | set(self.agent_ports))
            with open(os.path.join(work, "prometheus", "targets.json")) as f:
                record = json.load(f)
            # `fedge run` itself must have seen the job succeed before it is stopped (else exit 130).
            wait_for(lambda: "serving the final global model" in "".join(lines), 600,
                     "fedge run --serve to report the job succeeded and serving")
            # After the job, the agents still answer inference requests with the final global.
            agent = next(g for g in record if g["labels"]["component"] == "agent")["targets"][0]
            wait_for(lambda: http("GET", f"http://{agent}/readyz")[0] == 200, 120, "agent readiness")
            code, body = http("POST", f"http://{agent}/v1/classify", {"input": ["oak: a deciduous tree"]})
            self.assertEqual(code, 200, body)
            self.assertIn(json.loads(body)["data"][0]["label"], self.labels)
            self.assertIsNone(run.poll(), "fedge run --serve left before it was told to")
            run.send_signal(signal.SIGTERM)
            run.wait(timeout=120)
        finally:
            if run.poll() is None:
                run.send_signal(signal.SIGTERM)
                run.wait(timeout=60)
            reader.join(30)
        self.assertEqual(run.returncode, 0, "".join(lines))
        with open(published) as f:
            self.assertEqual(json.load(f), [], "the published list is emptied when the run ends")
        with open(os.path.join(work, "prometheus", "targets.json")) as f:
            record = json.load(f)
        self.assertEqual(len(record), 1 + AGENTS)

        def withdrawn():
            active = prom_api(self.prom_port, "targets", {"state": "active"})["data"]["activeTargets"]
            return not [t for t in active if t["labels"].get("fedge_job") == f"default/{name}"]
        wait_for(withdrawn, 120, "Prometheus to drop the finished run's targets", self.procs)


if __name__ == "__main__":
    unittest.main()
