"""Shared pieces of the real-node end-to-end and chaos tests (real_e2e_test.py,
real_chaos_test.py): the K3s-shaped cluster of scripts/cluster/start-cluster.sh, fedge's
images from scripts/images.sh imported into each node's containerd, the model and one
data shard per node on the nodes' disks, the chart installed with the helm CLI, and a
monitor that records a job's progress once a second from the API server and from the
aggregator's /v1/status.

Everything a user would type is run through `run()`, which prints the command and its
output, so the test log reads as the session a user would have had.
"""
import ctypes
import json
import os
import re
import shutil
import ssl
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

import yaml

ROOT = os.environ.get("FEDGE_SOURCE_DIR", os.path.abspath(os.path.join(os.path.dirname(__file__), "../..")))
BUILD = os.environ.get("FEDGE_BINARY_DIR", os.path.join(ROOT, "build"))
SCRIPTS = os.path.join(ROOT, "scripts", "cluster")
CLUSTER_DIR = os.environ.get("FEDGE_CLUSTER_DIR", "/var/lib/fedge-cluster")
K8S_VERSION = os.environ.get("FEDGE_K8S_VERSION", "v1.36.3")
KINE_VERSION = os.environ.get("FEDGE_KINE_VERSION", "v0.17.5")
COREDNS_VERSION = os.environ.get("FEDGE_COREDNS_VERSION", "v1.15.0")
HELM_VERSION = os.environ.get("FEDGE_HELM_VERSION", "v4.3.2")
PROMETHEUS_VERSION = os.environ.get("FEDGE_PROMETHEUS_VERSION", "v0.316.0")
KUBE_ROUTER_VERSION = os.environ.get("FEDGE_KUBE_ROUTER_VERSION", "v2.1.0")
MODEL = os.environ.get("FEDGE_MODEL_DIR", os.path.join(ROOT, ".fedge", "models", "all-MiniLM-L6-v2"))
FEDGE = os.path.join(BUILD, "cli", "fedge")
BINARIES = [os.path.join(BUILD, d, b) for d, b in (("operator", "fedge-operator"),
                                                    ("aggregator", "fedge-aggregator"), ("agent", "fedge-agent"))]
NODES = ["fedge-edge-1", "fedge-edge-2"]
KUBECONFIG = os.path.join(CLUSTER_DIR, "kubeconfig")
QUICKSTART = os.path.join(ROOT, "deploy", "examples", "cluster-quickstart.yaml")
CHART = os.path.join(ROOT, "helm", "fedge")
RELEASE = "fedge"
RELEASE_NS = "fedge-system"
BUSYBOX = "fedge.local/busybox:1.35"
# What the quickstart manifest expects on every node (/var/lib/fedge is the node's disk).
NODE_MODEL = "models/all-MiniLM-L6-v2"
NODE_DATA = "data/quickstart"
MODEL_FILES = ("config.json", "model.safetensors", "vocab.txt", "tokenizer.json", "tokenizer_config.json",
               "special_tokens_map.json")
POD_UID = 65532

T0 = time.time()


def log(msg):
    print(f"[{time.time() - T0:7.1f}s] {msg}", flush=True)


def cache_dir(kind, version, stamp):
    for c in ("/var/cache/fedge", os.path.expanduser("~/.cache/fedge")):
        d = os.path.join(c, kind, version)
        if os.path.exists(os.path.join(d, stamp)):
            return d
    return None


def kubectl_bin():
    return os.path.join(cache_dir("control-plane", K8S_VERSION, ".complete"), "bin", "kubectl")


def helm_bin():
    return os.path.join(cache_dir("helm", HELM_VERSION, ".complete"), "bin", "helm")


def prometheus_bin():
    return os.path.join(cache_dir("prometheus", PROMETHEUS_VERSION, ".complete"), "bin", "prometheus")


