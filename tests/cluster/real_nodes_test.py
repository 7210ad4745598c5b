"""Smoke test of the K3s-shaped test cluster with REAL nodes (scripts/cluster/start-cluster.sh).

Brings the cluster up (or uses one that is already running, and then leaves it running),
and checks what fedge's end-to-end tests rely on, the way a user would see it with kubectl:
  - two edge nodes Ready with K3s agent labels, fedge.io/edge=true and their pod CIDRs;
  - pods of the imported images (pause, busybox) run in containers on each node;
  - a ClusterIP Service answers across nodes, by IP and by DNS name (CoreDNS), from the
    node of its own endpoint (hairpin) and from the host;
  - a pod reaches the API server through the `kubernetes` Service over TLS with its
    ServiceAccount token (and is refused without it);
  - each node has its own disk: a file placed in one node's disk is seen there only;
  - a claim of the default StorageClass binds on the pod's node, the pod writes to it,
    and deleting the claim deletes the volume and its directory;
  - re-running start-cluster.sh leaves the running cluster alone;
  - NetworkPolicies are enforced (kube-router's controller, as K3s embeds it): a policy
    selecting a server lets only its peers in, from either node, while the server's own
    node still reaches it; deleting the policy opens it again;
then stops the cluster if it started it.

Exit status 77 (ctest SKIP_RETURN_CODE) with the reason when the cluster cannot be run
here: not root, or binaries not built (scripts/cluster/build-{control-plane,nodes,kine,
coredns,kube-router}.sh). Run by ctest (label integration) or directly: python3 real_nodes_test.py -v
"""
import json
import os
import subprocess
import sys
import time
import unittest
import uuid

ROOT = os.environ.get("FEDGE_SOURCE_DIR", os.path.abspath(os.path.join(os.path.dirname(__file__), "../..")))
SCRIPTS = os.path.join(ROOT, "scripts", "cluster")
CLUSTER_DIR = os.environ.get("FEDGE_CLUSTER_DIR", "/var/lib/fedge-cluster")
K8S_VERSION = os.environ.get("FEDGE_K8S_VERSION", "v1.36.3")
KINE_VERSION = os.environ.get("FEDGE_KINE_VERSION", "v0.17.5")
COREDNS_VERSION = os.environ.get("FEDGE_COREDNS_VERSION", "v1.15.0")
KUBE_ROUTER_VERSION = os.environ.get("FEDGE_KUBE_ROUTER_VERSION", "v2.1.0")
NETWORK_POLICY = os.environ.get("FEDGE_CLUSTER_NETWORK_POLICY", "kube-router")
NODES = ["fedge-edge-1", "fedge-edge-2"]
KUBECONFIG = os.path.join(CLUSTER_DIR, "kubeconfig")
BUSYBOX = "fedge.local/busybox:1.35"
PAUSE = "fedge.local/pause:3.10"


def cache_dir(kind, version, stamp):
    for c in ("/var/cache/fedge", os.path.expanduser("~/.cache/fedge")):
        d = os.path.join(c, kind, version)
        if os.path.exists(os.path.join(d, stamp)):
            return d
    return None


def missing_prerequisites():
    if os.geteuid() != 0:
        return "needs root (network namespaces, cgroups, mounts)"
    cp = cache_dir("control-plane", K8S_VERSION, ".complete")
    if not cp:
        return "control plane not built: run scripts/cluster/build-control-plane.sh"
    if not os.path.exists(os.path.join(cp, ".nodes-complete")):
        return "kubelet/kube-proxy not built: run scripts/cluster/build-nodes.sh"
    if not cache_dir("kine", KINE_VERSION, ".complete"):
        return "kine not built: run scripts/cluster/build-kine.sh"
    if not cache_dir("coredns", COREDNS_VERSION, ".complete"):
        return "CoreDNS not built: run scripts/cluster/build-coredns.sh"
    if NETWORK_POLICY == "kube-router" and not cache_dir("kube-router", KUBE_ROUTER_VERSION, ".complete"):
        return "kube-router not built: run scripts/cluster/build-kube-router.sh"
    for tool in ("containerd", "runc", "ctr", "iptables", "ipset"):
        if not any(os.access(os.path.join(d, tool), os.X_OK) for d in os.environ["PATH"].split(":")):
            return f"{tool} not installed: run scripts/install-deps.sh"
    return None


