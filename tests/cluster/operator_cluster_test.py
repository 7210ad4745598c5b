"""Integration tests of fedge-operator against a real Kubernetes control plane.

etcd, kube-apiserver, kube-controller-manager and kube-scheduler run on loopback
(scripts/cluster/start-control-plane.sh, binaries from build-control-plane.sh), the pod
runner (scripts/cluster/pod_runner.py) plays three edge nodes, and fedge-operator runs as
a process with a kubeconfig. Skips with a message when the control-plane binaries have
not been built.

The namespace the jobs run in enforces the `restricted` Pod Security level
(pod-security.kubernetes.io/enforce=restricted), so the API server's own admission
plugin refuses any pod the operator makes that is not restricted-compliant. Jobs run
over TLS (the CRD's default) and agents join with projected service-account tokens: the
pod runner runs the real binaries and asks the real API server for each pod's token
(TokenRequest, bound to the pod, the job's audience), so the example job's agents are
verified by a real fedge-aggregator against the API server's real keys, which the
operator copied into the job's trust ConfigMap. A default
StorageClass (no provisioner, WaitForFirstConsumer) with a pool of pre-made volumes
serves the aggregators' checkpoint claims, as static local volumes do on a real cluster.

Run by ctest (label integration; `python3 operator_cluster_test.py`, exit 77 = skipped)
with FEDGE_SOURCE_DIR and FEDGE_BINARY_DIR set.
"""
import base64
import hashlib
import json
import re
import ssl
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.request

ROOT = os.environ.get("FEDGE_SOURCE_DIR", os.path.abspath(os.path.join(os.path.dirname(__file__), "../..")))
BUILD = os.environ.get("FEDGE_BINARY_DIR", os.path.join(ROOT, "build"))
K8S_VERSION = os.environ.get("FEDGE_K8S_VERSION", "v1.36.3")
OPERATOR = os.environ.get("FEDGE_OPERATOR_BIN", os.path.join(BUILD, "operator", "fedge-operator"))
AGGREGATOR = os.environ.get("FEDGE_AGGREGATOR_BIN", os.path.join(BUILD, "aggregator", "fedge-aggregator"))
AGENT = os.environ.get("FEDGE_AGENT_BIN", os.path.join(BUILD, "agent", "fedge-agent"))
FEDGE = os.environ.get("FEDGE_CLI_BIN", os.path.join(BUILD, "cli", "fedge"))
MODEL = os.environ.get("FEDGE_MODEL_DIR", os.path.join(ROOT, ".fedge", "models", "all-MiniLM-L6-v2"))
SCRIPTS = os.path.join(ROOT, "scripts", "cluster")
CRD = os.path.join(ROOT, "crds", "fedge.io_federatedtrainingjobs.yaml")
NODES = ["edge-0", "edge-1", "edge-2"]
# A node outside every selector (the runner registers it without fedge.io/edge): the
# example job's node that joins after the job succeeded.
SPARE = "spare-0"
# The example job's rounds: enough for an agent to be killed and made again mid-job.
EXAMPLE_ROUNDS = 10


def control_plane_bin():
    if os.environ.get("FEDGE_CP_BIN"):
        return os.environ["FEDGE_CP_BIN"]
    for c in (os.environ.get("FEDGE_CP_CACHE"), "/var/cache/fedge/control-plane",
              os.path.expanduser("~/.cache/fedge/control-plane")):
        if c and os.path.exists(os.path.join(c, K8S_VERSION, ".complete")):
            return os.path.join(c, K8S_VERSION, "bin")
    return None


def chart_helm():
    """helm from scripts/cluster/build-helm.sh's cache (or $FEDGE_HELM_BIN), or None."""
    if os.environ.get("FEDGE_HELM_BIN"):
        return os.environ["FEDGE_HELM_BIN"]
    version = os.environ.get("FEDGE_HELM_VERSION", "v4.3.2")
    for c in (os.environ.get("FEDGE_HELM_CACHE"), "/var/cache/fedge/helm", os.path.expanduser("~/.cache/fedge/helm")):
        if c and os.path.exists(os.path.join(c, version, ".complete")):
            return os.path.join(c, version, "bin", "helm")
    return None


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout, what):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


# Under the operator's default allowed prefix; nothing is there, so agents fail to load
# the model (the tests that need running agents use the real model and data).
NO_MODEL, NO_DATA = "/var/lib/fedge/test/model", "/var/lib/fedge/test/data"
CHECKPOINT_CLASS = "fedge-test-local"
CHECKPOINT_VOLUMES = 16


def job_manifest(name, spec_overrides=None, labels=None, model=NO_MODEL, data=NO_DATA, **spec):
    body = {"apiVersion": "fedge.io/v1alpha1", "kind": "FederatedTrainingJob",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"model": {"path": model, "labels": labels or ["a", "b"]},
                     "data": {"path": data},
                     "agents": {"nodeSelector": {"fedge.io/edge": "true"}},
                     "rounds": {"total": 2}}}
    for k, v in spec.items():
        body["spec"][k] = v
    for path, v in (spec_overrides or {}).items():
        cur = body
        keys = path.split(".")
        for k in keys[:-1]:
            cur = cur.setdefault(k, {})
        if v is None:
            cur.pop(keys[-1], None)
        else:
            cur[keys[-1]] = v
    return body


@unittest.skipUnless(control_plane_bin(), "SKIP: control-plane binaries not built; run "
                     "scripts/cluster/build-control-plane.sh (about an hour on 2 cores, cached afterwards)")