def missing_prerequisites():
    """Why these tests cannot run here (then they exit 77: SKIPPED), or None."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, cgroups, mounts)"
    cp = cache_dir("control-plane", K8S_VERSION, ".complete")
    if not cp:
        return "control plane not built: run scripts/cluster/build-cluster.sh"
    if not os.path.exists(os.path.join(cp, ".nodes-complete")):
        return "kubelet/kube-proxy not built: run scripts/cluster/build-cluster.sh"
    if not cache_dir("kine", KINE_VERSION, ".complete"):
        return "kine not built: run scripts/cluster/build-cluster.sh"
    if not cache_dir("coredns", COREDNS_VERSION, ".complete"):
        return "CoreDNS not built: run scripts/cluster/build-cluster.sh"
    if (os.environ.get("FEDGE_CLUSTER_NETWORK_POLICY", "kube-router") == "kube-router"
            and not cache_dir("kube-router", KUBE_ROUTER_VERSION, ".complete")):
        return ("kube-router (the NetworkPolicy controller K3s embeds) not built: run "
                "scripts/cluster/build-cluster.sh")
    if not cache_dir("helm", HELM_VERSION, ".complete"):
        return "helm not built: run scripts/cluster/build-helm.sh"
    if not cache_dir("prometheus", PROMETHEUS_VERSION, ".complete"):
        return ("Prometheus with Kubernetes discovery not built: run scripts/cluster/build-prometheus.sh "
                "(Debian's package has no kubernetes_sd_configs)")
    for tool in ("containerd", "runc", "ctr", "iptables", "ipset", "readelf", "gcc"):
        if not shutil.which(tool):
            return f"{tool} not installed: run scripts/install-deps.sh"
    for b in BINARIES + [FEDGE]:
        if not os.access(b, os.X_OK):
            return f"{b} not built (the images are made from it)"
    if not os.path.exists(os.path.join(MODEL, "model.safetensors")):
        return f"model not found at {MODEL}: run scripts/fetch-model.sh"
    if not os.path.exists("/usr/share/wordnet/data.noun"):
        return "wordnet-base not installed: run scripts/install-deps.sh"
    return None


def _shown(cmd):
    out = []
    for a in cmd:
        a = str(a)
        if a == kubectl_bin() or a.endswith("/bin/kubectl"):
            a = "kubectl"
        elif a.endswith("/bin/helm"):
            a = "helm"
        elif a.startswith(ROOT + "/"):
            a = os.path.relpath(a, ROOT)
        out.append(a if re.fullmatch(r"[\w@%+=:,./-]+", a) else "'" + a.replace("'", "'\\''") + "'")
    return " ".join(out)


def run(cmd, check=True, timeout=300, input=None, quiet=False, max_lines=60, env=None):
    """Runs cmd (a list), printing `$ cmd` and its output (the last max_lines lines of each
    stream) unless quiet; fails the test on a non-zero exit when check."""
    t = time.time()
    if not quiet:
        log("$ " + _shown(cmd))
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, input=input, env=env)
    if not quiet:
        for stream in (r.stdout, r.stderr):
            lines = stream.rstrip("\n").splitlines()
            if len(lines) > max_lines:
                print(f"    ... ({len(lines) - max_lines} lines above)")
            for line in lines[-max_lines:]:
                print("    " + line)
        print(f"    (exit {r.returncode}, {time.time() - t:.1f} s)", flush=True)
    if check and r.returncode != 0:
        raise AssertionError(f"`{_shown(cmd)}` failed ({r.returncode}): {r.stderr.strip()[-3000:]}")
    return r


def kubectl(*args, **kw):
    return run([kubectl_bin(), "--kubeconfig", KUBECONFIG, *args], **kw)


def kubectl_json(*args):
    return json.loads(kubectl(*args, "-o", "json", quiet=True).stdout)


def helm(*args, **kw):
    return run([helm_bin(), "--kubeconfig", KUBECONFIG, *args], **kw)


def node_sh(*args, **kw):
    return run([os.path.join(SCRIPTS, "node.sh"), *args], **kw)


def wait_for(predicate, timeout, what, interval=0.5):
    """Polls predicate until it returns a true value, which is returned; fails naming `what`."""
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


class Api:
    """Direct GETs against the API server with the kubeconfig's client certificate: cheap
    enough to poll once a second (a kubectl process costs ~0.2 s of CPU here)."""

    def __init__(self, kubeconfig=KUBECONFIG):
        with open(kubeconfig) as f:
            cfg = yaml.safe_load(f)
        cluster = cfg["clusters"][0]["cluster"]
        user = cfg["users"][0]["user"]
        self.server = cluster["server"]
        self.ca = cluster["certificate-authority"]
        self.ctx = ssl.create_default_context(cafile=self.ca)
        self.ctx.load_cert_chain(user["client-certificate"], user["client-key"])

    def get(self, path, timeout=5):
        """The decoded object, None when it does not exist; raises OSError when the API
        server cannot be reached."""
        try:
            with urllib.request.urlopen(self.server + path, context=self.ctx, timeout=timeout) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:
            if e.code == 404:
                return None
            raise OSError(f"HTTP {e.code} for {path}") from e

    def ready(self):
        try:
            with urllib.request.urlopen(self.server + "/readyz", context=self.ctx, timeout=3) as r:
                return r.status == 200
        except OSError:
            return False


_libc = ctypes.CDLL(None, use_errno=True)
_CLONE_NEWNET = 0x40000000
_POD_IP = re.compile(r"^10\.42\.([1-9])\.\d+$")


def in_node_network(node, fn):
    """fn() run on a thread that has joined `node`'s network namespace (setns is per
    thread; the thread ends with the call), so its sockets leave from the node itself."""
    out = {}

    def body():
        fd = os.open(f"/run/netns/{node}", os.O_RDONLY)
        try:
            if _libc.setns(fd, _CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"setns into {node}'s network namespace: {os.strerror(err)}")
        finally:
            os.close(fd)
        try:
            out["value"] = fn()
        except BaseException as e:  # noqa: B036 - re-raised on the caller's thread
            out["error"] = e
    t = threading.Thread(target=body, name=f"netns-{node}")
    t.start()
    t.join()
    if "error" in out:
        raise out["error"]
    return out["value"]


def urlopen_read(req, timeout):
    """The body of an HTTP request (a URL or urllib.request.Request). A pod's address
    (10.42.<i>.x) is asked from its node, fedge-edge-<i>: the job's NetworkPolicies
    (enforced by kube-router on every node, as on K3s) let the pod's own node in, as they
    do the kubelet's probes, and this host - outside the cluster - not."""
    url = req.full_url if isinstance(req, urllib.request.Request) else req
    host = urllib.parse.urlsplit(url).hostname or ""
    m = _POD_IP.match(host)

    def read():
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.read()
    return in_node_network(f"fedge-edge-{m.group(1)}", read) if m else read()