def kubectl_bin():
    return os.path.join(cache_dir("control-plane", K8S_VERSION, ".complete"), "bin", "kubectl")


def kubectl(*args, check=True, timeout=120, input=None):
    r = subprocess.run([kubectl_bin(), "--kubeconfig", KUBECONFIG, *args], capture_output=True, text=True,
                       timeout=timeout, input=input)
    if check and r.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)} failed ({r.returncode}): {r.stderr.strip()}")
    return r


def kubectl_json(*args):
    return json.loads(kubectl(*args, "-o", "json").stdout)


def wait_for(predicate, timeout, what, errors=None):
    """Polls predicate until it returns a true value; fails naming `what` and the last of
    `errors` (a list the predicate appends to) after `timeout` seconds."""
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(0.5)
    detail = f"; last error: {errors[-1]}" if errors else ""
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r}){detail}")


def cluster_running():
    if not os.path.exists(os.path.join(CLUSTER_DIR, "run", "started")) or not os.path.exists(KUBECONFIG):
        return False
    r = subprocess.run([kubectl_bin(), "--kubeconfig", KUBECONFIG, "get", "--raw", "/readyz"],
                       capture_output=True, text=True, timeout=30)
    return r.returncode == 0


def pod(name, node, image, command=None, labels=None, env=None, volumes=None, mounts=None, restart="Always",
        sa_token=False):
    container = {"name": "main", "image": image, "imagePullPolicy": "Never"}
    if command:
        container["command"] = command
    if env:
        container["env"] = env
    if mounts:
        container["volumeMounts"] = mounts
    spec = {"nodeSelector": {"kubernetes.io/hostname": node}, "containers": [container],
            "restartPolicy": restart, "terminationGracePeriodSeconds": 1,
            "automountServiceAccountToken": sa_token}
    if volumes:
        spec["volumes"] = volumes
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels or {}}, "spec": spec}