@unittest.skipUnless(os.path.exists(OPERATOR), f"SKIP: {OPERATOR} not built")
class OperatorClusterTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="fedge-cluster-")
        cls.env = dict(os.environ, FEDGE_CP_DIR=os.path.join(cls.tmp, "cp"), FEDGE_CP_BIN=control_plane_bin())
        cls.env.pop("FEDGE_CP_PORT", None)
        out = subprocess.run([os.path.join(SCRIPTS, "start-control-plane.sh")], env=cls.env,
                             capture_output=True, text=True, timeout=240)
        if out.returncode != 0:
            raise AssertionError(f"control plane did not start:\n{out.stderr}\n{out.stdout}")
        cls.kubeconfig = os.path.join(cls.tmp, "cp", "kubeconfig")
        kubectl = os.path.join(control_plane_bin(), "kubectl")
        cls.kubectl_bin = kubectl if os.access(kubectl, os.X_OK) else shutil.which("kubectl")
        cls.kubectl("apply", "-f", CRD)
        wait_for(lambda: cls.kubectl("get", "ftj", check=False).returncode == 0, 30, "the CRD to be served")
        cls.crd_served = time.monotonic()
        # Every pod in the jobs' namespace must pass the restricted level (issue 10 item 9).
        cls.kubectl("label", "namespace", "default", "--overwrite", "pod-security.kubernetes.io/enforce=restricted",
                    "pod-security.kubernetes.io/enforce-version=latest")
        # Checkpoint claims name no class: the default one. Static volumes bound on first use.
        volumes = [{"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
                    "metadata": {"name": CHECKPOINT_CLASS,
                                 "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
                    "provisioner": "kubernetes.io/no-provisioner", "volumeBindingMode": "WaitForFirstConsumer",
                    "reclaimPolicy": "Retain"}]
        for i in range(CHECKPOINT_VOLUMES):
            path = os.path.join(cls.tmp, "checkpoint-volumes", str(i))
            os.makedirs(path)
            volumes.append({"apiVersion": "v1", "kind": "PersistentVolume",
                            "metadata": {"name": f"checkpoints-{i}", "labels": {"fedge-test": "checkpoints"}},
                            "spec": {"capacity": {"storage": "2Gi"}, "accessModes": ["ReadWriteOnce"],
                                     "persistentVolumeReclaimPolicy": "Retain", "storageClassName": CHECKPOINT_CLASS,
                                     "hostPath": {"path": path}}})
        cls.kubectl("apply", "-f", "-", stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": volumes}))
        cls.runner_port_file = os.path.join(cls.tmp, "runner.port")
        with open(os.path.join(cls.tmp, "runner.log"), "w") as log:  # the child keeps its own copy
            cls.runner = subprocess.Popen(
                ["python3", os.path.join(SCRIPTS, "pod_runner.py"), "--kubeconfig", cls.kubeconfig,
                 "--nodes", str(len(NODES)), "--node", SPARE, "--root", os.path.join(cls.tmp, "runner"),
                 "--bin-dir", os.path.dirname(AGGREGATOR), "--bin-dir", os.path.dirname(AGENT),
                 "--bin-dir", os.path.dirname(OPERATOR), "--port-file", cls.runner_port_file, "--heartbeat", "3"],
                stdout=log, stderr=subprocess.STDOUT)
        wait_for(lambda: os.path.exists(cls.runner_port_file), 30, "the pod runner")
        with open(cls.runner_port_file) as f:
            cls.runner_port = int(f.read())
        wait_for(lambda: cls.kubectl("get", "nodes", "-o", "name", check=False).stdout.count("node/") >= len(NODES) + 1,
                 30, "edge nodes")
        cls.kubectl("label", "node", SPARE, "fedge.io/edge-")  # before any operator runs
        cls.operators = []
        cls.operator = cls.start_operator()

    @classmethod
    def tearDownClass(cls):
        for p in getattr(cls, "operators", []):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    p.kill()
        if getattr(cls, "runner", None) and cls.runner.poll() is None:
            cls.runner.send_signal(signal.SIGTERM)
            try:
                cls.runner.wait(20)
            except subprocess.TimeoutExpired:
                cls.runner.kill()
        subprocess.run([os.path.join(SCRIPTS, "stop-control-plane.sh"), "--purge"], env=cls.env,
                       capture_output=True, timeout=60)
        if os.environ.get("FEDGE_KEEP_TMP"):
            print(f"kept {cls.tmp}")
        else:
            shutil.rmtree(cls.tmp, ignore_errors=True)

    # ---- helpers -------------------------------------------------------------------------
    @classmethod
    def kubectl(cls, *args, stdin=None, check=True):
        out = subprocess.run([cls.kubectl_bin, "--kubeconfig", cls.kubeconfig, *args], input=stdin,
                             capture_output=True, text=True, timeout=60)
        if check and out.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed: {out.stderr}")
        return out

    @classmethod
    def start_operator(cls, *extra):
        port = free_port()
        prefixes = ["/var/lib/fedge", cls.tmp, os.path.dirname(os.path.abspath(MODEL))]
        with open(os.path.join(cls.tmp, f"operator-{len(cls.operators)}.log"), "w") as log:
            p = subprocess.Popen([OPERATOR, "--kubeconfig", cls.kubeconfig, "--leader-elect",
                                  "--leader-election-namespace", "default", "--http", f"127.0.0.1:{port}",
                                  *[a for prefix in prefixes for a in ("--allowed-host-path-prefix", prefix)],
                                  "--monitoring-namespace", "monitoring",
                                  *extra],
                                 stdout=log, stderr=subprocess.STDOUT)
        p.http_port = port
        cls.operators.append(p)
        wait_for(lambda: cls.http_get(port, "/healthz")[0] == 200, 30, "operator /healthz")
        return p

    @staticmethod
    def http_get(port, path):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()
        except OSError:
            return 0, ""

    def apply(self, manifest):
        return self.kubectl("apply", "-f", "-", stdin=json.dumps(manifest), check=False)

    def get_json(self, *args):
        out = self.kubectl("get", *args, "-o", "json", check=False)
        return json.loads(out.stdout) if out.returncode == 0 else None

    def job(self, name):
        return self.get_json("ftj", name) or {}

    def condition(self, name, ctype):
        for c in self.job(name).get("status", {}).get("conditions", []):
            if c["type"] == ctype:
                return c
        return None

    def children(self, name):
        kinds = ("pods,services,secrets,configmaps,serviceaccounts,roles.rbac.authorization.k8s.io,"
                 "rolebindings.rbac.authorization.k8s.io,persistentvolumeclaims,networkpolicies.networking.k8s.io")
        got = self.get_json(kinds, "-l", f"fedge.io/job={name}")
        return got["items"] if got else []

    def delete_job(self, name):
        self.kubectl("delete", "ftj", name, "--wait=false", check=False)
        wait_for(lambda: self.kubectl("get", "ftj", name, check=False).returncode != 0, 60, f"job {name} deleted")

    def runner_post(self, path):
        req = urllib.request.Request(f"http://127.0.0.1:{self.runner_port}{path}", method="POST", data=b"")
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())

    def metric(self, port, name):
        code, text = self.http_get(port, "/metrics")
        for line in text.splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.split()[-1])
        return None

    def readyz(self, p):
        return self.http_get(p.http_port, "/readyz")[1].strip()

    def replace_operator(self, *extra):
        """Stops the leading operator gracefully (it releases the Lease) and starts another."""
        old = self.__class__.operator
        old.send_signal(signal.SIGTERM)
        self.assertEqual(old.wait(30), 0)
        new = self.start_operator(*extra)
        wait_for(lambda: self.readyz(new) == "ok", 60, "the new operator to lead")
        self.__class__.operator = new
        return new

    def uids(self, name):
        return {(k["kind"], k["metadata"]["name"]): k["metadata"]["uid"] for k in self.children(name)}

    def wait_children(self, name, n, timeout=60):
        return wait_for(lambda: (lambda k: k if len(k) >= n else None)(self.children(name)), timeout,
                        f"{n} children of job {name}")

    @staticmethod
    def pid_alive(pid):
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().split(") ")[-1].split()[0] != "Z"
        except OSError:
            return False

    def pod_logs(self, *names, lines=15):
        """The last lines of each container log the pod runner kept for these pods."""
        out = []
        for name in names:
            pod = self.get_json("pod", name)
            uid = pod["metadata"]["uid"] if pod else None
            d = os.path.join(self.tmp, "runner", "pods", uid or "-")
            for f in sorted(os.listdir(d)) if os.path.isdir(d) else []:
                if f.endswith(".log"):
                    with open(os.path.join(d, f), errors="replace") as fh:
                        out.append(f"--- {name}/{f}\n" + "".join(fh.readlines()[-lines:]))
            if pod:
                st = pod.get("status", {})
                waiting = [f"{c['type']}={c['status']} {c.get('reason', '')}: {c.get('message', '')}"
                           for c in st.get("conditions", []) if c.get("status") != "True"]
                out.append(f"--- {name} phase={st.get('phase')} ip={st.get('podIP')} "
                           f"node={pod.get('spec', {}).get('nodeName')} {'; '.join(waiting)}")
        return "\n".join(out)

    def wait_or_explain(self, predicate, timeout, what, *pods):
        try:
            return wait_for(predicate, timeout, what)
        except AssertionError as e:
            raise AssertionError(f"{e}\njob status: {json.dumps(self.job('example').get('status', {}))}\n"
                                 f"{self.pod_logs(*pods)}") from None

    def secret_data(self, name):
        got = self.get_json("secret", name)
        return {k: base64.b64decode(v) for k, v in got["data"].items()} if got else None

    def trust(self, job):
        got = self.get_json("configmap", f"{job}-trust")
        return got["data"] if got else None

    @staticmethod
    def jwt_claims(token):
        payload = token.split(".")[1]
        return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))

    def node_state_dir(self, node, rel):
        """<--node-state-dir>/<rel> on `node`, as the pod runner lays node paths out."""
        return os.path.join(self.tmp, "runner", "nodes", node, "var/lib/fedge/state", rel)

    def agent_state_written(self, job):
        """Waits for the job's agents to make their state directories on every node and
        writes what an agent keeps there; returns them by node."""
        states = {n: self.node_state_dir(n, f"default/{job}") for n in NODES}
        wait_for(lambda: all(os.path.isdir(d) for d in states.values()), 60, "the agents' state directories")
        for d in states.values():
            with open(os.path.join(d, "feedback.jsonl"), "w") as f:
                f.write('{"input": "a private request"}\n')
        return states

    def node_volumes(self, name):
        got = self.get_json("pv", "-l", f"fedge.io/job={name},fedge.io/job-namespace=default")
        return got["items"] if got else []

    # A job whose selector matches no node: credentials + inference token, configuration and
    # trust ConfigMaps, services, the aggregator's and the agents' ServiceAccounts, Role and
    # binding, network policies and the checkpoint claim (13 children) but no pods, so
    # nothing churns while the control plane is disturbed.
    PODLESS = {"nodeSelector": {"fedge.io/edge": "true", "fedge.io/pool": "none"}}
    PODLESS_CHILDREN = 13
    # ... and with 3 nodes: + aggregator and 3 agents, + per agent 1 node-volume claim
    # (model, data and the state root: subPaths of one local volume). No Secret per agent.
    FULL_CHILDREN = 20

    # ---- tests ---------------------------------------------------------------------------
    def test_api_server_restart_keeps_the_operator_watching_and_reconciling(self):
        # Long enough leader-election deadlines to ride out the restart: with the default
        # 10 s renew deadline an outage longer than that makes the leader exit by design.
        op = self.replace_operator("--leader-elect-lease-duration", "90", "--leader-elect-renew-deadline", "75")
        self.assertEqual(self.apply(job_manifest("before", agents=self.PODLESS)).returncode, 0)
        self.wait_children("before", self.PODLESS_CHILDREN)
        before = self.uids("before")
        restarts0 = self.metric(op.http_port, "fedge_operator_watch_restarts_total") or 0

        pidfile = os.path.join(self.tmp, "cp", "run", "kube-apiserver.pid")
        with open(pidfile) as f:
            pid = int(f.read())
        # SIGKILL: a crash (SIGTERM makes the API server drain its requests for a minute).
        os.kill(pid, signal.SIGKILL)
        try:
            wait_for(lambda: not self.pid_alive(pid), 30, "kube-apiserver to exit")
            self.assertNotEqual(self.kubectl("get", "ftj", check=False).returncode, 0, "the API server is down")
        finally:  # the other tests need it back whatever happened
            out = subprocess.run([os.path.join(SCRIPTS, "start-control-plane.sh")], env=self.env,
                                 capture_output=True, text=True, timeout=240)
        self.assertEqual(out.returncode, 0, out.stderr)
        up = time.time()
        self.assertIsNone(op.poll(), "the operator must survive an API server restart")

        # New objects after the restart are seen: the job watch reconnected...
        self.assertEqual(self.apply(job_manifest("after", agents=self.PODLESS)).returncode, 0)
        self.wait_children("after", self.PODLESS_CHILDREN, timeout=90)
        print(f"\n[apiserver restart] new job's children exist {time.time() - up:.1f}s after the API server was back",
              flush=True)
        # ... and so did the children's watch: a deleted child comes back.
        self.kubectl("delete", "configmap", "before-config")
        wait_for(lambda: self.uids("before").get(("ConfigMap", "before-config")) not in
                 (None, before[("ConfigMap", "before-config")]), 60, "before-config to be recreated")
        self.assertEqual({k: v for k, v in self.uids("before").items() if k[0] != "ConfigMap"},
                         {k: v for k, v in before.items() if k[0] != "ConfigMap"})
        self.assertGreater(self.metric(op.http_port, "fedge_operator_watch_restarts_total") or 0, restarts0)
        self.assertIsNone(op.poll())
        self.delete_job("before")
        self.delete_job("after")
        self.replace_operator()  # default deadlines for the other tests

    def test_two_replicas_only_the_lease_holder_reconciles_and_a_killed_leader_is_replaced(self):
        leader = self.operator
        standby = self.start_operator()
        self.assertEqual(self.readyz(standby), "standby")
        self.assertEqual(self.apply(job_manifest("pair", agents=self.PODLESS)).returncode, 0)
        self.wait_children("pair", self.PODLESS_CHILDREN)
        wait_for(lambda: (self.metric(leader.http_port, "fedge_operator_reconcile_total") or 0) >= 1, 30,
                 "the leader to reconcile")
        # Both replicas run, watch the same jobs, and only the Lease holder reconciles.
        first = self.uids("pair")[("ConfigMap", "pair-config")]
        self.kubectl("delete", "configmap", "pair-config")
        wait_for(lambda: self.uids("pair").get(("ConfigMap", "pair-config")) not in (None, first), 60,
                 "the leader to recreate pair-config")
        self.assertEqual(self.readyz(standby), "standby")
        self.assertEqual(self.metric(standby.http_port, "fedge_operator_reconcile_total") or 0, 0)
        uids = self.uids("pair")
        secret = self.get_json("secret", "pair-credentials")["data"]

        # SIGKILL: no release; the standby takes over once the Lease expires on its clock.
        leader.kill()
        leader.wait(10)
        killed = time.time()
        wait_for(lambda: self.readyz(standby) == "ok", 60, "the standby to take over")
        print(f"\n[failover] standby leads {time.time() - killed:.1f}s after the leader was SIGKILLed", flush=True)
        lease = self.get_json("lease", "fedge-operator")
        self.assertIn(f"_{standby.pid}", lease["spec"]["holderIdentity"])
        wait_for(lambda: (self.metric(standby.http_port, "fedge_operator_reconcile_total") or 0) >= 1, 60,
                 "the new leader to reconcile")
        self.assertEqual(self.uids("pair"), uids, "no duplicate or replaced children")
        self.assertEqual(self.get_json("secret", "pair-credentials")["data"], secret, "no second CA")
        self.__class__.operator = standby
        self.kubectl("delete", "configmap", "pair-config")
        wait_for(lambda: self.uids("pair").get(("ConfigMap", "pair-config")) not in
                 (None, uids[("ConfigMap", "pair-config")]), 60, "the new leader to recreate pair-config")
        self.delete_job("pair")

    def test_apply_creates_children_with_owner_references_and_delete_removes_them(self):
        self.assertEqual(self.apply(job_manifest("owned")).returncode, 0)
        kids = wait_for(lambda: (lambda k: k if len(k) >= self.FULL_CHILDREN else None)(self.children("owned")), 60,
                        f"{self.FULL_CHILDREN} children of job owned")
        uid = self.job("owned")["metadata"]["uid"]
        for k in kids:
            refs = k["metadata"].get("ownerReferences", [])
            self.assertEqual([r["uid"] for r in refs], [uid], f"{k['kind']}/{k['metadata']['name']}")
            self.assertTrue(refs[0]["controller"])
        agents = {k["metadata"]["annotations"]["fedge.io/node"] for k in kids
                  if k["kind"] == "Pod" and k["metadata"]["labels"]["fedge.io/role"] == "agent"}
        self.assertEqual(agents, set(NODES))
        svc = next(k for k in kids if k["kind"] == "Service" and k["metadata"]["name"] == "owned-inference")
        self.assertEqual(svc["spec"]["internalTrafficPolicy"], "Local")
        self.assertIn("fedge.io/cleanup", self.job("owned")["metadata"]["finalizers"])
        # The admission plugin admitted them in a restricted namespace: all 4 pods exist.
        self.assertEqual(len([k for k in kids if k["kind"] == "Pod"]), 4)
        # Node directories: 1 local volume per agent (model, data and the state root are
        # subPaths of their common directory; agent pods have no fsGroup, so no kubelet
        # changes ownership in it), bound by the real PV controller to its pre-bound claim.
        pvs = self.node_volumes("owned")
        self.assertEqual(len(pvs), 3)
        self.assertEqual(sorted(pv["spec"]["local"]["path"] for pv in pvs), ["/var/lib/fedge"] * 3)
        for pv in pvs:
            self.assertEqual(pv["spec"]["persistentVolumeReclaimPolicy"], "Retain")
        agent = next(k for k in kids if k["kind"] == "Pod" and k["metadata"]["labels"]["fedge.io/role"] == "agent")
        self.assertNotIn("fsGroup", agent["spec"]["securityContext"])
        mounts = {m["mountPath"]: m for m in agent["spec"]["containers"][0]["volumeMounts"]}
        subpaths = {p: m.get("subPath") for p, m in mounts.items()}
        self.assertEqual(subpaths[NO_MODEL], "test/model")
        self.assertTrue(mounts[NO_MODEL]["readOnly"])
        # The agent container sees only its job's state directory; the whole state root
        # is mounted only into the init container that creates that directory (admitted
        # at the restricted level like the rest).
        self.assertEqual(subpaths["/var/lib/fedge/state/default/owned"], "state/default/owned")
        self.assertFalse(mounts["/var/lib/fedge/state/default/owned"].get("readOnly", False))
        self.assertNotIn("/var/lib/fedge/state", subpaths)
        init = agent["spec"]["initContainers"]
        self.assertEqual([c["name"] for c in init], ["state-dir"])
        self.assertEqual(init[0]["command"], ["fedge-agent", "--make-state-dir", "/var/lib/fedge/state-root",
                                              "default/owned"])
        self.assertEqual([m.get("subPath") for m in init[0]["volumeMounts"]
                          if m["mountPath"] == "/var/lib/fedge/state-root"], ["state"])
        wait_for(lambda: all(c.get("status", {}).get("phase") == "Bound"
                             for c in self.children("owned") if c["kind"] == "PersistentVolumeClaim"
                             and c["metadata"]["name"] != "owned-checkpoints"), 60, "node-volume claims bound")
        # Each node's agent state for the job, as the agents leave it (a feedback log), with
        # a link to another job's directory planted in it: the deletion removes the first
        # and never follows the second.
        states = {n: self.node_state_dir(n, "default/owned") for n in NODES}
        wait_for(lambda: all(os.path.isdir(d) for d in states.values()), 60, "the agents' state directories")
        for node, d in states.items():
            with open(os.path.join(d, "feedback.jsonl"), "w") as f:
                f.write('{"input": "a private request"}\n')
            other = self.node_state_dir(node, "default/other-job")
            os.makedirs(other, exist_ok=True)
            with open(os.path.join(other, "keep"), "w") as f:
                f.write("another job's state")
            os.symlink(other, os.path.join(d, "link-to-other-job"))
        self.delete_job("owned")
        wait_for(lambda: not self.children("owned"), 90, "children of owned to be garbage-collected")
        wait_for(lambda: not self.node_volumes("owned"), 60, "the job's PersistentVolume objects deleted")
        for node, d in states.items():
            self.assertFalse(os.path.lexists(d), f"the job's state is left on {node}: {d}")
            self.assertTrue(os.path.exists(os.path.join(self.node_state_dir(node, "default/other-job"), "keep")),
                            f"the cleanup followed a link on {node}")
        events = json.loads(self.kubectl("get", "events", "--field-selector",
                                         "involvedObject.name=owned,reason=NodeStateRemoved", "-o", "json").stdout)
        self.assertEqual([e["message"] for e in events["items"]],
                         [f"removed the job's agent state (default/owned in the state root) from {len(NODES)} node(s)"])

    def test_a_job_recreated_under_the_same_name_gets_children_of_its_own(self):
        """Deleted and applied again at once: the real garbage collector is still removing
        the first job's Secrets and claims (and the PV controller releasing its volumes)
        when the second one is reconciled. The second waits for them instead of taking them
        over (before, its pods could mount claims the collector then removed, and were
        never given new ones), then every child and node volume is its own."""
        self.assertEqual(self.apply(job_manifest("again")).returncode, 0)
        self.wait_children("again", self.FULL_CHILDREN)
        first = self.job("again")["metadata"]["uid"]
        wait_for(lambda: all(c.get("status", {}).get("phase") == "Bound"
                             for c in self.children("again") if c["kind"] == "PersistentVolumeClaim"
                             and c["metadata"]["name"] != "again-checkpoints"), 60, "node-volume claims bound")
        # A finalizer of the test's holds the first job's credentials Secret after the
        # collector deletes it, so the second job meets it for certain.
        held = self.get_json("secret", "again-credentials")
        self.kubectl("patch", "secret", "again-credentials", "--type=merge",
                     "-p", json.dumps({"metadata": {"finalizers": ["test.fedge.io/hold"]}}))
        self.delete_job("again")
        self.assertEqual(self.apply(job_manifest("again")).returncode, 0)
        second = self.job("again")["metadata"]["uid"]
        self.assertNotEqual(first, second)
        try:
            # Once the collector has removed the rest, the held Secret is what it waits for.
            wait_for(lambda: (lambda c: c.get("reason") == "PreviousJobBeingDeleted"
                              and c.get("message", "").startswith("1 object(s)")
                              and "(secrets/again-credentials)" in c.get("message", ""))(
                                  self.condition("again", "Created") or {}),
                     60, "Created=False/PreviousJobBeingDeleted naming only the held Secret")
            self.assertEqual(self.condition("again", "Created")["status"], "False")
            time.sleep(3)  # passes go on meanwhile: still no pod of its own, the Secret not taken over
            pods = [k for k in self.children("again") if k["kind"] == "Pod"
                    and second in [r["uid"] for r in k["metadata"].get("ownerReferences", [])]]
            self.assertEqual(pods, [])
            now = self.get_json("secret", "again-credentials")
            self.assertEqual([r["uid"] for r in now["metadata"]["ownerReferences"]], [first])
            self.assertEqual(now["data"], held["data"])
            self.assertIn("deletionTimestamp", now["metadata"])
        finally:
            self.kubectl("patch", "secret", "again-credentials", "--type=merge",
                         "-p", json.dumps({"metadata": {"finalizers": None}}), check=False)

        def own_and_bound():
            kids = self.children("again")
            owners = {r["uid"] for k in kids for r in k["metadata"].get("ownerReferences", [])}
            pvs = self.node_volumes("again")
            claims = [c for c in kids if c["kind"] == "PersistentVolumeClaim"
                      and c["metadata"]["name"] != "again-checkpoints"]
            return (len(kids) >= self.FULL_CHILDREN and owners == {second} and len(pvs) == 3
                    and {pv["metadata"]["annotations"].get("fedge.io/job-uid") for pv in pvs} == {second}
                    and len(claims) == 3 and all(c.get("status", {}).get("phase") == "Bound" for c in claims))
        try:
            wait_for(own_and_bound, 120, "the re-created job's own children, node volumes and bound claims")
        except AssertionError as e:
            kids = [(k["kind"], k["metadata"]["name"], [r["uid"] for r in k["metadata"].get("ownerReferences", [])],
                     k.get("status", {}).get("phase")) for k in self.children("again")]
            raise AssertionError(f"{e}\nfirst {first}, second {second}\nchildren: {kids}\n"
                                 f"volumes: {[(pv['metadata']['name'], pv['metadata'].get('annotations')) for pv in self.node_volumes('again')]}\n"
                                 f"job status: {json.dumps(self.job('again').get('status', {}))}") from None
        created = self.condition("again", "Created")
        self.assertEqual(created["status"], "True", created)
        self.delete_job("again")
        wait_for(lambda: not self.children("again") and not self.node_volumes("again"), 60,
                 "children and volumes of again removed")

    def test_invalid_manifests_are_rejected_by_schema_or_condition(self):
        schema_cases = {
            "missing-model": ({"spec.model": None}, "spec.model"),
            "missing-data": ({"spec.data": None}, "spec.data"),
            "negative-rounds": ({"spec.rounds.total": -3}, "spec.rounds.total"),
            "quorum-above-max": ({"spec.rounds.quorum": 5, "spec.agents.maxAgents": 2}, "quorum"),
            "unknown-strategy": ({"spec.strategy": {"name": "fedmagic"}}, "spec.strategy.name"),
            "unknown-codec": ({"spec.compression": {"codec": "int3"}}, "spec.compression.codec"),
            "min-above-max": ({"spec.agents.minAgents": 3, "spec.agents.maxAgents": 2}, "minAgents"),
            "fraction-above-one": ({"spec.rounds": {"total": 2, "fraction": 1.5}}, "spec.rounds.fraction"),
            "llama-classifier": ({"spec.model.family": "llama"}, "causal-lm"),
            "bad-clean-policy": ({"spec.runPolicy": {"cleanPodPolicy": "Sometimes"}}, "cleanPodPolicy"),
            "fedprox-without-mu": ({"spec.strategy": {"name": "fedprox"}}, "proximalMu"),
            "zero-rank": ({"spec.adapter": {"rank": 0}}, "spec.adapter.rank"),
            "bad-port": ({"spec.serving": {"port": 70000}}, "spec.serving.port"),
            "x" * 41: ({}, "metadata.name"),
            # Rules the operator used to find only after apply (InvalidSpec); the CRD's CEL
            # rules refuse them now (tests/cluster/spec_boundaries_test.py checks every
            # boundary against ValidateJobSpec; the InvalidSpec path is reconciler_test's).
            "krum-too-few-agents": ({"spec.strategy": {"name": "krum", "byzantineClients": 1}}, "spec.strategy"),
            "one-label": ({"spec.model.labels": ["only"]}, "spec.model.labels"),
            "quorum-above-min-agents": ({"spec.rounds.quorum": 3}, "spec.rounds.quorum"),
            "llama-frozen-a": ({"spec.model.family": "llama", "spec.model.task": "causal-lm",
                                "spec.model.labels": None, "spec.adapter": {"aggregation": "frozen-a"}},
                               "spec.adapter.aggregation"),
        }
        for name, (overrides, expect) in schema_cases.items():
            with self.subTest(name=name):
                out = self.apply(job_manifest(name, overrides))
                self.assertNotEqual(out.returncode, 0, f"{name} was accepted")
                self.assertIn(expect, out.stderr)

    def test_restarted_operator_creates_no_duplicates_and_one_replica_leads(self):
        self.assertEqual(self.apply(job_manifest("restart", runPolicy={"suspend": False})).returncode, 0)
        before = wait_for(lambda: (lambda k: k if len(k) >= self.FULL_CHILDREN else None)(self.children("restart")),
                          60, "children of restart")
        uids = {(k["kind"], k["metadata"]["name"]): k["metadata"]["uid"] for k in before}
        secret = self.get_json("secret", "restart-credentials")["data"]
        # A standby replica does not reconcile while the first one leads.
        standby = self.start_operator()
        self.assertEqual(self.http_get(standby.http_port, "/readyz")[1].strip(), "standby")
        # The leader stops gracefully: it releases the Lease, the standby takes over.
        self.operator.send_signal(signal.SIGTERM)
        self.assertEqual(self.operator.wait(30), 0)
        wait_for(lambda: self.http_get(standby.http_port, "/readyz")[1].strip() == "ok", 60, "standby to lead")
        self.__class__.operator = standby  # the leader now, whatever the assertions below say
        lease = self.get_json("lease", "fedge-operator")
        self.assertIn(str(standby.pid), lease["spec"]["holderIdentity"])
        wait_for(lambda: (self.metric(standby.http_port, "fedge_operator_reconcile_total") or 0) >= 1, 60,
                 "the new leader to reconcile")
        after = self.children("restart")
        self.assertEqual({(k["kind"], k["metadata"]["name"]): k["metadata"]["uid"] for k in after
                          if k["kind"] != "Pod"},
                         {k: v for k, v in uids.items() if k[0] != "Pod"})
        # Agents fail and are recreated here (no model on the node), so a pod may be between
        # its deletion and its replacement at any moment: never more than 4, and 4 again.
        pods = lambda: {k["metadata"]["name"] for k in self.children("restart") if k["kind"] == "Pod"}  # noqa: E731
        self.assertLessEqual(len(pods()), 4)
        wait_for(lambda: len(pods()) == 4, 60, "the aggregator and 3 agent pods")
        self.assertEqual(self.get_json("secret", "restart-credentials")["data"], secret)
        self.delete_job("restart")

    def test_node_not_ready_is_reported_in_conditions(self):
        # Agents fail here (no model on the node); a high backoffLimit keeps restarts from
        # degrading the job for another reason while the node flaps.
        self.assertEqual(self.apply(job_manifest("nodes", runPolicy={"backoffLimit": 1000})).returncode, 0)
        wait_for(lambda: self.condition("nodes", "Created"), 60, "job nodes created")
        self.runner_post("/nodes/edge-2/notready")
        try:
            c = wait_for(lambda: (lambda c: c if c and c["reason"] == "NodeNotReady" else None)(
                self.condition("nodes", "Degraded")), 60, "Degraded/NodeNotReady condition")
            self.assertEqual(c["status"], "True")
            self.assertEqual(c["reason"], "NodeNotReady")
            self.assertIn("edge-2", c["message"])
        finally:
            self.runner_post("/nodes/edge-2/ready")
        wait_for(lambda: (self.condition("nodes", "Degraded") or {}).get("status") == "False", 60,
                 "Degraded to clear")
        self.delete_job("nodes")

    def test_state_of_a_node_away_at_deletion_is_removed_when_it_comes_back(self):
        """A node that is away when its job is deleted (NotReady: its kubelet acts on nothing)
        does not hold the deletion, and its agent state is not left for ever: the job goes
        at once, leaving its cleanup pod gated and owned by nothing with the node's claim;
        once the node is back and the job's agent has left it, the operator lifts the gate,
        the cleanup runs there, and the pod, the claim and the volume go."""
        away = NODES[2]
        self.assertEqual(self.apply(job_manifest("away", runPolicy={"backoffLimit": 1000})).returncode, 0)
        states = self.agent_state_written("away")
        self.runner_post(f"/nodes/{away}/notready")
        self.addCleanup(self.runner_post, f"/nodes/{away}/ready")
        wait_for(lambda: (self.condition("away", "Degraded") or {}).get("reason") == "NodeNotReady", 60,
                 "the operator to see the node NotReady")
        t = time.monotonic()
        self.delete_job("away")
        took = time.monotonic() - t
        self.assertLess(took, 60, "the node that is away held the deletion")
        pod_name = f"away-state-cleanup-{away}"
        pod = self.get_json("pod", pod_name)
        self.assertIsNotNone(pod, "no deferred cleanup pod")
        self.assertNotIn("ownerReferences", pod["metadata"])
        self.assertEqual(pod["metadata"]["labels"].get("fedge.io/state-cleanup"), "deferred")
        self.assertEqual(pod["spec"].get("schedulingGates"), [{"name": "fedge.io/node-back"}])
        self.assertNotIn("nodeName", pod["spec"], "scheduled while its node is away")
        claim_name = pod["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"]
        claim = self.get_json("pvc", claim_name)
        self.assertIsNotNone(claim, "the node's claim went with the job")
        self.assertNotIn("ownerReferences", claim["metadata"])
        self.assertEqual(claim["metadata"]["annotations"].get("fedge.io/state-cleanup-pod"), pod_name)
        pv_name = claim["spec"]["volumeName"]
        self.assertIsNotNone(self.get_json("pv", pv_name))
        for node, d in states.items():
            if node != away:
                self.assertFalse(os.path.lexists(d), f"the job's state is left on {node}: {d}")
        self.assertTrue(os.path.isfile(os.path.join(states[away], "feedback.jsonl")))
        events = wait_for(lambda: json.loads(self.kubectl(
            "get", "events", "--field-selector", "involvedObject.name=away,reason=NodeStateRemovalDeferred",
            "-o", "json").stdout)["items"], 30, "the NodeStateRemovalDeferred event")
        self.assertEqual(len(events), 1, events)
        self.assertIn(f"{away} (the node is not Ready) is removed when the node is back", events[0]["message"])
        # Its agent pod is still there, Terminating: no kubelet confirmed it stopped. (Unless
        # the node went away between two of its agent's runs: the agents here fail at once,
        # having no model; a pod that has ended, or one not scheduled, is deleted outright.)
        def agents():
            return [p for p in self.get_json("pods", "-l", "fedge.io/job=away")["items"]
                    if p["metadata"]["labels"]["fedge.io/role"] == "agent"]
        wait_for(lambda: {p["spec"].get("nodeName") for p in agents()} <= {away}, 60,
                 "the agents of the nodes that are there to go")
        for p in agents():
            self.assertIn("deletionTimestamp", p["metadata"], p["metadata"]["name"])
        time.sleep(3)
        self.assertEqual(self.get_json("pod", pod_name)["spec"].get("schedulingGates"),
                         [{"name": "fedge.io/node-back"}], "the gate was lifted while the node was away")
        t = time.monotonic()
        self.runner_post(f"/nodes/{away}/ready")
        wait_for(lambda: not os.path.lexists(states[away]), 90, f"the job's state removed from {away}")
        wait_for(lambda: self.get_json("pod", pod_name) is None and self.get_json("pvc", claim_name) is None
                 and self.get_json("pv", pv_name) is None, 60, "the cleanup pod, its claim and volume to go")
        print(f"\n[node away] {away} back -> state removed and the record gone in {time.monotonic() - t:.1f} s",
              flush=True)
        events = wait_for(lambda: json.loads(self.kubectl(
            "get", "events", "--field-selector", f"involvedObject.name={pod_name},reason=NodeStateRemoved",
            "-o", "json").stdout)["items"], 30, "the NodeStateRemoved event")
        self.assertEqual(len(events), 1, events)
        self.assertIn(f"FederatedTrainingJob default/away from node {away}", events[0]["message"])
        # The other nodes' cleanup pods were the job's: the garbage collector takes them.
        wait_for(lambda: self.get_json("pods", "-l", "fedge.io/job=away")["items"] == [], 90,
                 "every pod of the job to go")

    def test_a_foreground_deletion_removes_the_nodes_state_too(self):
        """`kubectl delete --cascade=foreground` (what Argo CD and `ttlSecondsAfterFinished`
        use) makes the garbage collector delete the job's children before the job, the node
        claims the state-cleanup pods mount among them. The agents' state must not stay on
        the nodes for it: the operator makes each node's claim again for its volume, as the
        record of a node that was away, and the cleanup runs once the job has gone. Then the
        pods, the claims and the volumes go too."""
        self.assertEqual(self.apply(job_manifest("fg", runPolicy={"backoffLimit": 1000})).returncode, 0)
        states = self.agent_state_written("fg")
        # The garbage collector acts on a kind only once it watches it: it looks for new
        # kinds every 30 s (kube-controller-manager's discovery resync). Before that, a
        # foreground deletion of a job is a background one.
        time.sleep(max(0.0, self.crd_served + 45 - time.monotonic()))
        t = time.monotonic()
        self.assertEqual(self.kubectl("delete", "ftj", "fg", "--cascade=foreground", "--wait=false").returncode, 0)
        wait_for(lambda: self.kubectl("get", "ftj", "fg", check=False).returncode != 0, 120, "job fg deleted")
        gone = time.monotonic() - t
        try:
            for node, d in states.items():
                wait_for(lambda: not os.path.lexists(d), 90, f"the job's state removed from {node}")
        except AssertionError:
            for what in (("get", "pods,pvc", "-o", "wide", "-l", "fedge.io/job=fg"), ("get", "pv", "-o", "wide"),
                         ("get", "events", "-o", "wide", "--field-selector", "type!=Normal"),
                         ("get", "events", "--field-selector", "involvedObject.name=fg")):
                print(self.kubectl(*what, check=False).stdout[-4000:], flush=True)
            with open(os.path.join(self.tmp, "operator-0.log")) as f:
                print("".join(line for line in f.readlines()[-60:] if "fg" in line)[-6000:], flush=True)
            raise
        removed = time.monotonic() - t
        wait_for(lambda: self.get_json("pods", "-l", "fedge.io/job=fg")["items"] == []
                 and self.get_json("pvc", "-l", "fedge.io/job=fg")["items"] == [] and self.node_volumes("fg") == [],
                 90, "every pod, claim and volume of the job to go")
        print(f"\n[foreground] job gone {gone:.1f} s, "
              f"state removed from {len(NODES)} nodes "
              f"{removed:.1f} s, everything gone {time.monotonic() - t:.1f} s after the deletion", flush=True)
        # Each node's cleanup says so on its pod: it waited for the job to go (the collector
        # takes every claim). None runs as a pod the job owns: the collector would delete
        # that too, killing it mid-removal (CI of 633456a: exit code 143 on a node whose
        # agent went before the collector got to its claim); a count on the job would be one.
        def removed_events():
            got = json.loads(self.kubectl("get", "events", "--field-selector", "reason=NodeStateRemoved",
                                          "-o", "json").stdout)["items"]
            records = [e["involvedObject"]["name"] for e in got
                       if "FederatedTrainingJob default/fg " in e["message"] and "foreground deletion" in e["message"]]
            counted = sum(int(re.search(r"from (\d+) node", e["message"]).group(1)) for e in got
                          if e["involvedObject"]["kind"] == "FederatedTrainingJob" and e["involvedObject"]["name"] == "fg")
            return records, counted
        try:
            records, counted = wait_for(lambda: (lambda r: r if len(r[0]) + r[1] == len(NODES) else None)(
                removed_events()), 30, "a NodeStateRemoved event for each node")
        except AssertionError:
            print(self.kubectl("get", "events", "-o", "wide").stdout[-8000:], flush=True)
            raise
        self.assertEqual((len(records), counted), (len(NODES), 0),
                         "a node's cleanup ran as a pod the job owns, which the collector deletes")
        print(f"[foreground] {len(records)} of {len(NODES)} nodes' claims taken by the collector first", flush=True)
        left = json.loads(self.kubectl("get", "events", "--field-selector", "reason=NodeStateLeft",
                                       "-o", "json").stdout)["items"]
        self.assertEqual([e["message"] for e in left if "default/fg " in e["message"] or
                          e["involvedObject"]["name"] == "fg"], [])

    def test_a_foreground_deletion_with_a_node_away_removes_its_state_when_it_is_back(self):
        """A foreground deletion while a node is away: the collector deletes that node's
        claim too, but the claim goes only once the node's kubelet is back and has stopped
        the agent, after the job has gone, so no record can take it over. The record gets a
        claim and a volume of its own for the node's directory; the operator's finalizer is
        done at once, the other nodes are cleaned, and once the node is back (and the job
        gone) its state is removed and the record, the old claim and both volumes go."""
        away = NODES[2]
        self.assertEqual(self.apply(job_manifest("fgaway", runPolicy={"backoffLimit": 1000})).returncode, 0)
        states = self.agent_state_written("fgaway")
        self.runner_post(f"/nodes/{away}/notready")
        self.addCleanup(self.runner_post, f"/nodes/{away}/ready")
        wait_for(lambda: (self.condition("fgaway", "Degraded") or {}).get("reason") == "NodeNotReady", 60,
                 "the operator to see the node NotReady")
        time.sleep(max(0.0, self.crd_served + 45 - time.monotonic()))  # the collector watches the kind
        # Which comes first, the collector deleting the node's claim or the finalizer taking
        # it over for the record (the collector then leaves it: no owner), is a race; the
        # operator is held (SIGSTOP) until the collector has taken it, the case tested here.
        # Its agent ran when the node went away: the kubelet being away, its pod is deleted
        # but stays, and holds the node's claim. (Here the agents fail at once, having no
        # model, and the operator makes them again; a pod that has ended would be deleted
        # outright. So the node's newest agent pod, not scheduled while the node is away,
        # is bound to it as the scheduler had before the node went.)
        live = [p for p in self.operators if p.poll() is None]
        claim_of_away = next(c["metadata"]["name"] for c in self.get_json("pvc", "-l", "fedge.io/job=fgaway")["items"]
                             if c["metadata"].get("annotations", {}).get("fedge.io/node") == away)

        def agent_on_away():
            return next((p for p in self.get_json("pods", "-l", "fedge.io/job=fgaway,fedge.io/role=agent")["items"]
                         if p["metadata"].get("annotations", {}).get("fedge.io/node") == away
                         and "deletionTimestamp" not in p["metadata"]
                         and p.get("status", {}).get("phase") not in ("Succeeded", "Failed")), None)
        t = time.monotonic()
        try:
            while True:
                wait_for(agent_on_away, 60, f"an agent pod for {away}")
                for p in live:
                    os.kill(p.pid, signal.SIGSTOP)
                held = agent_on_away()
                if held:
                    break
                for p in live:
                    os.kill(p.pid, signal.SIGCONT)
            if not held["spec"].get("nodeName"):
                binding = {"apiVersion": "v1", "kind": "Binding", "metadata": {"name": held["metadata"]["name"]},
                           "target": {"apiVersion": "v1", "kind": "Node", "name": away}}
                self.kubectl("create", "--raw", f"/api/v1/namespaces/default/pods/{held['metadata']['name']}/binding",
                             "-f", "-", stdin=json.dumps(binding))
            bound = self.get_json("pod", held["metadata"]["name"])
            self.assertEqual((bound or {}).get("spec", {}).get("nodeName"), away, "the agent pod bound to the node")
            self.assertEqual(self.kubectl("delete", "ftj", "fgaway", "--cascade=foreground", "--wait=false").returncode,
                             0)
            wait_for(lambda: "deletionTimestamp" in (self.get_json("pvc", claim_of_away) or {}).get("metadata", {}), 60,
                     "the collector to delete the claim of the node that is away")
        finally:
            for p in live:
                os.kill(p.pid, signal.SIGCONT)
        # The operator's finalizer is done at once. The job itself stays until the node is
        # back: the collector deletes an owner only once its blocking dependents are gone,
        # and the agent pod on the node that is away goes only when its kubelet stops it.
        wait_for(lambda: "fedge.io/cleanup" not in (self.job("fgaway").get("metadata", {}).get("finalizers") or []),
                 120, "the operator's finalizer to finish")
        done = time.monotonic() - t
        for node, d in states.items():
            if node != away:
                wait_for(lambda d=d: not os.path.lexists(d), 90, f"the job's state removed from {node}")
        self.assertTrue(os.path.isfile(os.path.join(states[away], "feedback.jsonl")), "removed while away")
        pod_name = f"fgaway-state-cleanup-{away}"
        pod = self.get_json("pod", pod_name)
        self.assertIsNotNone(pod, "no record for the node that is away")
        self.assertNotIn("ownerReferences", pod["metadata"])
        self.assertEqual(pod["spec"].get("schedulingGates"), [{"name": "fedge.io/node-back"}])
        claim_name = pod["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"]
        self.assertTrue(claim_name.startswith(f"fgaway-record-{away}-"), claim_name)
        claim = self.get_json("pvc", claim_name)
        self.assertIsNotNone(claim, "the record's claim")
        self.assertNotIn("ownerReferences", claim["metadata"])
        self.assertNotIn("deletionTimestamp", claim["metadata"])
        self.assertEqual(claim["metadata"]["annotations"].get("fedge.io/state-cleanup-cause"), "foreground-deletion")
        pv = self.get_json("pv", claim["spec"]["volumeName"])
        self.assertEqual(pv["spec"]["claimRef"]["name"], claim_name)
        old = self.get_json("pvc", claim_of_away)
        pod_held = self.get_json("pod", held["metadata"]["name"])
        self.assertIsNotNone(old, "the node's claim went: the agent pod that held it is "
                             f"{json.dumps((pod_held or {}).get('status', 'gone'))[:1500]}")
        self.assertIn("deletionTimestamp", old["metadata"], "the node's claim, held by the agent pod the away "
                      "kubelet has not stopped")
        self.assertEqual(pv["spec"]["local"]["path"],
                         self.get_json("pv", old["spec"]["volumeName"])["spec"]["local"]["path"], "the same directory")
        print(f"\n[foreground, node away] the operator's finalizer done {done:.1f} s after the deletion "
              f"(the operator held for part of it)", flush=True)
        t = time.monotonic()
        self.runner_post(f"/nodes/{away}/ready")
        wait_for(lambda: self.kubectl("get", "ftj", "fgaway", check=False).returncode != 0, 90, "job fgaway deleted")
        wait_for(lambda: not os.path.lexists(states[away]), 90, f"the job's state removed from {away}")
        wait_for(lambda: self.get_json("pods", "-l", "fedge.io/job=fgaway")["items"] == []
                 and self.get_json("pvc", "-l", "fedge.io/job=fgaway")["items"] == []
                 and self.node_volumes("fgaway") == [], 90, "every pod, claim and volume of the job to go")
        print(f"[foreground, node away] {away} back -> state removed and everything gone in "
              f"{time.monotonic() - t:.1f} s", flush=True)
        events = wait_for(lambda: json.loads(self.kubectl(
            "get", "events", "--field-selector", f"involvedObject.name={pod_name},reason=NodeStateRemoved",
            "-o", "json").stdout)["items"], 30, "the NodeStateRemoved event")
        self.assertEqual(len(events), 1, events)
        left = json.loads(self.kubectl("get", "events", "--field-selector", "reason=NodeStateLeft",
                                       "-o", "json").stdout)["items"]
        self.assertEqual([e["message"] for e in left if "fgaway" in e["message"]], [])

    # ---- issue 10: pods, node directories, RBAC, token, network policies, checkpoints ----
    def test_restricted_namespace_refuses_a_host_path_pod(self):
        # The admission plugin is live: the pods the other tests see were checked by it.
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "escape", "namespace": "default"},
               "spec": {"containers": [{"name": "c", "image": "fedge/agent:0"}],
                        "volumes": [{"name": "root", "hostPath": {"path": "/"}}]}}
        out = self.apply(pod)
        self.assertNotEqual(out.returncode, 0, "a hostPath pod was admitted")
        self.assertIn('violates PodSecurity "restricted:latest"', out.stderr)
        self.assertIn("hostPath", out.stderr)

    def test_job_outside_the_allowed_prefixes_gets_a_condition_and_no_children(self):
        for name, overrides in {"etc-data": {"spec.data.path": "/etc"},
                                "dotdot-model": {"spec.model.path": "/var/lib/fedge/../../root"}}.items():
            with self.subTest(name=name):
                self.assertEqual(self.apply(job_manifest(name, overrides)).returncode, 0)
                c = wait_for(lambda: self.condition(name, "Failed"), 30, f"Failed condition on {name}")
                self.assertEqual(c["reason"], "HostPathNotAllowed")
                self.assertIn("--allowed-host-path-prefix", c["message"])
                self.assertEqual(self.children(name), [])
                self.assertEqual(self.node_volumes(name), [])
                self.delete_job(name)

    def test_inference_token_and_network_policies_are_accepted_by_the_api_server(self):
        self.assertEqual(self.apply(job_manifest("netpol", agents=self.PODLESS)).returncode, 0)
        self.wait_children("netpol", self.PODLESS_CHILDREN)
        token = self.get_json("secret", "netpol-inference-token")
        self.assertRegex(base64.b64decode(token["data"]["token"]).decode(), r"^[0-9a-f]{64}$")
        agents = self.get_json("networkpolicy", "netpol-agents")
        self.assertEqual(agents["spec"]["podSelector"]["matchLabels"],
                         {"fedge.io/job": "netpol", "fedge.io/role": "agent"})
        peers = agents["spec"]["ingress"][0]["from"]
        self.assertIn({"podSelector": {}}, peers)
        self.assertIn({"namespaceSelector": {}, "podSelector": {"matchLabels": {"fedge.io/inference-client": "true"}}},
                      peers)
        self.assertIn({"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}, peers)
        # Egress as the API server stored it: the job's aggregator only, no DNS.
        self.assertEqual(agents["spec"]["policyTypes"], ["Ingress", "Egress"])
        self.assertEqual(agents["spec"]["egress"], [
            {"to": [{"podSelector": {"matchLabels": {"fedge.io/job": "netpol", "fedge.io/role": "aggregator"}}}],
             "ports": [{"port": 7070, "protocol": "TCP"}]}])
        agg = self.get_json("networkpolicy", "netpol-aggregator")
        grpc = agg["spec"]["ingress"][0]
        self.assertEqual(grpc["ports"], [{"port": 7070, "protocol": "TCP"}])
        self.assertEqual(grpc["from"], [{"podSelector": {"matchLabels": {"fedge.io/job": "netpol",
                                                                         "fedge.io/role": "agent"}}}])
        # Out of the aggregator: the API server only, at the addresses this API server's own
        # `kubernetes` EndpointSlice lists. This control plane listens on loopback, which
        # an EndpointSlice may not hold, so it has none: the operator cannot know the
        # address and leaves the aggregator's egress open (its status reporter must get
        # through), saying why. real_e2e checks the rules on real nodes, where it has one.
        want = self.api_server_egress()
        self.assertEqual(agg["spec"].get("egress"), want)
        self.assertEqual(agg["spec"]["policyTypes"], ["Ingress", "Egress"] if want else ["Ingress"])
        if not want:
            self.assertIn("cannot read the API server's endpoints", self.operator_log())
        self.delete_job("netpol")

    def test_agents_an_older_operator_made_may_query_dns_until_replaced(self):
        """An agent pod an operator before session 33 made resolves the aggregator by name,
        which the job's agent policy no longer admits: the operator labels it and keeps
        <job>-agents-dns for it alone, then deletes that policy once the pod is gone. Here
        on a real API server (label patch, policy, deletion); the pod is made by hand as
        that operator made it, on a cordoned Node object (kept, not replaced, and run by no
        one); the job's other agent, on a second Node object, is this operator's."""
        ghosts = ["dnsold-ghost-1", "dnsold-ghost-2"]
        self.kubectl("apply", "-f", "-", stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": [
            {"apiVersion": "v1", "kind": "Node",
             "metadata": {"name": g, "labels": {"fedge.io/pool": "dnsold", "kubernetes.io/hostname": g}},
             "spec": {"unschedulable": g == ghosts[1]}} for g in ghosts]}))
        try:
            self.assertEqual(self.apply(job_manifest("dnsold", agents={"nodeSelector": {"fedge.io/pool": "dnsold"}},
                                                     runPolicy={"backoffLimit": 1000})).returncode, 0)
            current = wait_for(lambda: self.get_json("pod", f"dnsold-agent-{ghosts[0]}"), 60, "the agent pod")
            cmd = current["spec"]["containers"][0]["command"]
            self.assertEqual(cmd[cmd.index("--aggregator") + 1], "$(DNSOLD_AGGREGATOR_SERVICE_HOST):7070")
            # The pod the older operator made for the (since cordoned) second node.
            old = json.loads(json.dumps(current).replace(ghosts[0], ghosts[1]))
            old.pop("status", None)
            for k in ("uid", "resourceVersion", "creationTimestamp", "managedFields", "generation"):
                old["metadata"].pop(k, None)
            old_cmd = old["spec"]["containers"][0]["command"]
            old_cmd[old_cmd.index("--aggregator") + 1] = "dnsold-aggregator.default.svc:7070"
            self.kubectl("create", "-f", "-", stdin=json.dumps(old))

            def dns_policy():
                return self.get_json("networkpolicy", "dnsold-agents-dns")
            policy = wait_for(dns_policy, 30, "policy dnsold-agents-dns")
            self.assertEqual(policy["spec"]["podSelector"]["matchLabels"],
                             {"fedge.io/job": "dnsold", "fedge.io/role": "agent",
                              "fedge.io/resolves-aggregator-by-name": "true"})
            self.assertEqual(policy["spec"]["policyTypes"], ["Egress"])
            self.assertEqual(policy["spec"]["egress"], [
                {"to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
                         "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}],
                 "ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]}])
            labelled = wait_for(lambda: (lambda p: p if p and p["metadata"]["labels"].get(
                "fedge.io/resolves-aggregator-by-name") == "true" else None)(
                self.get_json("pod", f"dnsold-agent-{ghosts[1]}")), 30, "the old pod labelled")
            self.assertNotIn("fedge.io/resolves-aggregator-by-name",
                             self.get_json("pod", f"dnsold-agent-{ghosts[0]}")["metadata"]["labels"],
                             "this operator's agents get no DNS")
            # The API server's label selector picks the old pod alone.
            picked = self.get_json("pods", "-l", "fedge.io/job=dnsold,fedge.io/resolves-aggregator-by-name=true")
            self.assertEqual([p["metadata"]["uid"] for p in picked["items"]], [labelled["metadata"]["uid"]])
            agents = self.get_json("networkpolicy", "dnsold-agents")
            self.assertEqual(len(agents["spec"]["egress"]), 1, "the job's agents: no DNS")
            # Gone (replaced, or its node left): the policy goes with it.
            self.kubectl("delete", "pod", f"dnsold-agent-{ghosts[1]}", "--wait=false")
            wait_for(lambda: dns_policy() is None, 30, "policy dnsold-agents-dns deleted")
            self.delete_job("dnsold")
        finally:
            self.kubectl("delete", "node", *ghosts, "--ignore-not-found", check=False)

    def final_model_served_events(self):
        items = json.loads(self.kubectl("get", "events", "--field-selector", "reason=FinalModelServed",
                                        "-o", "json").stdout)["items"]
        return sorted(items, key=lambda e: (e.get("firstTimestamp") or "", e["metadata"]["name"]))

    def operator_log(self):
        with open(os.path.join(self.tmp, f"operator-{len(self.operators) - 1}.log")) as f:
            return f.read()

    def api_server_egress(self):
        """The aggregator's egress rules this API server's `kubernetes` EndpointSlice calls
        for; None without one."""
        eps = self.get_json("endpointslice", "kubernetes", "-n", "default")
        if eps is None:
            return None
        port = next(p["port"] for p in eps["ports"] if p.get("name") == "https")
        ips = sorted(a for e in eps["endpoints"] for a in e["addresses"]
                     if e.get("conditions", {}).get("ready", True))
        self.assertTrue(ips, eps)
        return [{"to": [{"ipBlock": {"cidr": f"{ip}/32"}} for ip in ips], "ports": [{"port": port, "protocol": "TCP"}]}]

    def test_failed_aggregator_is_replaced_on_its_checkpoint_claim(self):
        # Agents fail here (no model on the node); a high backoffLimit keeps the job going.
        self.assertEqual(self.apply(job_manifest("durable", runPolicy={"backoffLimit": 1000})).returncode, 0)
        first = wait_for(lambda: (lambda p: p if p and p.get("status", {}).get("phase") == "Running" else None)(
            self.get_json("pod", "durable-aggregator")), 90, "the aggregator to run")
        vol = next(v for v in first["spec"]["volumes"] if v["name"] == "checkpoints")
        self.assertEqual(vol["persistentVolumeClaim"]["claimName"], "durable-checkpoints")
        pvc = wait_for(lambda: (lambda c: c if c and c.get("status", {}).get("phase") == "Bound" else None)(
            self.get_json("pvc", "durable-checkpoints")), 60, "the checkpoint claim to bind")
        self.assertEqual(pvc["spec"]["storageClassName"], CHECKPOINT_CLASS, "the cluster's default class")
        self.assertEqual(self.runner_post("/pods/default/durable-aggregator/kill")["killed"], 1)
        second = wait_for(lambda: (lambda p: p if p and p["metadata"]["uid"] != first["metadata"]["uid"]
                                   and p.get("status", {}).get("phase") == "Running" else None)(
            self.get_json("pod", "durable-aggregator")), 90, "a replacement aggregator pod")
        vol = next(v for v in second["spec"]["volumes"] if v["name"] == "checkpoints")
        self.assertEqual(vol["persistentVolumeClaim"]["claimName"], "durable-checkpoints")
        after = self.get_json("pvc", "durable-checkpoints")
        self.assertEqual(after["metadata"]["uid"], pvc["metadata"]["uid"])
        self.assertEqual(after["spec"]["volumeName"], pvc["spec"]["volumeName"], "the same volume: the same checkpoint")
        # Counted by the pass that deleted the pod. A pass working from a cache that had not
        # seen that write used to apply its status over it and take the count back to 0.
        wait_for(lambda: self.job("durable")["status"].get("restarts", 0) >= 1, 10, "status.restarts >= 1")
        time.sleep(2)  # later passes (the recreated pod's) must not take it back
        self.assertGreaterEqual(self.job("durable")["status"].get("restarts", 0), 1)
        self.delete_job("durable")

    def test_operator_runs_with_the_charts_namespaced_rbac(self):
        """The chart's RBAC with watchNamespace set is enough for a whole job, and no more."""
        helm = chart_helm()
        if not helm:
            self.skipTest("SKIP: helm not built (scripts/cluster/build-helm.sh)")
        out = subprocess.run([helm, "template", "rel", os.path.join(ROOT, "helm", "fedge"), "--namespace",
                              "fedge-system", "--set", "watchNamespace=fedge-jobs"],
                             capture_output=True, text=True, timeout=120)
        self.assertEqual(out.returncode, 0, out.stderr)
        import yaml  # python3-yaml (scripts/install-deps.sh)
        rbac = [d for d in yaml.safe_load_all(out.stdout) if d and d["kind"] in
                ("ServiceAccount", "Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding", "Lease")]
        for ns in ("fedge-system", "fedge-jobs"):
            self.kubectl("create", "namespace", ns, check=False)
        self.kubectl("label", "namespace", "fedge-jobs", "--overwrite", "pod-security.kubernetes.io/enforce=restricted")
        self.kubectl("apply", "-f", "-", stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": rbac}))
        sa = "system:serviceaccount:fedge-system:rel-fedge-operator"
        can = lambda *a: self.kubectl("auth", "can-i", *a, "--as", sa, check=False).stdout.strip()  # noqa: E731
        self.assertEqual(can("create", "secrets", "-n", "fedge-jobs"), "yes")
        self.assertEqual(can("get", "secrets", "-n", "default"), "no", "no cluster-wide secrets")
        self.assertEqual(can("create", "roles", "-n", "default"), "no", "no cluster-wide roles")
        self.assertEqual(can("update", "leases/rel-fedge-operator", "-n", "fedge-system"), "yes")
        self.assertEqual(can("update", "leases", "-n", "fedge-jobs"), "no", "the Lease in the release namespace only")
        self.assertEqual(can("create", "leases", "-n", "fedge-system"), "no", "the chart makes the Lease")
        self.assertEqual(can("get", "endpointslices.discovery.k8s.io/kubernetes", "-n", "default"), "yes")
        self.assertEqual(can("list", "endpointslices.discovery.k8s.io", "-n", "default"), "no", "that one slice only")
        self.assertEqual(can("get", "endpointslices.discovery.k8s.io/kubernetes", "-n", "fedge-jobs"), "no")
        token = self.kubectl("create", "token", "rel-fedge-operator", "-n", "fedge-system").stdout.strip()
        with open(self.kubeconfig) as f:
            admin = yaml.safe_load(f)
        cluster = admin["clusters"][0]["cluster"]
        kc = os.path.join(self.tmp, "operator-sa.kubeconfig")
        with open(kc, "w") as f:
            json.dump({"apiVersion": "v1", "kind": "Config", "current-context": "sa",
                       "clusters": [{"name": "c", "cluster": cluster}],
                       "users": [{"name": "sa", "user": {"token": token}}],
                       "contexts": [{"name": "sa", "context": {"cluster": "c", "user": "sa", "namespace": "fedge-jobs"}}]},
                      f)
        # Only this operator may reconcile fedge-jobs meanwhile: stop the cluster-wide one.
        self.operator.send_signal(signal.SIGTERM)
        self.assertEqual(self.operator.wait(30), 0)
        port = free_port()
        log = open(os.path.join(self.tmp, "operator-rbac.log"), "w")
        p = subprocess.Popen([OPERATOR, "--kubeconfig", kc, "--namespace", "fedge-jobs", "--leader-elect",
                              "--leader-election-namespace", "fedge-system", "--leader-election-id",
                              "rel-fedge-operator", "--http", f"127.0.0.1:{port}",
                              "--allowed-host-path-prefix", "/var/lib/fedge"], stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_for(lambda: self.http_get(port, "/readyz")[1].strip() == "ok", 60, "the namespaced operator to lead")
            manifest = job_manifest("scoped", runPolicy={"backoffLimit": 1000})
            manifest["metadata"]["namespace"] = "fedge-jobs"
            self.assertEqual(self.apply(manifest).returncode, 0)

            def kids():
                got = self.get_json("pods,secrets,roles.rbac.authorization.k8s.io,rolebindings.rbac.authorization.k8s.io,"
                                    "persistentvolumeclaims,networkpolicies.networking.k8s.io", "-n", "fedge-jobs",
                                    "-l", "fedge.io/job=scoped")
                return got["items"] if got else []
            # 4 pods (admitted at restricted; made only once the operator had read the issuer's keys
            # through the chart's ClusterRole), 2 secrets, role + binding, 4 claims (checkpoint + one
            # node volume per agent), 2 policies
            wait_for(lambda: len(kids()) >= 14, 90, "the job's children made with the namespaced RBAC")
            self.assertEqual(len(self.get_json("pv", "-l", "fedge.io/job=scoped")["items"]), 3)
            self.assertEqual((self.metric(port, "fedge_operator_reconcile_errors_total") or 0), 0,
                             open(os.path.join(self.tmp, "operator-rbac.log")).read()[-3000:])
            # The chart's Role in `default` lets it read where the API server listens (here the
            # API server answers that there is no such slice, which it tells only a caller
            # allowed to get it).
            agg = self.get_json("networkpolicy", "scoped-aggregator", "-n", "fedge-jobs")
            text = open(os.path.join(self.tmp, "operator-rbac.log")).read()
            self.assertEqual(agg["spec"].get("egress"), self.api_server_egress(), text[-3000:])
            self.assertNotIn("forbidden", "\n".join(l for l in text.splitlines() if "endpoints" in l).lower())
            self.kubectl("delete", "ftj", "scoped", "-n", "fedge-jobs", "--wait=false")
            wait_for(lambda: self.kubectl("get", "ftj", "scoped", "-n", "fedge-jobs", check=False).returncode != 0, 60,
                     "the job's finalizer to run under the namespaced RBAC")
            wait_for(lambda: not self.get_json("pv", "-l", "fedge.io/job=scoped")["items"], 60,
                     "its PersistentVolume objects deleted")
        finally:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
            self.__class__.operator = self.start_operator()
            wait_for(lambda: self.readyz(self.operator) == "ok", 60, "the cluster-wide operator to lead again")

    def test_agents_get_projected_tokens_and_a_leaving_node_loses_its_agent(self):
        """Agents hold no Secret of their own: each pod's projected token (the job's audience,
        bound to the pod) is what the aggregator verifies, with the API server's keys the
        operator copied into the trust ConfigMap. A node leaving the selector loses its pod,
        so its token stops being renewed and is refused once it expires; its volumes stay, and
        the job's deletion removes its state with the other node's."""
        self.kubectl("label", "node", NODES[0], NODES[1], "fedge.io/pool=revoke", "--overwrite")
        try:
            self.assertEqual(self.apply(job_manifest("revoke", runPolicy={"backoffLimit": 1000},
                                                     agents={"nodeSelector": {"fedge.io/edge": "true",
                                                                              "fedge.io/pool": "revoke"}})).returncode, 0)
            self.assertTrue(self.job("revoke")["spec"]["privacy"]["tls"], "the CRD defaults privacy.tls to true")
            trust = wait_for(lambda: self.trust("revoke"), 60, "the trust ConfigMap")
            # The keys are the API server's own: what it serves to anyone allowed to read them.
            served = json.loads(self.kubectl("get", "--raw", "/openid/v1/jwks").stdout)
            self.assertEqual(json.loads(trust["jwks.json"]), served)
            ca = base64.b64decode(self.get_json("secret", "revoke-credentials")["data"]["ca.crt"]).decode()
            self.assertEqual(trust["ca.crt"], ca)
            pod = wait_for(lambda: self.get_json("pod", f"revoke-agent-{NODES[0]}"), 60, "an agent pod")
            self.assertEqual(pod["spec"]["serviceAccountName"], "revoke-agent")
            secrets = {v["secret"]["secretName"] for v in pod["spec"]["volumes"] if "secret" in v}
            self.assertEqual(secrets, {"revoke-inference-token"}, "no credentials Secret per agent")
            sources = [src for v in pod["spec"]["volumes"] if "projected" in v for src in v["projected"]["sources"]]
            self.assertIn({"serviceAccountToken": {"audience": "fedge.io/default/revoke", "expirationSeconds": 600,
                                                   "path": "token"}}, sources)
            self.assertEqual([s["metadata"]["name"] for s in self.get_json("secret", "-l", "fedge.io/job=revoke")["items"]
                              if s["metadata"]["labels"].get("fedge.io/role") == "agent-credentials"], [])
            # A token the API server issues for the pod carries what the aggregator checks:
            # the job's audience, the agents' ServiceAccount, the pod and (once scheduled) its node.
            wait_for(lambda: (self.get_json("pod", f"revoke-agent-{NODES[0]}") or {}).get("spec", {}).get("nodeName"),
                     60, "the agent pod scheduled")
            token = self.kubectl("create", "token", "revoke-agent", "--audience", "fedge.io/default/revoke",
                                 "--bound-object-kind", "Pod", "--bound-object-name", f"revoke-agent-{NODES[0]}",
                                 "--duration", "600s").stdout.strip()
            claims = self.jwt_claims(token)
            self.assertEqual(claims["aud"], ["fedge.io/default/revoke"])
            self.assertEqual(claims["kubernetes.io"]["serviceaccount"]["name"], "revoke-agent")
            self.assertEqual(claims["kubernetes.io"]["pod"]["name"], f"revoke-agent-{NODES[0]}")
            self.assertEqual(claims["kubernetes.io"]["node"]["name"], NODES[0], "the agent id the aggregator binds")
            agg = wait_for(lambda: self.get_json("pod", "revoke-aggregator"), 60, "the aggregator pod")
            cmd = agg["spec"]["containers"][0]["command"]
            self.assertEqual(cmd[cmd.index("--agent-token-issuer") + 1], claims["iss"])
            self.assertEqual(cmd[cmd.index("--agent-token-service-account") + 1], "default/revoke-agent")
            self.assertEqual(cmd[cmd.index("--agent-revoked-pods-file") + 1], "/etc/fedge/trust/revoked-pods.json")
            leaving = wait_for(lambda: self.get_json("pod", f"revoke-agent-{NODES[1]}"), 60, "the other agent pod")
            self.kubectl("label", "node", NODES[1], "fedge.io/pool-")
            wait_for(lambda: self.get_json("pod", f"revoke-agent-{NODES[1]}") is None, 60, "its agent pod deleted")
            # Its tokens are revoked at once: the aggregator, which verifies them offline,
            # reads the pods the operator lists in the trust ConfigMap and refuses them.
            def revoked():
                return {e["uid"]: e for e in json.loads(self.trust("revoke")["revoked-pods.json"])["pods"]}
            entry = wait_for(lambda: revoked().get(leaving["metadata"]["uid"]), 30, "the deleted agent pod revoked")
            self.assertEqual((entry["name"], entry["node"]), (f"revoke-agent-{NODES[1]}", NODES[1]))
            self.assertGreater(entry["until"], time.time() + 600 + 3600 - 120)
            # The aggregator pod's annotation follows the list, so that its kubelet refreshes
            # the mounted copy at once.
            def annotated():
                want = hashlib.sha256(self.trust("revoke")["revoked-pods.json"].encode()).hexdigest()[:16]
                pod = self.get_json("pod", "revoke-aggregator") or {}
                return pod.get("metadata", {}).get("annotations", {}).get("fedge.io/revoked-pods") == want
            wait_for(annotated, 30, "the aggregator pod annotated with the list's hash")
            # The other node's pod is not revoked while it lives. It fails and is made again
            # (no model here), and a pod that ended is revoked: so the list is read first and
            # the pod after it. Ending is for good, so a pod live now was live when the list
            # was read.
            listed = revoked()
            staying = self.get_json("pod", f"revoke-agent-{NODES[0]}")
            if staying and "deletionTimestamp" not in staying["metadata"] and \
                    staying.get("status", {}).get("phase") not in ("Succeeded", "Failed"):
                self.assertNotIn(staying["metadata"]["uid"], listed, "a live agent pod is not revoked")
            # Its node volume and claim stay: its state directory holds the job's data,
            # which the job's deletion removes through them.
            states = {n: self.node_state_dir(n, "default/revoke") for n in NODES[:2]}
            for d in states.values():  # what the agents leave (these fail early: no model here)
                os.makedirs(d, exist_ok=True)
                with open(os.path.join(d, "feedback.jsonl"), "w") as f:
                    f.write('{"input": "a private request"}\n')
            time.sleep(3)  # passes after the agent pod went
            self.assertEqual(sorted(pv["metadata"]["annotations"]["fedge.io/node"]
                                    for pv in self.node_volumes("revoke")), NODES[:2])
            self.assertEqual(sorted(c["metadata"]["annotations"].get("fedge.io/node", "")
                                    for c in self.children("revoke") if c["kind"] == "PersistentVolumeClaim"
                                    and c["metadata"]["labels"].get("fedge.io/role") == "node-volume"), NODES[:2])
        finally:
            self.kubectl("label", "node", *NODES, "fedge.io/pool-", check=False)
        self.delete_job("revoke")
        for node, d in states.items():
            self.assertFalse(os.path.lexists(d), f"the job's state is left on {node}: {d}")

    def test_an_agent_pod_deleted_while_no_operator_ran_is_refused_by_its_tokens_age(self):
        """A pod deleted while no operator runs is in no revoked-pods entry: nothing saw it go,
        and the aggregator verifies tokens offline. The operator that starts next writes when
        its pod cache listed (watchedSince) and which agent pods were live then (livePods);
        the aggregator refuses a token issued before watchedSince to any other pod
        (aggregator revoked_pods.h). Here a token bound to the pod is taken, the pod deleted
        with no operator running, and the new operator's list must leave that pod out while
        the token predates the watch."""
        self.assertEqual(self.apply(job_manifest("unseen", runPolicy={"backoffLimit": 1000})).returncode, 0)
        wait_for(lambda: self.trust("unseen"), 60, "the trust ConfigMap")

        def agents():
            got = self.get_json("pod", "-l", "fedge.io/job=unseen,fedge.io/role=agent") or {"items": []}
            return {p["metadata"]["name"]: p for p in got["items"]}
        wait_for(lambda: len(agents()) == len(NODES), 60, "an agent pod per node")
        for p in self.operators:  # a standby would watch the pod go: none runs from here
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.operators:
            p.wait(30)
        # Agents fail here (no model) and the operator makes them again, so one may have
        # been between the two when the operator stopped: take one that is there.
        name, victim = wait_for(lambda: next(iter(sorted(agents().items())), None), 30, "an agent pod")
        token = self.kubectl("create", "token", "unseen-agent", "--audience", "fedge.io/default/unseen",
                             "--bound-object-kind", "Pod", "--bound-object-name", name,
                             "--duration", "600s").stdout.strip()
        claims = self.jwt_claims(token)
        uid = victim["metadata"]["uid"]
        self.assertEqual(claims["kubernetes.io"]["pod"]["uid"], uid)
        self.kubectl("delete", "pod", name, "--wait=false")
        wait_for(lambda: name not in agents(), 60, f"{name} gone")
        before = {p["metadata"]["uid"] for p in agents().values()}  # none is made while no operator runs
        time.sleep(1)  # the watch begins a second after the token was issued at the latest
        started = int(time.time())
        self.__class__.operator = self.start_operator()

        def written():
            doc = json.loads(self.trust("unseen")["revoked-pods.json"])
            return doc if doc.get("watchedSince", 0) >= started else None
        doc = wait_for(written, 60, "the new operator's watchedSince in revoked-pods.json")
        print(f"\nunseen: watchedSince {doc['watchedSince']} written {time.time() - started:.1f} s after the "
              f"operator was started; the deleted pod's token iat {claims['iat']}; livePods {len(doc['livePods'])} "
              f"of {len(before)} agent pods left; {len(doc['pods'])} entries", file=sys.stderr)
        self.assertLessEqual(doc["watchedSince"], time.time())
        self.assertLess(claims["iat"], doc["watchedSince"], "the token predates the new operator's watch")
        self.assertNotIn(uid, doc["livePods"], "the deleted pod was not live when the new operator listed")
        self.assertNotIn(uid, {e["uid"] for e in doc["pods"]}, "no operator saw it go: no entry names it")
        self.assertLessEqual(set(doc["livePods"]), before,
                             "only pods live when it listed (and made before that second) are in livePods")

        # The aggregator pod's annotation follows the list, so that its kubelet refreshes
        # the mounted copy at once.
        def annotated():
            want = hashlib.sha256(self.trust("unseen")["revoked-pods.json"].encode()).hexdigest()[:16]
            pod = self.get_json("pod", "unseen-aggregator") or {}
            return pod.get("metadata", {}).get("annotations", {}).get("fedge.io/revoked-pods") == want
        wait_for(annotated, 30, "the aggregator pod annotated with the list's hash")
        self.delete_job("unseen")

    def test_a_spec_change_replaces_the_pods_made_from_the_old_template(self):
        """Each pod carries fedge.io/pod-template-hash; a spec change that changes the
        pods' template (privacy.tls here; an operator upgrade with new images is the same)
        makes the operator replace them (PodReplaced, not a restart), and passes with
        nothing changed replace nothing. The agents go to two Node objects no pod runner
        serves, so they stay Pending (a running agent without a model would fail and be
        restarted, which is not what is tested); the aggregator runs."""
        ghosts = ["roll-ghost-1", "roll-ghost-2"]
        self.kubectl("apply", "-f", "-", stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": [
            {"apiVersion": "v1", "kind": "Node",
             "metadata": {"name": g, "labels": {"fedge.io/pool": "roll", "kubernetes.io/hostname": g}}}
            for g in ghosts]}))
        try:
            self.assertEqual(self.apply(job_manifest("roll", agents={"nodeSelector": {"fedge.io/pool": "roll"}},
                                                     runPolicy={"backoffLimit": 1000})).returncode, 0)
            names = ["roll-aggregator"] + [f"roll-agent-{g}" for g in ghosts]
            before = {n: wait_for(lambda n=n: self.get_json("pod", n), 60, f"pod {n}") for n in names}
            hashes = {n: p["metadata"]["annotations"].get("fedge.io/pod-template-hash", "") for n, p in before.items()}
            for n, h in hashes.items():
                self.assertRegex(h, r"^[0-9a-f]{16}$", n)
            self.assertEqual(hashes[names[1]], hashes[names[2]], "the agents' template does not depend on the node")

            def replaced_events():
                out = self.kubectl("get", "events", "--field-selector", "reason=PodReplaced", "-o", "json").stdout
                return [e["message"] for e in json.loads(out)["items"] if "pod roll-" in e["message"]]
            # Nothing changed: later passes (an edit outside the spec) replace nothing.
            self.kubectl("annotate", "ftj", "roll", "fedge.io/poke=1", "--overwrite")
            time.sleep(3)
            self.assertEqual(replaced_events(), [])
            for n in names[1:]:
                self.assertEqual(self.get_json("pod", n)["metadata"]["uid"], before[n]["metadata"]["uid"], n)

            self.kubectl("patch", "ftj", "roll", "--type", "merge", "-p", '{"spec": {"privacy": {"tls": false}}}')

            def current(n):
                pod = self.get_json("pod", n)
                if not pod or pod["metadata"].get("deletionTimestamp"):
                    return None
                return pod if pod["metadata"]["annotations"].get("fedge.io/pod-template-hash") != hashes[n] else None
            after = {n: wait_for(lambda n=n: current(n), 90, f"pod {n} made from the new template") for n in names}
            for n, pod in after.items():
                self.assertNotEqual(pod["metadata"]["uid"], before[n]["metadata"]["uid"], n)
                cmd = pod["spec"]["containers"][0]["command"]
                self.assertFalse(any(a.startswith("--tls") for a in cmd), f"{n} still runs with TLS: {cmd}")
            msgs = replaced_events()
            for n in names:
                self.assertTrue(any(m.startswith(f"pod {n} ") for m in msgs), (n, msgs))
            self.assertEqual(self.job("roll")["status"].get("restarts", 0), 0, "a replacement is not a restart")
            self.delete_job("roll")
        finally:
            self.kubectl("delete", "node", *ghosts, "--ignore-not-found", check=False)

    @unittest.skipUnless(os.path.exists(os.path.join(MODEL, "model.safetensors")) and os.path.exists(AGGREGATOR)
                         and os.path.exists(AGENT) and os.path.exists(FEDGE),
                         "SKIP: needs fedge-aggregator, fedge-agent, fedge and the model (scripts/fetch-model.sh)")
    def test_a_spec_change_replaces_serving_agents_a_share_at_a_time(self):
        """Three running, ready agents made from an old template: the operator replaces them
        so that at most one (25% of 3, at least 1) is unavailable at any time."""
        data = os.path.join(self.tmp, "rolling-data")
        out = subprocess.run([FEDGE, "data", "wordnet", "--agents", str(len(NODES)), "--alpha", "0.5", "--seed", "5",
                              "--test-size", "50", "--max-train", "600", "--out", data],
                             capture_output=True, text=True, timeout=300)
        self.assertEqual(out.returncode, 0, out.stderr)
        for i, node in enumerate(NODES):
            os.symlink(f"agent-{i}", os.path.join(data, node))
        with open(os.path.join(data, "meta.json")) as f:
            labels = json.load(f)["labels"]
        manifest = job_manifest("rolling", labels=labels, model=MODEL, data=data,
                                rounds={"total": 500, "quorum": 1, "timeoutSeconds": 60, "localSteps": 2,
                                        "batchSize": 8, "learningRate": 0.003, "seed": 5},
                                runPolicy={"backoffLimit": 5})
        manifest["spec"]["model"]["maxSeqLen"] = 32
        self.assertEqual(self.apply(manifest).returncode, 0)
        names = [f"rolling-agent-{n}" for n in NODES]

        def ready(pod):
            return bool(pod) and not pod["metadata"].get("deletionTimestamp") and \
                pod.get("status", {}).get("phase") == "Running" and \
                any(c["type"] == "Ready" and c["status"] == "True" for c in pod["status"].get("conditions", []))

        def pods():
            got = json.loads(self.kubectl("get", "pods", "-l", "fedge.io/job=rolling", "-o", "json").stdout)["items"]
            return {p["metadata"]["name"]: p for p in got}
        before = self.wait_or_explain(lambda: (lambda ps: ps if all(ready(ps.get(n)) for n in names) else None)(pods()),
                                      180, "three ready agents", *names)
        old_uids = {n: before[n]["metadata"]["uid"] for n in names}
        self.kubectl("patch", "ftj", "rolling", "--type", "merge", "-p", '{"spec": {"privacy": {"tls": false}}}')
        worst, deadline = 0, time.time() + 240
        while time.time() < deadline:
            ps = pods()
            worst = max(worst, sum(not ready(ps.get(n)) for n in names))
            if all(ready(ps.get(n)) and ps[n]["metadata"]["uid"] != old_uids[n] for n in names):
                break
            time.sleep(0.2)
        else:
            raise AssertionError(f"the agents were not all replaced in 240 s\n{self.pod_logs(*names)}")
        self.assertEqual(worst, 1, "at most one of three agents unavailable at a time, and one was replaced")
        cond = wait_for(lambda: next((c for c in self.job("rolling").get("status", {}).get("conditions", [])
                                      if c["type"] == "PodsOutdated" and c["status"] == "False"), None),
                        60, "PodsOutdated=False")
        self.assertEqual(cond["reason"], "PodsCurrent")
        waited = json.loads(self.kubectl("get", "events", "--field-selector", "reason=AgentsReplacedGradually",
                                         "-o", "json").stdout)["items"]
        self.assertTrue(waited, "serving agents waited for their share")
        self.assertEqual(self.job("rolling")["status"].get("restarts", 0), 0)
        self.delete_job("rolling")
        wait_for(lambda: not [k for k in self.children("rolling") if k["kind"] == "Pod"], 60, "the pods to go")

    @unittest.skipUnless(os.path.exists(os.path.join(MODEL, "model.safetensors")) and os.path.exists(AGGREGATOR)
                         and os.path.exists(AGENT) and os.path.exists(FEDGE),
                         "SKIP: needs fedge-aggregator, fedge-agent, fedge and the model (scripts/fetch-model.sh)")
    def test_example_job_runs_to_succeeded_and_survives_a_killed_agent(self):
        data = os.path.join(self.tmp, "data")
        out = subprocess.run([FEDGE, "data", "wordnet", "--agents", str(len(NODES)), "--alpha", "0.5", "--seed", "3",
                              "--test-size", "200", "--max-train", "3000", "--out", data],
                             capture_output=True, text=True, timeout=300)
        self.assertEqual(out.returncode, 0, out.stderr)
        for i, node in enumerate(NODES):
            os.symlink(f"agent-{i}", os.path.join(data, node))  # each node's own shard
        os.symlink("agent-0", os.path.join(data, SPARE))
        with open(os.path.join(data, "meta.json")) as f:
            labels = json.load(f)["labels"]
        # Two nodes match at first; the third joins the selector once the aggregator runs.
        self.kubectl("label", "node", NODES[0], NODES[1], "fedge.io/pool=example", "--overwrite")
        manifest = job_manifest("example", labels=labels, model=MODEL, data=data,
                                agents={"nodeSelector": {"fedge.io/edge": "true", "fedge.io/pool": "example"},
                                        "minAgents": 2},
                                rounds={"total": EXAMPLE_ROUNDS, "quorum": 1, "timeoutSeconds": 120, "localSteps": 15,
                                        "batchSize": 16, "learningRate": 0.003, "seed": 11},
                                runPolicy={"backoffLimit": 2})  # cleanPodPolicy Running (the default)
        # No spec.privacy: the CRD's default, TLS.
        manifest["spec"]["model"]["maxSeqLen"] = 32
        manifest["spec"]["adapter"] = {"rank": 4, "alpha": 8}
        self.assertEqual(self.apply(manifest).returncode, 0)
        agg = wait_for(lambda: (lambda p: p if p and p.get("status", {}).get("phase") == "Running" else None)(
            self.get_json("pod", "example-aggregator")), 120, "the aggregator to run")
        # TLS, and agents verified by their projected tokens (the pod runner runs the real
        # binaries with tokens the real API server issued for each pod: real verification).
        agg_cmd = agg["spec"]["containers"][0]["command"]
        for flag in ("--tls-cert", "--tls-key", "--agent-token-jwks-file", "--agent-token-issuer",
                     "--agent-token-audience", "--agent-token-service-account"):
            self.assertIn(flag, agg_cmd)
        self.assertNotIn("--tls-client-ca", agg_cmd)
        for node in NODES[:2]:
            cmd = wait_for(lambda: self.get_json("pod", f"example-agent-{node}"), 60, "agent pod")["spec"][
                "containers"][0]["command"]
            for flag in ("--tls-ca", "--tls-server-name", "--token-file"):
                self.assertIn(flag, cmd)
        agg_status = f"http://{agg['status']['podIP']}:9090/v1/status"

        def joined():
            try:
                with urllib.request.urlopen(agg_status, timeout=5) as r:
                    return json.loads(r.read())["agents_joined"]
            except OSError:
                return None
        # Late joiner: its token is verified like the others' (nothing of the aggregator's changes).
        self.kubectl("label", "node", NODES[2], "fedge.io/pool=example", "--overwrite")
        late = wait_for(lambda: self.get_json("pod", f"example-agent-{NODES[2]}"), 60, "the late node's agent pod")
        late_uid = late["metadata"]["uid"]
        self.wait_or_explain(lambda: (joined() or 0) >= 3, 180, "the late node's agent to join (over TLS)",
                             "example-aggregator", *[f"example-agent-{n}" for n in NODES])
        self.wait_or_explain(lambda: self.job("example").get("status", {}).get("roundsCompleted", 0) >= 1, 240,
                             "round 1 to complete", "example-aggregator", *[f"example-agent-{n}" for n in NODES])
        # Kill one agent mid-job: the operator recreates it within backoffLimit.
        old = self.get_json("pod", "example-agent-edge-1")["metadata"]["uid"]
        self.assertEqual(self.runner_post("/pods/default/example-agent-edge-1/kill")["killed"], 1)
        wait_for(lambda: self.job("example").get("status", {}).get("restarts", 0) >= 1, 60, "the restart count")
        wait_for(lambda: (self.get_json("pod", "example-agent-edge-1") or {}).get("metadata", {}).get("uid")
                 not in (None, old), 60, "a new agent pod")
        # A liveness bound, not a speed claim: rounds of 3 agents training on 2 cores took
        # up to 27 s each on 2026-12-06.
        done = wait_for(lambda: (lambda j: j if j.get("status", {}).get("state") in ("Succeeded", "Failed") else None)(
            self.job("example")), 900, "the job to finish")
        st = done["status"]
        self.assertEqual(st["state"], "Succeeded", json.dumps(st, indent=1))
        self.assertEqual(st["roundsCompleted"], EXAMPLE_ROUNDS)
        self.assertGreater(st["lastRound"]["accuracy"], 0.0)
        self.assertGreaterEqual(st["globalModel"]["version"], EXAMPLE_ROUNDS)
        table = self.kubectl("get", "ftj", "example").stdout
        self.assertIn("Succeeded", table)
        self.assertIn(str(round(st["lastRound"]["accuracy"], 3))[:4], table)
        full = json.loads(self.kubectl("get", "ftj", "example", "-o", "json", "--show-managed-fields").stdout)
        managers = {m["manager"] for m in full["metadata"]["managedFields"]}
        self.assertIn("fedge-aggregator", managers, "progress must come from the aggregator's reporter")
        # The late joiner was admitted without being refused and restarted.
        self.assertEqual(self.get_json("pod", f"example-agent-{NODES[2]}")["metadata"]["uid"], late_uid)
        # After success the agents keep serving the final global (cleanPodPolicy Running spares them).
        agent = self.get_json("pod", f"example-agent-{NODES[0]}")
        self.assertEqual(agent["status"]["phase"], "Running")
        # The inference API wants the job's token (Secret <job>-inference-token).
        token = base64.b64decode(self.get_json("secret", "example-inference-token")["data"]["token"]).decode()
        self.assertIn("--api-token-file", agent["spec"]["containers"][0]["command"])
        req = urllib.request.Request(f"http://{agent['status']['podIP']}:8080/v1/classify", method="POST",
                                     data=json.dumps({"input": ["a large dog", "an oak tree"]}).encode(),
                                     headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(req, timeout=30) as r:
            got = json.loads(r.read())
        self.assertEqual(len(got["data"]), 2)
        # ... and refuses a request without it.
        req.remove_header("Authorization")
        with self.assertRaises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(req, timeout=30)
        self.assertEqual(refused.exception.code, 401)
        self.assertIn(got["data"][0]["label"], labels)
        # A serving agent that dies after the job (a crash, a node reboot) is made again and
        # serves the final global its node keeps, with no aggregator left to join.
        restarts = done["status"].get("restarts", 0)
        old = agent["metadata"]["uid"]
        self.assertEqual(self.runner_post(f"/pods/default/example-agent-{NODES[0]}/kill")["killed"], 1)
        again = self.wait_or_explain(
            lambda: (lambda p: p if p and p["metadata"]["uid"] != old and any(
                c["type"] == "Ready" and c["status"] == "True" for c in p.get("status", {}).get("conditions", []))
                else None)(self.get_json("pod", f"example-agent-{NODES[0]}")),
            120, "the serving agent to be made again and ready after the job", f"example-agent-{NODES[0]}")
        req = urllib.request.Request(f"http://{again['status']['podIP']}:8080/v1/classify", method="POST",
                                     data=json.dumps({"input": ["a large dog", "an oak tree"]}).encode(),
                                     headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"})

        def classify():
            try:
                with urllib.request.urlopen(req, timeout=30) as r:
                    return json.loads(r.read())
            except OSError:
                return None
        served_again = self.wait_or_explain(classify, 30, f"the new agent to answer at {again['status']['podIP']}",
                                            f"example-agent-{NODES[0]}")
        self.assertEqual(self.get_json("pod", f"example-agent-{NODES[0]}")["metadata"]["uid"],
                         again["metadata"]["uid"], "the new agent must keep running, not be made again once more")
        self.assertEqual([d["label"] for d in served_again["data"]], [d["label"] for d in got["data"]])
        for before, after in zip(got["data"], served_again["data"]):
            self.assertAlmostEqual(before["score"], after["score"], places=5)
        events = json.loads(self.kubectl("get", "events", "--field-selector", "reason=ServingAgentRestarted",
                                         "-o", "json").stdout)["items"]
        mine = [e for e in events if f"example-agent-{NODES[0]}" in e.get("message", "")]
        self.assertEqual(sum(e.get("count", 1) for e in mine), 1, mine)
        after = self.job("example")["status"]
        self.assertEqual(after["state"], "Succeeded")
        self.assertEqual(after.get("restarts", 0), restarts, "a serving agent's restart is not the job's")
        trained = [n for n in NODES if os.path.exists(self.node_state_dir(n, "default/example/global.safetensors"))]
        self.assertTrue(trained, "no node holds the job's final global")
        # A node that joins the selector after the job gets an agent serving the final global:
        # the operator hands it out from the job's checkpoint (pod example-aggregator-final)
        # until that agent serves, then removes that pod. (A restarted agent not ready within
        # 20 s, as on a loaded machine, gets that pod too, rightly: let it go first, so the
        # one below is the new node's.)
        wait_for(lambda: self.get_json("pod", "example-aggregator-final") is None, 120,
                 "no final-model pod before the new node joins")
        served_before = len(self.final_model_served_events())
        self.kubectl("label", "node", SPARE, "fedge.io/edge=true", "fedge.io/pool=example", "--overwrite")
        # Whatever happens below, the later tests must not find a fourth edge node.
        self.addCleanup(self.kubectl, "label", "node", SPARE, "fedge.io/pool-", "fedge.io/edge-", check=False)
        final_pod = wait_for(lambda: self.get_json("pod", "example-aggregator-final"), 60, "the final-model pod")
        self.assertIn("--serve-final", final_pod["spec"]["containers"][0]["command"])
        self.assertEqual([c["name"] for c in final_pod["spec"]["containers"]], ["aggregator"])
        spare = self.wait_or_explain(
            lambda: (lambda p: p if p and any(c["type"] == "Ready" and c["status"] == "True"
                                              for c in p.get("status", {}).get("conditions", [])) else None)(
                self.get_json("pod", f"example-agent-{SPARE}")),
            180, "the new node's agent to be ready with the final global", f"example-agent-{SPARE}",
            "example-aggregator-final")
        self.wait_or_explain(lambda: os.path.exists(self.node_state_dir(SPARE, "default/example/global.safetensors")),
                             30, "the new node to keep the final global it was given", f"example-agent-{SPARE}",
                             "example-aggregator-final")
        req = urllib.request.Request(f"http://{spare['status']['podIP']}:8080/v1/classify", method="POST",
                                     data=json.dumps({"input": ["a large dog", "an oak tree"]}).encode(),
                                     headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"})
        served_new = self.wait_or_explain(classify, 30, "the new node's agent to answer", f"example-agent-{SPARE}")
        self.assertEqual([d["label"] for d in served_new["data"]], [d["label"] for d in got["data"]])
        for before, new in zip(got["data"], served_new["data"]):
            self.assertAlmostEqual(before["score"], new["score"], places=5,
                                   msg="the new node must serve the same final global as the nodes that trained")
        wait_for(lambda: self.get_json("pod", "example-aggregator-final") is None, 90,
                 "the final-model pod to go once every agent serves")
        events = self.final_model_served_events()[served_before:]
        self.assertEqual(len(events), 1, events)
        self.assertIn(SPARE, events[0]["message"])
        after = wait_for(lambda: (lambda st: st if st.get("agents", {}).get("ready") == 4 else None)(
            self.job("example")["status"]), 30, "status.agents to count the new node's agent")
        self.assertEqual(after["state"], "Succeeded")
        self.assertEqual(after["roundsCompleted"], EXAMPLE_ROUNDS, "serving the final global trains no round")
        # Relabelled out of the selector, the node loses its serving agent (as during the job);
        # its volumes stay, so the job's deletion still removes its state below.
        self.kubectl("label", "node", SPARE, "fedge.io/pool-")
        wait_for(lambda: self.get_json("pod", f"example-agent-{SPARE}") is None, 60, "the left node's agent to go")
        self.assertTrue(os.path.exists(self.node_state_dir(SPARE, "default/example/global.safetensors")))
        self.delete_job("example")
        wait_for(lambda: not [k for k in self.children("example") if k["kind"] == "Pod"], 90,
                 "the serving agents and the state cleanups to go with the job")
        # The final global and the feedback log of the requests above go with the job.
        wait_for(lambda: not any(os.path.lexists(self.node_state_dir(n, "default/example")) for n in NODES + [SPARE]),
                 60, "the job's agent state to be removed from the nodes")
        self.kubectl("label", "node", *NODES, "fedge.io/pool-", check=False)


if __name__ == "__main__":
    # ctest runs this file: a missing control plane or operator is SKIPPED (exit 77,
    # SKIP_RETURN_CODE), never a pass.
    if not control_plane_bin() or not os.path.exists(OPERATOR):
        print("SKIPPED: " + ("control-plane binaries not built; run scripts/cluster/build-control-plane.sh"
                             if not control_plane_bin() else f"{OPERATOR} not built"))
        raise SystemExit(77)
    unittest.main(verbosity=2)