def http_json(url, timeout=3):
    try:
        return json.loads(urlopen_read(url, timeout))
    except (OSError, ValueError):
        return None


def metrics_text(url, timeout=5):
    return urlopen_read(url, timeout).decode()


_CONNECT = """
import socket, sys
s = socket.socket()
s.settimeout(float(sys.argv[3]))
try:
    s.connect((sys.argv[1], int(sys.argv[2])))
    print("open")
except ConnectionRefusedError:
    print("refused")
except socket.timeout:
    print("timeout")
except OSError as e:
    print("error", e.errno)
"""


def tcp_connect_from(pid, addr, timeout=3):
    """open | refused | timeout: a TCP connection to HOST:PORT opened from the network
    namespace of process `pid` (a container's), as that pod's own traffic."""
    host, port = addr.rsplit(":", 1)
    r = run(["nsenter", "-t", str(pid), "-n", "python3", "-c", _CONNECT, host, port, str(timeout)], check=False,
            quiet=True, timeout=timeout + 30)
    return r.stdout.strip() or f"nsenter failed: {r.stderr.strip()}"


def metric_value(text, name, labels=None):
    """Sum of the samples of `name` whose labels include `labels` (0 when none)."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        m = re.match(r"([a-zA-Z_:][\w:]*)(\{[^}]*\})?\s+(\S+)", line)
        if not m or m.group(1) != name:
            continue
        have = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
        if all(have.get(k) == v for k, v in (labels or {}).items()):
            total += float(m.group(3))
    return total


# --- cluster, images, node disks -------------------------------------------------------

def cluster_running():
    if not os.path.exists(os.path.join(CLUSTER_DIR, "run", "started")) or not os.path.exists(KUBECONFIG):
        return False
    return Api().ready()


def start_cluster():
    """Starts the cluster unless it runs; returns (started_here, seconds)."""
    if cluster_running():
        log(f"using the running cluster in {CLUSTER_DIR} (left running afterwards)")
        return False, 0.0
    t = time.time()
    r = run([os.path.join(SCRIPTS, "start-cluster.sh")], check=False, timeout=900, max_lines=12)
    if r.returncode != 0:
        run([os.path.join(SCRIPTS, "stop-cluster.sh")], check=False, timeout=300)
        raise AssertionError(f"start-cluster.sh failed ({r.returncode})")
    return True, time.time() - t


def stop_cluster():
    run([os.path.join(SCRIPTS, "stop-cluster.sh")], check=False, timeout=300, max_lines=10)


def build_and_import_images(out_dir):
    """scripts/images.sh into out_dir (its own directory: other engineers' runs write
    build/images), then `node.sh import` of each archive into every node. Returns
    {"images.sh": s, "import": s, "sizes": {image: (compressed, uncompressed)}}."""
    t = time.time()
    r = run([os.path.join(ROOT, "scripts", "images.sh"), "--build-dir", BUILD, "--out", out_dir], timeout=3600,
            max_lines=40)
    built = time.time() - t
    with open(os.path.join(out_dir, "images.json")) as f:
        images = json.load(f)
    sizes = {i["image"]: (i["compressed"], i["uncompressed"]) for i in images}
    # images.sh prints the time it spent packing; the rest was the build lock.
    m = re.search(r"done in ([\d.]+) s", r.stdout)
    t = time.time()
    for i in images:
        node_sh("import", i["archive"], *NODES, timeout=600)
    imported = time.time() - t
    for node in NODES:
        listed = node_sh("ctr", node, "images", "ls", "-q", quiet=True).stdout.split()
        for i in images:
            assert "docker.io/" + i["ref"] in listed, f"{i['ref']} not in {node}'s containerd: {listed}"
    return {"images.sh": built, "pack": float(m.group(1)) if m else None, "import": imported, "sizes": sizes}


def node_disk(node):
    return os.path.join(CLUSTER_DIR, "nodes", node, "disk")


def model_data_owners(node):
    """(uid, gid, mode) of every directory and file of the node's model and data: root's,
    0755 / 0644 as placed. A kubelet applying a pod's fsGroup to a read-write volume
    holding them would make them group 65532 and group-writable."""
    disk = node_disk(node)
    out = {}
    for d in (os.path.join(disk, "models"), os.path.join(disk, "data")):
        for dirpath, dirnames, filenames in os.walk(d):
            for name in [dirpath] + [os.path.join(dirpath, n) for n in filenames]:
                st = os.lstat(name)
                out[name] = (st.st_uid, st.st_gid, st.st_mode & 0o7777)
    return out


def place_model_and_data(work):
    """What cluster-quickstart.yaml's header tells an admin to do on every node: the
    model, the node's own shard (`fedge data wordnet --agents 2`, shard i on node i+1),
    the agents' state directory owned by uid/gid 65532; the model and data root-owned and
    world-readable (the agents only read them; MODEL_DATA_MODE checks nothing changed
    them). Returns the labels."""
    data = os.path.join(work, "shards")
    run([FEDGE, "data", "wordnet", "--agents", str(len(NODES)), "--alpha", "0.5", "--seed", "7", "--test-size", "200",
         "--max-train", "3000", "--out", data], max_lines=8)
    with open(os.path.join(data, "labels.json")) as f:
        labels = json.load(f)
    for i, node in enumerate(NODES):
        disk = node_disk(node)
        model_dir = os.path.join(disk, NODE_MODEL)
        data_dir = os.path.join(disk, NODE_DATA)
        for d in (model_dir, data_dir):
            os.makedirs(d, exist_ok=True)
        for f in MODEL_FILES:
            src = os.path.join(MODEL, f)
            if os.path.exists(src):
                shutil.copyfile(src, os.path.join(model_dir, f))
        for f in ("train.jsonl", "test.jsonl"):
            shutil.copyfile(os.path.join(data, f"agent-{i}", f), os.path.join(data_dir, f))
        os.makedirs(os.path.join(disk, "state"), exist_ok=True)
        os.chmod(os.path.join(disk, "state"), 0o750)
        for dirpath, dirnames, filenames in os.walk(os.path.join(disk, "state")):
            for name in [dirpath] + [os.path.join(dirpath, n) for n in filenames]:
                os.chown(name, POD_UID, POD_UID)
        for path, (uid, gid, mode) in model_data_owners(node).items():
            os.chown(path, 0, 0)
            os.chmod(path, 0o755 if os.path.isdir(path) else 0o644)
        with open(os.path.join(data_dir, "train.jsonl")) as f:
            n = sum(1 for _ in f)
        log(f"{node}: /var/lib/fedge/{NODE_MODEL} (model), /var/lib/fedge/{NODE_DATA} (shard agent-{i}: {n} "
            f"training examples), /var/lib/fedge/state (uid {POD_UID}) on {disk}")
    return labels


# FEDGE_REAL_TLS=0 runs the jobs with spec.privacy.tls: false (plaintext gRPC between
# agents and aggregator) to tell transport faults from the rest; unset, the manifest's
# own setting (the CRD default: mutual TLS) is used. Printed whenever it applies.
TLS_OVERRIDE = os.environ.get("FEDGE_REAL_TLS")


def job_manifest(name, **rounds):
    """deploy/examples/cluster-quickstart.yaml with another name and rounds settings, as a
    user would copy and edit it."""
    with open(QUICKSTART) as f:
        job = yaml.safe_load(f)
    job["metadata"]["name"] = name
    job["spec"]["rounds"].update(rounds)
    if TLS_OVERRIDE is not None:
        job["spec"].setdefault("privacy", {})["tls"] = TLS_OVERRIDE == "1"
        log(f"FEDGE_REAL_TLS={TLS_OVERRIDE}: {name} runs with spec.privacy.tls: {TLS_OVERRIDE == '1'}")
    return yaml.safe_dump(job, sort_keys=False)


def quickstart_manifest(work):
    """The path to apply: the shipped file itself, unless FEDGE_REAL_TLS asks for a copy
    (written into the directory `work`)."""
    if TLS_OVERRIDE is None:
        return QUICKSTART
    path = os.path.join(work, "cluster-quickstart.yaml")
    with open(QUICKSTART) as f:
        job = yaml.safe_load(f)
    with open(path, "w") as f:
        f.write(job_manifest(job["metadata"]["name"]))
    return path


def clear_agent_state(ns, job):
    """Removes <disk>/state/<ns>/<job> on every node. The agents' state outlives its job
    (the operator never touches node files), and a new job of the same name would start
    from it (the agent serves the old job's persisted global model until round 1): the
    tests reuse job names, so each starts clean."""
    for node in NODES:
        d = os.path.join(node_disk(node), "state", ns, job)
        if os.path.isdir(d):
            log(f"{node}: removing the agent state an earlier job {ns}/{job} left in /var/lib/fedge/state/{ns}/{job}")
            shutil.rmtree(d)


def plant_sibling_state(ns, job):
    """Writes <disk>/state/<ns>/<job>/feedback.jsonl on every node as another job's agent
    would have (uid 65532): the state an agent of a different job must not reach.
    Returns the directories (the caller removes them)."""
    dirs = []
    for node in NODES:
        d = os.path.join(node_disk(node), "state", ns, job)
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "feedback.jsonl"), "w") as f:
            f.write('{"text": "another tenant\'s feedback", "label": "noun.plant"}\n')
        for path in (os.path.dirname(d), d, os.path.join(d, "feedback.jsonl")):
            os.chown(path, POD_UID, POD_UID)
        dirs.append(d)
    return dirs


def state_dirs_seen(pid, ns):
    """The entries of /var/lib/fedge/state/<ns> as the container process `pid` sees it
    (through /proc/<pid>/root, its mount namespace's root), sorted; None if absent."""
    d = f"/proc/{pid}/root/var/lib/fedge/state/{ns}"
    return sorted(os.listdir(d)) if os.path.isdir(d) else None


def ensure_namespace(ns, restricted=True):
    if kubectl("get", "namespace", ns, check=False, quiet=True).returncode != 0:
        kubectl("create", "namespace", ns)
    if restricted:
        kubectl("label", "namespace", ns, "pod-security.kubernetes.io/enforce=restricted", "--overwrite")
    wait_for(lambda: kubectl("-n", ns, "get", "sa", "default", check=False, quiet=True).returncode == 0, 60,
             f"the default ServiceAccount of {ns}")


def check_no_other_operator():
    """The cluster is shared: refuse to install next to another fedge operator (two
    operators would both reconcile every job)."""
    releases = json.loads(helm("list", "-A", "-o", "json", quiet=True).stdout or "[]")
    others = [f"{r['namespace']}/{r['name']}" for r in releases if r.get("chart", "").startswith("fedge-")]
    deployments = [d for d in kubectl_json("get", "deployments", "-A")["items"]
                   if "fedge-operator" in d["metadata"]["name"]]
    if others or deployments:
        raise AssertionError(f"another fedge operator is installed (releases {others}, deployments "
                             f"{[d['metadata']['namespace'] + '/' + d['metadata']['name'] for d in deployments]}): "
                             "these tests install their own: uninstall it first (helm uninstall), or, if it was "
                             "left by an interrupted run of these tests, start from a fresh test cluster with "
                             f"{os.path.join(SCRIPTS, 'stop-cluster.sh')} --purge")
    crd = kubectl("get", "crd", "federatedtrainingjobs.fedge.io", check=False, quiet=True)
    if crd.returncode == 0:
        jobs = kubectl_json("get", "ftj", "-A")["items"]
        if jobs:
            raise AssertionError(f"FederatedTrainingJobs exist without an operator: "
                                 f"{[j['metadata']['namespace'] + '/' + j['metadata']['name'] for j in jobs]}")
        # Helm installs crds/ only when the CRD is absent: take a leftover one away so the
        # chart's current CRD is the one under test.
        kubectl("delete", "crd", "federatedtrainingjobs.fedge.io", "--wait=true", timeout=120)
    # A Lease an operator made itself (charts before lease.yaml) would stop `helm install`:
    # Helm refuses to adopt an object it did not make.
    kubectl("-n", RELEASE_NS, "delete", "lease", "fedge-operator", "--ignore-not-found", check=False, quiet=True)


def helm_install(extra=()):
    """`helm install` of the chart (images imported, so pullPolicy Never) and the wait for
    both operator replicas; returns (seconds until both Running and Ready, pods, leader pod)."""
    ensure_namespace(RELEASE_NS)
    t = time.time()
    helm("install", RELEASE, CHART, "--namespace", RELEASE_NS, "--set", "image.pullPolicy=Never", *extra,
         "--wait", "--timeout", "5m", timeout=400, max_lines=12)
    selector = f"app.kubernetes.io/instance={RELEASE},app.kubernetes.io/component=operator"
    kubectl("-n", RELEASE_NS, "wait", "--for=condition=Ready", "pod", "-l", selector, "--timeout=180s", timeout=240)
    ready = time.time() - t
    pods = operator_pods()
    leader = wait_for(lambda: lease_holder_pod(), 60, "a Lease holder")
    return ready, pods, leader


def operator_pods():
    selector = f"app.kubernetes.io/instance={RELEASE},app.kubernetes.io/component=operator"
    return kubectl_json("-n", RELEASE_NS, "get", "pods", "-l", selector)["items"]


def lease_holder_pod():
    """The operator pod named by the Lease's holderIdentity (<pod>_<n>), or None."""
    lease = kubectl("-n", RELEASE_NS, "get", "lease", "fedge-operator", "-o", "jsonpath={.spec.holderIdentity}",
                    check=False, quiet=True)
    holder = lease.stdout.strip() if lease.returncode == 0 else ""
    return holder.rsplit("_", 1)[0] if holder else None


def container_on_node(pod):
    """(node, containerd task line) of each container of `pod`, checked in the node's own
    containerd: the container runs there, as uid 65532 (from /proc)."""
    node = pod["spec"]["nodeName"]
    out = []
    tasks = node_sh("ctr", node, "tasks", "ls", quiet=True).stdout.splitlines()
    for cs in pod["status"].get("containerStatuses", []):
        cid = cs.get("containerID", "").replace("containerd://", "")
        line = next((t for t in tasks if t.split() and t.split()[0] == cid), None)
        assert line, f"{pod['metadata']['name']}/{cs['name']}: container {cid[:12]} not a task in {node}'s containerd"
        pid = line.split()[1]
        with open(f"/proc/{pid}/status") as f:
            uid = re.search(r"^Uid:\s+(\d+)", f.read(), re.M).group(1)
        out.append((node, cs["name"], cid[:12], pid, line.split()[2], uid))
    return out


def wait_agents_joined(ns, job, n, timeout=120):
    """Waits until the job's aggregator counts n joined agents; returns the seconds it
    took from the aggregator's "aggregator serving" log line. On timeout prints, for each
    agent, its last log lines and its TCP connections to the aggregator's gRPC port as
    seen in its pod's network namespace (Recv-Q: bytes the agent has not read), then fails."""
    api = Api()

    def joined():
        p = api.get(f"/api/v1/namespaces/{ns}/pods/{job}-aggregator")
        ip = p and p["status"].get("podIP")
        st = http_json(f"http://{ip}:9090/v1/status") if ip else None
        return st if st and st.get("agents_joined", 0) >= n else None
    try:
        wait_for(joined, timeout, f"{n} agents to join {ns}/{job}'s aggregator", interval=1)
    except AssertionError:
        for p in kubectl_json("-n", ns, "get", "pods", "-l", f"fedge.io/job={job},fedge.io/role=agent")["items"]:
            name = p["metadata"]["name"]
            kubectl("-n", ns, "logs", name, "--tail=3", check=False, max_lines=3)
            for node, _, _, pid, _, _ in container_on_node(p):
                run(["nsenter", f"--net=/proc/{pid}/ns/net", "ss", "-tn", "dport", "=", ":7070"], check=False)
        kubectl("-n", ns, "logs", f"{job}-aggregator", "-c", "aggregator", "--tail=5", check=False)
        raise
    text = kubectl("-n", ns, "logs", f"{job}-aggregator", "-c", "aggregator", quiet=True).stdout
    stamps = re.findall(r'ts=(\S+) .*msg="(aggregator serving|agent joined)"', text)
    serving = next((t for t, m in stamps if m == "aggregator serving"), None)
    joins = [t for t, m in stamps if m == "agent joined"]
    if not serving or len(joins) < n:
        return None

    def secs(ts):
        return time.mktime(time.strptime(ts[:19], "%Y-%m-%dT%H:%M:%S")) + float("0" + ts[19:-1])
    return secs(joins[n - 1]) - secs(serving)


# --- a job's progress, sampled -----------------------------------------------------------

def _pod_summary(p):
    """<name>@<uid[:5]> <phase> and each container that is not running: name=reason(exit)."""
    out = f"{p['metadata']['name']}@{p['metadata']['uid'][:5]} {p['status'].get('phase')}"
    if p["metadata"].get("deletionTimestamp"):
        out += " deleting"
    for c in p["status"].get("containerStatuses", []):
        term = c.get("state", {}).get("terminated")
        if term:
            out += f" {c['name']}={term.get('reason')}({term.get('exitCode')})"
    return out


class JobMonitor(threading.Thread):
    """Samples once a second, until stop(): the job's status from the API server
    (roundsCompleted, state, conditions; None while the API server is away) and the
    aggregator's /v1/status at its pod IP (the completed rounds it reports, its phase; the
    last known IP is kept while the API server is away). Each sample is a dict with t
    (time.time()), api_rounds, state, degraded, restarts (status), agg_rounds,
    agg_round_numbers, agg_uid, agg_phase, pods (a summary of each of the job's pods)."""

    def __init__(self, ns, job):
        super().__init__(daemon=True)
        self.ns, self.job = ns, job
        self.api = Api()
        self.samples = []
        self._halt = threading.Event()
        self._agg = (None, None)  # (uid, ip)

    def run(self):
        while not self._halt.is_set():
            s = {"t": time.time(), "api_rounds": None, "state": None, "degraded": None, "agg_rounds": None,
                 "agg_round_numbers": None, "agg_uid": None, "agg_phase": None, "pods": None, "restarts": None}
            try:
                j = self.api.get(f"/apis/fedge.io/v1alpha1/namespaces/{self.ns}/federatedtrainingjobs/{self.job}")
                if j:
                    st = j.get("status", {})
                    s["api_rounds"] = st.get("roundsCompleted", 0)
                    s["state"] = st.get("state")
                    deg = [c for c in st.get("conditions", []) if c["type"] == "Degraded"]
                    s["degraded"] = (deg[0]["status"] + "/" + deg[0]["reason"]) if deg else None
                    s["restarts"] = st.get("restarts", 0)
                pods = self.api.get(f"/api/v1/namespaces/{self.ns}/pods?labelSelector=fedge.io%2Fjob%3D{self.job}")
                p = next((x for x in pods["items"] if x["metadata"]["name"] == f"{self.job}-aggregator"), None)
                self._agg = (p["metadata"]["uid"], p["status"].get("podIP")) if p else (None, None)
                s["pods"] = sorted(_pod_summary(x) for x in pods["items"])
            except OSError:
                pass  # API server away: keep the aggregator we knew
            uid, ip = self._agg
            if ip:
                st = http_json(f"http://{ip}:9090/v1/status", timeout=2)
                if st:
                    s["agg_rounds"] = len(st.get("rounds", []))
                    s["agg_round_numbers"] = [r["round"] for r in st.get("rounds", [])]
                    s["agg_uid"] = uid
                    s["agg_phase"] = f"{st.get('state')}/{st.get('phase')}/round {st.get('round')}"
            self.samples.append(s)
            self._halt.wait(1.0)

    def stop(self):
        self._halt.set()
        self.join(10)

    def completed(self, s):
        """Completed rounds of a sample: the aggregator's own account when it answered,
        else the job status's."""
        return s["agg_rounds"] if s["agg_rounds"] is not None else s["api_rounds"]

    def completed_before(self, t):
        vals = [self.completed(s) for s in self.samples if s["t"] <= t and self.completed(s) is not None]
        return max(vals) if vals else 0

    def first_after(self, t, predicate):
        return next((s for s in self.samples if s["t"] >= t and predicate(s)), None)

    def never_decreased(self):
        """(ok, detail): status.roundsCompleted and the aggregator's completed rounds never
        went down over the samples."""
        for key in ("api_rounds", "agg_rounds"):
            last = None
            for s in self.samples:
                v = s[key]
                if v is None:
                    continue
                if last is not None and v < last[0]:
                    return False, f"{key} went from {last[0]} (at {last[1]:.1f}) to {v} (at {s['t']:.1f})"
                last = (v, s["t"])
        return True, ""

    def min_after(self, t):
        """Fewest completed rounds an aggregator reported after t (a replaced aggregator
        that restarted from zero, or from an older checkpoint, shows here). The job
        status lags the aggregator by the reporter's period, so it is checked by
        never_decreased() instead."""
        vals = [s["agg_rounds"] for s in self.samples if s["t"] >= t and s["agg_rounds"] is not None]
        return min(vals) if vals else None


def new_workdir(prefix):
    return tempfile.mkdtemp(prefix=prefix)