class RealNodesTest(unittest.TestCase):
    started_here = False

    @classmethod
    def setUpClass(cls):
        if cluster_running():
            print(f"using the running cluster in {CLUSTER_DIR}", flush=True)
        else:
            t0 = time.time()
            r = subprocess.run([os.path.join(SCRIPTS, "start-cluster.sh")], capture_output=True, text=True,
                               timeout=600)
            sys.stdout.write(r.stdout)
            if r.returncode != 0:
                sys.stderr.write(r.stderr[-6000:])
                subprocess.run([os.path.join(SCRIPTS, "stop-cluster.sh")], capture_output=True, timeout=300)
                raise AssertionError(f"start-cluster.sh failed ({r.returncode})")
            cls.started_here = True
            print(f"start-cluster.sh took {time.time() - t0:.1f} s", flush=True)
        cls.ns = f"realnodes-{uuid.uuid4().hex[:6]}"
        kubectl("create", "namespace", cls.ns)
        # The namespace's default ServiceAccount must exist before pods are admitted.
        wait_for(lambda: kubectl("-n", cls.ns, "get", "sa", "default", check=False).returncode == 0, 60,
                 "the default ServiceAccount")

    @classmethod
    def tearDownClass(cls):
        if os.environ.get("FEDGE_KEEP_TEST_NAMESPACE") == "1":  # debugging: leave it all as it is
            print(f"kept namespace {cls.ns} and the cluster", flush=True)
            return
        try:
            kubectl("delete", "namespace", cls.ns, "--wait=true", "--timeout=120s", check=False, timeout=180)
            marker = os.path.join(CLUSTER_DIR, "nodes", NODES[0], "disk", cls.ns)
            if os.path.isdir(marker):
                for f in os.listdir(marker):
                    os.unlink(os.path.join(marker, f))
                os.rmdir(marker)
        finally:
            if cls.started_here:
                r = subprocess.run([os.path.join(SCRIPTS, "stop-cluster.sh")], capture_output=True, text=True,
                                   timeout=300)
                sys.stdout.write(r.stderr[-3000:])

    def apply(self, obj):
        kubectl("-n", self.ns, "apply", "-f", "-", input=json.dumps(obj))

    def exec_in(self, pod_name, *cmd, check=True):
        return kubectl("-n", self.ns, "exec", pod_name, "--", *cmd, check=check, timeout=60)

    def wait_ready(self, *pods, timeout=120):
        r = kubectl("-n", self.ns, "wait", "--for=condition=Ready", f"--timeout={timeout}s",
                    *[f"pod/{p}" for p in pods], check=False, timeout=timeout + 30)
        if r.returncode != 0:
            desc = kubectl("-n", self.ns, "describe", "pods", *pods, check=False).stdout
            self.fail(f"pods {pods} not Ready: {r.stderr}\n{desc[-4000:]}")

    # ------------------------------------------------------------------------------------
    def test_1_nodes_ready_with_k3s_agent_labels(self):
        nodes = {n["metadata"]["name"]: n for n in kubectl_json("get", "nodes")["items"]}
        self.assertEqual(sorted(nodes), NODES)
        cidrs = set()
        for i, name in enumerate(NODES, start=1):
            node = nodes[name]
            labels = node["metadata"]["labels"]
            for key, value in (("fedge.io/edge", "true"), ("kubernetes.io/os", "linux"),
                               ("kubernetes.io/arch", "amd64"), ("kubernetes.io/hostname", name),
                               ("node.kubernetes.io/instance-type", "k3s"),
                               ("node-role.kubernetes.io/edge", "true")):
                self.assertEqual(labels.get(key), value, f"{name} label {key}")
            ready = [c for c in node["status"]["conditions"] if c["type"] == "Ready"][0]
            self.assertEqual(ready["status"], "True", f"{name}: {ready}")
            self.assertEqual(node["spec"].get("taints", []), [], f"{name} carries taints")
            addresses = {a["type"]: a["address"] for a in node["status"]["addresses"]}
            self.assertEqual(addresses.get("InternalIP"), f"10.77.0.{10 + i}")
            self.assertEqual(node["spec"]["podCIDR"], f"10.42.{i}.0/24")
            cidrs.add(node["spec"]["podCIDR"])
        self.assertEqual(len(cidrs), 2)

    def test_2_pods_services_dns_and_api_access(self):
        env = [{"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}]
        web = ["sh", "-c", "mkdir -p /tmp/www && echo \"hello from $NODE_NAME\" > /tmp/www/index.html && "
               "echo serving on $NODE_NAME && exec httpd -f -v -p 8080 -h /tmp/www"]
        for i, node in enumerate(NODES, start=1):
            self.apply(pod(f"web-{i}", node, BUSYBOX, command=web, labels={"app": f"web-{i}"}, env=env,
                           sa_token=True))
            self.apply(pod(f"pause-{i}", node, PAUSE))
            self.apply({"apiVersion": "v1", "kind": "Service", "metadata": {"name": f"web-{i}"},
                        "spec": {"selector": {"app": f"web-{i}"}, "ports": [{"port": 80, "targetPort": 8080}]}})
        self.wait_ready("web-1", "web-2", "pause-1", "pause-2")
        for i, node in enumerate(NODES, start=1):
            for name in (f"web-{i}", f"pause-{i}"):
                p = kubectl_json("-n", self.ns, "get", "pod", name)
                self.assertEqual(p["spec"]["nodeName"], node)
                self.assertTrue(p["status"]["podIP"].startswith(f"10.42.{i}."), p["status"]["podIP"])
        logs = kubectl("-n", self.ns, "logs", "web-2").stdout
        self.assertIn("serving on fedge-edge-2", logs)

        ip2 = kubectl("-n", self.ns, "get", "svc", "web-2", "-o", "jsonpath={.spec.clusterIP}").stdout
        self.assertTrue(ip2.startswith("10.43."), ip2)

        def fetch(from_pod, url):
            # (Debian's busybox 1.35 wget crashes on -T: bound it with timeout instead.)
            r = self.exec_in(from_pod, "timeout", "5", "wget", "-q", "-O", "-", url, check=False)
            if r.returncode != 0:
                errors.append(f"{from_pod} -> {url}: {r.stderr.strip()}")
                return None
            return r.stdout.strip()

        errors = []

        # Endpoints reach kube-proxy's rules a moment after the pod is Ready: poll.
        self.assertEqual(wait_for(lambda: fetch("web-1", f"http://{ip2}/"), 60, "ClusterIP across nodes",
                                  errors), "hello from fedge-edge-2")
        fqdn = f"web-2.{self.ns}.svc.cluster.local"
        self.assertEqual(wait_for(lambda: fetch("web-1", f"http://{fqdn}/"), 60, "Service by DNS name", errors),
                         "hello from fedge-edge-2")
        self.assertEqual(fetch("web-2", "http://web-1/"), "hello from fedge-edge-1")  # search path, other way
        # From the host, through the first node's kube-proxy (start-cluster.sh routes the
        # Service CIDR there), to the endpoint on the second node.
        def fetch_from_host(url):
            r = subprocess.run(["busybox", "timeout", "5", "wget", "-q", "-O", "-", url], capture_output=True,
                               text=True, timeout=30)
            if r.returncode != 0:
                errors.append(f"host -> {url}: {r.stderr.strip()}")
                return None
            return r.stdout.strip()

        self.assertEqual(wait_for(lambda: fetch_from_host(f"http://{ip2}/"), 30, "ClusterIP from the host", errors),
                         "hello from fedge-edge-2")
        # hairpin (FQDN: the bare pod name resolves to the pod itself through /etc/hosts)
        self.assertEqual(fetch("web-1", f"http://web-1.{self.ns}.svc.cluster.local/"), "hello from fedge-edge-1")
        lookup = self.exec_in("web-2", "nslookup", f"web-1.{self.ns}.svc.cluster.local").stdout
        self.assertIn(kubectl("-n", self.ns, "get", "svc", "web-1", "-o", "jsonpath={.spec.clusterIP}").stdout,
                      lookup)

        # The API server through the `kubernetes` Service, over TLS verified against the
        # ServiceAccount CA, with the pod's token (httpget: busybox's wget verifies nothing).
        sa = "/var/run/secrets/kubernetes.io/serviceaccount"
        ok = self.exec_in("web-1", "httpget", "-sa", "https://kubernetes.default.svc/api")
        self.assertEqual(json.loads(ok.stdout)["kind"], "APIVersions")
        anonymous = self.exec_in("web-1", "httpget", "-ca", f"{sa}/ca.crt", "https://kubernetes.default.svc/api",
                                 check=False)
        self.assertEqual(anonymous.returncode, 3, "the API server answered a pod without a token")
        self.assertIn("HTTP 403", anonymous.stderr)
        unverified = self.exec_in("web-1", "httpget", "https://kubernetes.default.svc/api", check=False)
        self.assertEqual(unverified.returncode, 1)
        self.assertIn("certificate signed by unknown authority", unverified.stderr)

    def test_3_each_node_has_its_own_disk(self):
        disk = os.path.join(CLUSTER_DIR, "nodes", NODES[0], "disk", self.ns)
        os.makedirs(disk, exist_ok=True)
        with open(os.path.join(disk, "marker"), "w") as f:
            f.write("placed on fedge-edge-1\n")
        vol = [{"name": "node-disk", "hostPath": {"path": "/var/lib/fedge", "type": "Directory"}}]
        mnt = [{"name": "node-disk", "mountPath": "/node", "readOnly": True}]
        for i, node in enumerate(NODES, start=1):
            self.apply(pod(f"disk-{i}", node, BUSYBOX, restart="Never", volumes=vol, mounts=mnt,
                           command=["sh", "-c", f"cat /node/{self.ns}/marker 2>/dev/null || echo absent"]))
        for i in (1, 2):
            kubectl("-n", self.ns, "wait", "--for=jsonpath={.status.phase}=Succeeded", "--timeout=120s",
                    f"pod/disk-{i}", timeout=150)
        self.assertEqual(kubectl("-n", self.ns, "logs", "disk-1").stdout.strip(), "placed on fedge-edge-1")
        self.assertEqual(kubectl("-n", self.ns, "logs", "disk-2").stdout.strip(), "absent")

    def test_4_claim_binds_on_the_pods_node_and_is_deleted_with_it(self):
        sc = kubectl_json("get", "storageclass", "local-path")
        self.assertEqual(sc["metadata"]["annotations"].get("storageclass.kubernetes.io/is-default-class"), "true")
        self.assertEqual(sc["volumeBindingMode"], "WaitForFirstConsumer")
        self.apply({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "data"},
                    "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "64Mi"}}}})
        vol = [{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}]
        mnt = [{"name": "data", "mountPath": "/data"}]
        self.apply(pod("writer", NODES[1], BUSYBOX, restart="Never", volumes=vol, mounts=mnt,
                       command=["sh", "-c", "echo written-on-$(hostname) > /data/f && cat /data/f"]))
        kubectl("-n", self.ns, "wait", "--for=jsonpath={.status.phase}=Succeeded", "--timeout=120s", "pod/writer",
                timeout=150)
        pvc = kubectl_json("-n", self.ns, "get", "pvc", "data")
        self.assertEqual(pvc["status"]["phase"], "Bound")
        self.assertEqual(pvc["spec"]["storageClassName"], "local-path")
        pv_name = pvc["spec"]["volumeName"]
        pv = kubectl_json("get", "pv", pv_name)
        terms = pv["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"]
        self.assertEqual(terms[0]["matchExpressions"][0]["values"], [NODES[1]])
        host_dir = os.path.join(CLUSTER_DIR, "nodes", NODES[1], "disk", "storage", pv_name)
        with open(os.path.join(host_dir, "f")) as f:
            self.assertEqual(f.read().strip(), "written-on-writer")
        # A second pod of the claim sees the data (and is scheduled to the volume's node).
        self.apply(pod("reader", NODES[1], BUSYBOX, restart="Never", volumes=vol, mounts=mnt,
                       command=["cat", "/data/f"]))
        kubectl("-n", self.ns, "wait", "--for=jsonpath={.status.phase}=Succeeded", "--timeout=120s", "pod/reader",
                timeout=150)
        self.assertEqual(kubectl("-n", self.ns, "logs", "reader").stdout.strip(), "written-on-writer")

        kubectl("-n", self.ns, "delete", "pod", "writer", "reader", "--wait=true", timeout=120)
        kubectl("-n", self.ns, "delete", "pvc", "data", "--wait=true", timeout=120)
        wait_for(lambda: kubectl("get", "pv", pv_name, check=False).returncode != 0, 60, f"{pv_name} deleted")
        self.assertFalse(os.path.exists(host_dir), f"{host_dir} left behind")

    def test_5_rerun_of_start_cluster_leaves_the_running_cluster_alone(self):
        # Regression: start-cluster.sh rewrote kube-proxy's config file on every run, and
        # kube-proxy exits when its config file is written (even with the same content),
        # so re-running the "idempotent" script killed every node's kube-proxy.
        def state():
            pids, mtimes = {}, {}
            for node in NODES:
                d = os.path.join(CLUSTER_DIR, "nodes", node)
                for comp in ("containerd", "kubelet", "kube-proxy") + (
                        ("kube-router",) if NETWORK_POLICY == "kube-router" else ()):
                    with open(os.path.join(d, "run", f"{comp}.pid")) as f:
                        pids[f"{node}/{comp}"] = f.read().strip()
                for cfg in ("kube-proxy.yaml", "kubelet-config.yaml", "containerd/config.toml",
                            "cni/net.d/10-fedge.conflist"):
                    mtimes[f"{node}/{cfg}"] = os.stat(os.path.join(d, cfg)).st_mtime_ns
            with open(os.path.join(CLUSTER_DIR, "control-plane", "run", "kube-apiserver.pid")) as f:
                pids["kube-apiserver"] = f.read().strip()
            return pids, mtimes

        before = state()
        r = subprocess.run([os.path.join(SCRIPTS, "start-cluster.sh")], capture_output=True, text=True, timeout=300)
        self.assertEqual(r.returncode, 0, r.stderr[-3000:])
        self.assertIn("cluster up in", r.stdout)
        after = state()
        self.assertEqual(after[1], before[1], "start-cluster.sh rewrote an unchanged config file")
        self.assertEqual(after[0], before[0], "start-cluster.sh restarted a running component")
        for name, pid in after[0].items():
            with open(f"/proc/{pid}/stat") as f:
                self.assertNotEqual(f.read().split()[2], "Z", f"{name} ({pid}) has exited")

    @unittest.skipUnless(NETWORK_POLICY == "kube-router", "FEDGE_CLUSTER_NETWORK_POLICY=none: not enforced")
    def test_6_network_policies_are_enforced_as_on_k3s(self):
        web = ["sh", "-c", "mkdir -p /tmp/www && echo np-server > /tmp/www/index.html && "
               "exec httpd -f -p 8080 -h /tmp/www"]
        idle = ["sleep", "3600"]
        self.apply(pod("np-server", NODES[0], BUSYBOX, command=web, labels={"app": "np-server"}))
        # A peer and a stranger on each node: the same node's bridge and the route between
        # nodes are different paths through the node's FORWARD chain.
        clients = {}
        for i, node in enumerate(NODES, start=1):
            clients[f"np-peer-{i}"] = node
            self.apply(pod(f"np-peer-{i}", node, BUSYBOX, command=idle, labels={"np-role": "peer"}))
            clients[f"np-stranger-{i}"] = node
            self.apply(pod(f"np-stranger-{i}", node, BUSYBOX, command=idle))
        self.wait_ready("np-server", *clients)
        server_ip = kubectl_json("-n", self.ns, "get", "pod", "np-server")["status"]["podIP"]
        url = f"http://{server_ip}:8080/"

        def reaches(client):
            r = self.exec_in(client, "timeout", "3", "wget", "-q", "-O", "-", url, check=False)
            return r.returncode == 0 and r.stdout.strip() == "np-server"

        def from_node(node):
            r = subprocess.run([os.path.join(SCRIPTS, "node.sh"), "exec", node, "busybox", "timeout", "3", "wget",
                                "-q", "-O", "-", url], capture_output=True, text=True, timeout=30)
            return r.returncode == 0 and r.stdout.strip() == "np-server"

        def everyone():
            return {c: reaches(c) for c in clients}

        # No policy selects the server yet: everyone gets in.
        wait_for(lambda: all(everyone().values()), 30, "every client to reach the server before any policy")
        policy = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                  "metadata": {"name": "np-server"},
                  "spec": {"podSelector": {"matchLabels": {"app": "np-server"}}, "policyTypes": ["Ingress"],
                           "ingress": [{"from": [{"podSelector": {"matchLabels": {"np-role": "peer"}}}],
                                        "ports": [{"port": 8080, "protocol": "TCP"}]}]}}
        t0 = time.time()
        self.apply(policy)
        want = {c: c.startswith("np-peer-") for c in clients}
        got = wait_for(lambda: (lambda e: e if e == want else None)(everyone()), 60,
                       f"only the peers to reach the server (want {want})")
        print(f"policy enforced {time.time() - t0:.1f} s after it was applied: {got}", flush=True)
        self.assertTrue(from_node(NODES[0]), "the server's own node (kubelet probes) was cut off")
        # A new pod with the peer label is let in, and a peer losing it is cut off: the
        # controller follows pods, not just policies.
        kubectl("-n", self.ns, "label", "pod", "np-stranger-2", "np-role=peer")
        kubectl("-n", self.ns, "label", "pod", "np-peer-1", "np-role-")
        want.update({"np-stranger-2": True, "np-peer-1": False})
        wait_for(lambda: everyone() == want, 60, f"the relabelled pods to follow (want {want})")
        kubectl("-n", self.ns, "delete", "networkpolicy", "np-server")
        wait_for(lambda: all(everyone().values()), 60, "every client to reach the server once the policy is gone")


if __name__ == "__main__":
    reason = missing_prerequisites()
    if reason:
        print(f"SKIPPED: {reason}")
        sys.exit(77)
    unittest.main()
