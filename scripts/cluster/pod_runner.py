#!/usr/bin/env python3
"""fedge pod runner: plays kubelet for edge nodes on the test control plane.

No kubelet or container runtime can run here, so this harness:
  * registers Node objects (edge labels, capacity) and keeps them Ready (node status
    heartbeats and kube-node-lease Leases);
  * watches pods bound to its nodes and runs each container's command as a local process
    (the image name maps to a local binary: fedge/aggregator -> fedge-aggregator, ...);
  * gives each pod its own loopback address (127.B.x.y, B random per runner so that two
    runners on one machine do not hand out the same addresses) as its pod IP, rewrites
    "0.0.0.0:" listen addresses to it, and resolves the job's Service names in arguments
    to the IP and target port of the pod behind the Service;
  * materializes volumes (configMap, secret, emptyDir, hostPath, projected service-account
    token, persistentVolumeClaim: the directory of its bound local/hostPath
    PersistentVolume, else one of its own) into directories and rewrites mount paths in
    arguments;
    configMap and secret volumes use the kubelet's symlink layout and are refreshed while
    the pod runs (--volume-sync), like a kubelet's periodic sync;
  * reports phase, readiness (httpGet readiness probes), pod IP and exit codes, and kills
    the processes of deleted pods;
  * on request (HTTP control endpoint), makes a node NotReady/Ready or kills a pod.

Python 3 standard library only.

Control endpoint (127.0.0.1, port printed as "pod-runner ready control=PORT"):
  POST /nodes/<node>/notready   stop heartbeats, report Ready=False, and act on none of the
                                node's pods (as a kubelet that is away: new pods wait, deleted
                                ones keep running and stay Terminating, and a pod whose
                                processes end meanwhile is not reported as ended)
  POST /nodes/<node>/ready      resume heartbeats, report what the node's pods did meanwhile,
                                then act on what changed
  POST /pods/<ns>/<name>/kill   SIGKILL the pod's processes (the pod fails with 137)
  GET  /pods                    JSON of the pods this runner runs
"""
import argparse
import base64
import datetime
import http.server
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request


def now_rfc3339(micro=False):
    t = datetime.datetime.now(datetime.timezone.utc)
    if micro:
        return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def log(msg, **fields):
    extra = " ".join(f"{k}={json.dumps(v) if isinstance(v, str) and ' ' in v else v}" for k, v in fields.items())
    sys.stderr.write(f"ts={now_rfc3339()} component=pod-runner msg=\"{msg}\" {extra}\n")
    sys.stderr.flush()


class Api:
    """Minimal Kubernetes REST client over urllib with client-certificate auth."""

    def __init__(self, kubeconfig):
        import_yaml_free = {}
        text = open(kubeconfig).read()
        # The kubeconfig written by start-control-plane.sh: simple "key: value" lines.
        for line in text.splitlines():
            m = re.match(r"\s*-?\s*(server|certificate-authority|client-certificate|client-key):\s*(\S+)", line)
            if m and m.group(1) not in import_yaml_free:
                import_yaml_free[m.group(1)] = m.group(2)
        self.server = import_yaml_free["server"]
        self.ctx = ssl.create_default_context(cafile=import_yaml_free["certificate-authority"])
        self.ctx.load_cert_chain(import_yaml_free["client-certificate"], import_yaml_free["client-key"])
        self.ca_file = import_yaml_free["certificate-authority"]

    def request(self, method, path, body=None, content_type="application/json", timeout=30):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.server + path, data=data, method=method)
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(req, context=self.ctx, timeout=timeout) as r:
                raw = r.read()
                return r.status, (json.loads(raw) if raw else {})
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                return e.code, json.loads(raw)
            except ValueError:
                return e.code, {"message": raw.decode(errors="replace")}

    def get(self, path):
        return self.request("GET", path)

    def merge_patch(self, path, body):
        return self.request("PATCH", path, body, "application/merge-patch+json")

    def watch(self, path, rv, timeout=300):
        sep = "&" if "?" in path else "?"
        url = f"{self.server}{path}{sep}watch=1&allowWatchBookmarks=true&timeoutSeconds={timeout}&resourceVersion={rv}"
        req = urllib.request.Request(url)
        with urllib.request.urlopen(req, context=self.ctx, timeout=timeout + 30) as r:
            for line in r:
                if line.strip():
                    yield json.loads(line)


class PodProc:
    def __init__(self, pod):
        self.pod = pod
        self.uid = pod["metadata"]["uid"]
        self.ns = pod["metadata"]["namespace"]
        self.name = pod["metadata"]["name"]
        self.node = pod["spec"]["nodeName"]
        self.procs = {}       # container name -> Popen
        self.exit_codes = {}  # container name -> code
        self.ip = None
        self.ready = False
        self.killed = False
        self.deleting = False
        self.done = False
        self.synced_volumes = {}  # volume name -> (volume spec, directory, files written)
        self.tokens = {}  # projected token path -> (directory, serviceAccountToken source, renew at)
        self.node_paths = {}  # volume name -> node path of its local/hostPath PersistentVolume


class Runner:
    def __init__(self, args):
        self.args = args
        self.api = Api(args.kubeconfig)
        self.root = os.path.abspath(args.root)
        os.makedirs(self.root, exist_ok=True)
        self.nodes = [f"{args.node_prefix}-{i}" for i in range(args.nodes)] + list(args.node or [])
        self.not_ready = set()
        self.lock = threading.Lock()
        self.pods = {}  # uid -> PodProc
        self.held = {}  # uid -> (event type, pod): the latest event for a pod of a NotReady node
        # uid -> (PodProc, status): the latest status of a pod of a NotReady node, whose
        # process may still end meanwhile; reported when the node is back, as a kubelet
        # that was cut off reports then.
        self.unreported = {}
        self.next_ip = 10
        # Another runner on this machine (a concurrent test run) must not hand out the same
        # pod IPs: their listeners would collide (EADDRINUSE). 127.0.x.x is left alone.
        self.ip_block = int.from_bytes(os.urandom(1), "big") % 250 + 2
        self.stop = threading.Event()
        self.api_port = urllib.parse.urlparse(self.api.server).port

    # ---- nodes -----------------------------------------------------------------------
    def register_nodes(self):
        labels = {"fedge.io/edge": "true"}
        for kv in self.args.label or []:
            k, _, v = kv.partition("=")
            labels[k] = v
        for name in self.nodes:
            node = {"apiVersion": "v1", "kind": "Node",
                    "metadata": {"name": name, "labels": dict(labels, **{"kubernetes.io/hostname": name,
                                                                          "kubernetes.io/os": "linux"})},
                    "spec": {}}
            code, body = self.api.request("POST", "/api/v1/nodes", node)
            if code not in (201, 409):
                raise RuntimeError(f"register node {name}: {code} {body}")
            self.post_node_status(name, True)
            self.renew_lease(name)
        log("nodes registered", nodes=",".join(self.nodes))

    def post_node_status(self, name, ready):
        now = now_rfc3339()
        status = {"status": {
            "capacity": {"cpu": "16", "memory": "64Gi", "pods": "250"},
            "allocatable": {"cpu": "16", "memory": "64Gi", "pods": "250"},
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}, {"type": "Hostname", "address": name}],
            "nodeInfo": {"kubeletVersion": "fedge-pod-runner", "architecture": "amd64", "operatingSystem": "linux",
                         "containerRuntimeVersion": "process://local", "osImage": "local", "kernelVersion": "",
                         "machineID": name, "systemUUID": name, "bootID": "", "kubeProxyVersion": ""},
            "conditions": [{"type": "Ready", "status": "True" if ready else "False",
                            "reason": "KubeletReady" if ready else "KubeletNotReady",
                            "message": "pod runner is posting ready status" if ready else "made NotReady by the test",
                            "lastHeartbeatTime": now, "lastTransitionTime": now}]}}
        # Keep lastTransitionTime stable across heartbeats.
        code, cur = self.api.get(f"/api/v1/nodes/{name}")
        if code == 200:
            for c in cur.get("status", {}).get("conditions", []):
                if c.get("type") == "Ready" and c.get("status") == status["status"]["conditions"][0]["status"]:
                    status["status"]["conditions"][0]["lastTransitionTime"] = c.get("lastTransitionTime", now)
        self.api.merge_patch(f"/api/v1/nodes/{name}/status", status)

    def renew_lease(self, name):
        path = f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{name}"
        code, lease = self.api.get(path)
        spec = {"holderIdentity": name, "leaseDurationSeconds": 40, "renewTime": now_rfc3339(micro=True)}
        if code == 404:
            self.api.request("POST", "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases",
                             {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                              "metadata": {"name": name, "namespace": "kube-node-lease"}, "spec": spec})
        elif code == 200:
            self.api.merge_patch(path, {"spec": spec})

    def heartbeat_loop(self):
        while not self.stop.wait(self.args.heartbeat):
            for name in self.nodes:
                try:
                    if name in self.not_ready:
                        continue
                    self.renew_lease(name)
                    self.post_node_status(name, True)
                except Exception as e:  # keep heartbeating other nodes
                    log("heartbeat failed", node=name, error=str(e))

    # ---- volumes and rewriting ---------------------------------------------------------
    def host_path(self, node, path):
        # Writable node state goes under the runner's root; real data paths are used as is.
        if path.startswith("/var/lib/fedge"):
            return os.path.join(self.root, "nodes", node, path.lstrip("/"))
        # Every simulated node shares this filesystem: a per-node subdirectory
        # <path>/<node> stands for that node's own copy of the path (its data shard).
        per_node = os.path.join(path, node)
        if os.path.isdir(per_node):
            return per_node
        return path

    def claim_node_path(self, pp, claim):
        """The node path of the local or hostPath PersistentVolume a claim is bound to, or None.
        As the kubelet, a pod waits while such a claim is not bound yet, and cannot start on
        one that is being deleted (RuntimeError: run_pod retries until its start timeout)."""
        code, pvc = self.api.get(f"/api/v1/namespaces/{pp.ns}/persistentvolumeclaims/{claim}")
        volume = pvc.get("spec", {}).get("volumeName") if code == 200 else None
        if volume:
            if pvc.get("metadata", {}).get("deletionTimestamp"):
                raise RuntimeError(f"persistentvolumeclaim {claim} is being deleted")
            if pvc.get("status", {}).get("phase") != "Bound":
                raise RuntimeError(f"persistentvolumeclaim {claim} is not bound")
            code, pv = self.api.get(f"/api/v1/persistentvolumes/{volume}")
            src = pv.get("spec", {}) if code == 200 else {}
            return (src.get("local") or src.get("hostPath") or {}).get("path")
        return None

    def claim_path(self, pp, claim):
        """A claim bound to a local or hostPath PersistentVolume is that node directory (as
        the kubelet mounts it); any other claim is a directory of its own under the root."""
        path = self.claim_node_path(pp, claim)
        if path:
            return self.host_path(pp.node, path)
        return os.path.join(self.root, "pvc", pp.ns, claim)

    def mount_dir(self, pp, m, mounts):
        """The directory a container's volumeMount shows: its volume's, or with a subPath the
        directory below it (created when missing, as the kubelet does). Below a local
        volume the subPath is a node path, mapped like any other (host_path)."""
        sub = m.get("subPath", "")
        if not sub:
            return mounts[m["name"]]
        root = pp.node_paths.get(m["name"])
        d = self.host_path(pp.node, os.path.join(root, sub)) if root else os.path.join(mounts[m["name"]], sub)
        os.makedirs(d, exist_ok=True)
        return d

    def materialize_volumes(self, pp):
        base = os.path.join(self.root, "pods", pp.uid, "volumes")
        out = {}
        pp.node_paths = {}
        for v in pp.pod["spec"].get("volumes", []):
            name = v["name"]
            d = os.path.join(base, name)
            if "hostPath" in v:
                d = self.host_path(pp.node, v["hostPath"]["path"])
                if v["hostPath"].get("type") == "DirectoryOrCreate":
                    os.makedirs(d, exist_ok=True)
                out[name] = d
                continue
            if "persistentVolumeClaim" in v:
                node_path = self.claim_node_path(pp, v["persistentVolumeClaim"]["claimName"])
                if node_path:
                    pp.node_paths[name] = node_path
                d = self.claim_path(pp, v["persistentVolumeClaim"]["claimName"])
                os.makedirs(d, exist_ok=True)
                out[name] = d
                continue
            os.makedirs(d, exist_ok=True)
            if "configMap" in v or "secret" in v:
                files = self.fetch_volume_files(pp, v)
                if files is None:
                    kind = "configmap" if "configMap" in v else "secret"
                    raise RuntimeError(f"{kind} of volume {name} is not readable yet")
                self.atomic_write(d, files)
                pp.synced_volumes[name] = (v, d, files)
            elif "projected" in v:
                for src in v["projected"].get("sources", []):
                    if "serviceAccountToken" in src:
                        self.write_token(pp, d, src["serviceAccountToken"])
                    elif "configMap" in src:
                        code, cm = self.api.get(f"/api/v1/namespaces/{pp.ns}/configmaps/{src['configMap']['name']}")
                        if code == 200:
                            self.write_items(d, {k: val.encode() for k, val in cm.get("data", {}).items()},
                                             src["configMap"].get("items"))
                        elif src["configMap"]["name"] == "kube-root-ca.crt":  # may lag: the cluster CA is the same file
                            self.write_file(d, "ca.crt", open(self.api.ca_file, "rb").read())
                        else:  # as the kubelet: the pod waits for it
                            raise RuntimeError(f"configmap {src['configMap']['name']} of volume {name} is not readable yet")
                    elif "downwardAPI" in src:
                        for item in src["downwardAPI"].get("items", []):
                            if item.get("fieldRef", {}).get("fieldPath") == "metadata.namespace":
                                self.write_file(d, item["path"], pp.ns.encode())
            # emptyDir: the directory is enough
            out[name] = d
        return out

    def write_token(self, pp, d, sat):
        """A projected service-account token for the pod, as the kubelet requests it: bound to
        the pod, for the source's audience; renewed by the sync loop at 80% of its lifetime."""
        sa = pp.pod["spec"].get("serviceAccountName", "default")
        expiration = sat.get("expirationSeconds", 3607)
        spec = {"expirationSeconds": expiration,
                "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": pp.name, "uid": pp.uid}}
        if sat.get("audience"):
            spec["audiences"] = [sat["audience"]]
        code, tr = self.api.request(
            "POST", f"/api/v1/namespaces/{pp.ns}/serviceaccounts/{sa}/token",
            {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec})
        if code != 201:
            raise RuntimeError(f"token request for {sa}: {code} {tr}")
        # Replaced by rename, as the kubelet's atomic writer swaps it: a reader never sees half.
        path = os.path.join(d, sat["path"])
        self.write_file(d, sat["path"] + ".tmp", tr["status"]["token"].encode())
        os.replace(path + ".tmp", path)
        pp.tokens[path] = (d, sat, time.time() + 0.8 * expiration)

    def fetch_volume_files(self, pp, v):
        """The files (relative path -> bytes) a configMap or secret volume projects, or None."""
        if "configMap" in v:
            code, cm = self.api.get(f"/api/v1/namespaces/{pp.ns}/configmaps/{v['configMap']['name']}")
            if code != 200:
                return None
            data, items = {k: val.encode() for k, val in cm.get("data", {}).items()}, v["configMap"].get("items")
        else:
            code, sec = self.api.get(f"/api/v1/namespaces/{pp.ns}/secrets/{v['secret']['secretName']}")
            if code != 200:
                return None
            data, items = {k: base64.b64decode(val) for k, val in sec.get("data", {}).items()}, v["secret"].get("items")
        if items:
            return {it["path"]: data[it["key"]] for it in items if it["key"] in data}
        return dict(data)

    @staticmethod
    def atomic_write(d, files):
        """The kubelet's AtomicWriter layout: d/<name> -> ..data/<name>, ..data -> ..<version>.

        An update writes a new version directory and renames a new ..data symlink over the
        old one, so a reader sees the old or the new set of files, never a mix, and a
        file's inode changes when its content does (what the aggregator watches for).
        """
        version = f"..{datetime.datetime.now(datetime.timezone.utc).strftime('%Y_%m_%d_%H_%M_%S.%f')}"
        vdir = os.path.join(d, version)
        for rel, data in files.items():
            Runner.write_file(vdir, rel, data)
        old = os.readlink(os.path.join(d, "..data")) if os.path.islink(os.path.join(d, "..data")) else None
        tmp = os.path.join(d, "..data_tmp")
        if os.path.lexists(tmp):
            os.unlink(tmp)
        os.symlink(version, tmp)
        os.replace(tmp, os.path.join(d, "..data"))
        for top in {rel.split("/")[0] for rel in files}:
            link = os.path.join(d, top)
            if not os.path.lexists(link):
                os.symlink(os.path.join("..data", top), link)
        if old and old != version:
            shutil.rmtree(os.path.join(d, old), ignore_errors=True)

    def volume_sync_loop(self):
        """Refreshes running pods' configMap/secret volumes, as the kubelet does periodically."""
        while not self.stop.wait(self.args.volume_sync):
            with self.lock:
                pods = [pp for pp in self.pods.values() if pp.procs and not pp.done and not pp.deleting]
            for pp in pods:
                for name, (v, d, files) in list(pp.synced_volumes.items()):
                    try:
                        new = self.fetch_volume_files(pp, v)
                    except Exception as e:  # the API server may be restarting
                        log("volume sync failed", pod=pp.name, volume=name, error=str(e))
                        continue
                    if new is not None and new != files:
                        self.atomic_write(d, new)
                        pp.synced_volumes[name] = (v, d, new)
                        log("volume updated", pod=f"{pp.ns}/{pp.name}", volume=name)
                for path, (d, sat, renew_at) in list(pp.tokens.items()):
                    if time.time() < renew_at:
                        continue
                    try:
                        self.write_token(pp, d, sat)
                        log("token renewed", pod=f"{pp.ns}/{pp.name}", path=path)
                    except Exception as e:
                        log("token renewal failed", pod=pp.name, error=str(e))

    @staticmethod
    def write_file(d, rel, data):
        p = os.path.join(d, rel)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "wb") as f:
            f.write(data)
        os.chmod(p, 0o600)

    def write_items(self, d, data, items):
        if items:
            for it in items:
                if it["key"] in data:
                    self.write_file(d, it["path"], data[it["key"]])
        else:
            for k, val in data.items():
                self.write_file(d, k, val)

    def resolve_service(self, ns, host, port):
        """Service DNS name -> (pod IP, target port) of a running backend, None when it is no
        Service, "wait" while a backend is yet to run, or a closed loopback port when every
        backend has completed: a Service without endpoints refuses connections (as when a
        finished job's serving agent is made again and its aggregator is gone)."""
        parts = host.split(".")
        if len(parts) > 1 and parts[1] != ns:
            ns = parts[1]
        svc_name = parts[0]
        code, svc = self.api.get(f"/api/v1/namespaces/{ns}/services/{svc_name}")
        if code != 200:
            return None
        sel = svc.get("spec", {}).get("selector") or {}
        target = None
        for p in svc["spec"].get("ports", []):
            if str(p.get("port")) == str(port):
                target = p.get("targetPort", p["port"])
        if target is None:
            return None
        label_sel = ",".join(f"{k}={v}" for k, v in sel.items())
        code, pods = self.api.get(f"/api/v1/namespaces/{ns}/pods?labelSelector={urllib.parse.quote(label_sel)}")
        # A backend being deleted is being replaced (its exit may read Succeeded): wait for the
        # new one; a Failed backend may be replaced too.
        items = [p for p in (pods.get("items", []) if code == 200 else [])
                 if not p["metadata"].get("deletionTimestamp")]
        if items and all(p.get("status", {}).get("phase") == "Succeeded" for p in items):
            return "127.0.0.1", 1
        for pod in items:
            ip = pod.get("status", {}).get("podIP")
            if not ip or pod.get("status", {}).get("phase") != "Running":
                continue
            tport = target
            if isinstance(target, str):
                for c in pod["spec"]["containers"]:
                    for cp in c.get("ports", []):
                        if cp.get("name") == target:
                            tport = cp["containerPort"]
            return ip, tport
        return "wait"

    def service_env(self, ns):
        """The kubelet's service environment of a pod in `ns`: <NAME>_SERVICE_HOST (the
        ClusterIP) of each Service there with one, and the Service of each address."""
        code, svcs = self.api.get(f"/api/v1/namespaces/{ns}/services")
        env, by_ip = {}, {}
        for svc in (svcs.get("items", []) if code == 200 else []):
            ip = svc.get("spec", {}).get("clusterIP")
            if not ip or ip == "None":
                continue
            name = svc["metadata"]["name"]
            env[name.upper().replace("-", "_").replace(".", "_") + "_SERVICE_HOST"] = ip
            by_ip[ip] = name
        return env, by_ip

    def rewrite_args(self, pp, container, args, mounts):
        out = []
        svc_re = re.compile(r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9-]+)*):(\d+)$")
        # $(VAR) from the service environment, as the kubelet expands it (an unknown one is
        # left as written); the variables are read when the container starts.
        env, by_ip = self.service_env(pp.ns) if pp.pod["spec"].get("enableServiceLinks", True) else ({}, {})
        for a in args:
            a = re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda v: env.get(v.group(1), v.group(0)), a)
            # A Service's address -> a running backend, as kube-proxy translates it.
            ipm = re.match(r"^(\d+\.\d+\.\d+\.\d+):(\d+)$", a)
            if ipm and ipm.group(1) in by_ip:
                r = self.resolve_service(pp.ns, by_ip[ipm.group(1)], ipm.group(2))
                if r == "wait":
                    raise TimeoutError(f"service {by_ip[ipm.group(1)]} has no running backend yet")
                if r:
                    out.append(f"{r[0]}:{r[1]}")
                    continue
            # Mount paths -> the directories that hold the volume's files.
            for m in sorted(container.get("volumeMounts", []), key=lambda m: -len(m["mountPath"])):
                mp = m["mountPath"].rstrip("/")
                if a == mp or a.startswith(mp + "/"):
                    a = self.mount_dir(pp, m, mounts) + a[len(mp):]
                    break
            # A pod's own loopback and wildcard addresses are its pod IP here: containers of
            # one pod share it, as they share a network namespace in a real pod.
            for local in ("0.0.0.0:", "127.0.0.1:", "localhost:"):
                if a.startswith(local):
                    a = pp.ip + ":" + a[len(local):]
            m = svc_re.match(a)
            if m and not re.match(r"^\d+\.\d+\.\d+\.\d+$", m.group(1)) and m.group(1) not in ("localhost",):
                r = self.resolve_service(pp.ns, m.group(1), m.group(4))
                if r == "wait":
                    raise TimeoutError(f"service {m.group(1)} has no running backend yet")
                if r:
                    a = f"{r[0]}:{r[1]}"
            out.append(a)
        return out

    def binary_for(self, container, cmd0):
        if os.sep in cmd0:
            return cmd0
        for d in self.args.bin_dir or []:
            p = os.path.join(d, cmd0)
            if os.access(p, os.X_OK):
                return p
        image = container.get("image", "").split("/")[-1].split(":")[0]
        for d in self.args.bin_dir or []:
            p = os.path.join(d, f"fedge-{image}")
            if os.access(p, os.X_OK):
                return p
        return shutil.which(cmd0) or cmd0

    # ---- pods ----------------------------------------------------------------------------
    def allocate_ip(self):
        with self.lock:
            n = self.next_ip
            self.next_ip += 1
        return f"127.{self.ip_block}.{n // 250}.{n % 250 + 1}"

    def start_pod(self, pod):
        pp = PodProc(pod)
        with self.lock:
            if pp.uid in self.pods:
                return
            self.pods[pp.uid] = pp
        threading.Thread(target=self.run_pod, args=(pp,), daemon=True).start()

    def patch_status(self, pp, status):
        with self.lock:
            if pp.node in self.not_ready:
                self.unreported[pp.uid] = (pp, status)
                return
        # The uid in the patch makes it this pod's only: a pod deleted and made again under
        # the same name (a replaced agent) must not get the old pod's last report.
        code, body = self.api.merge_patch(f"/api/v1/namespaces/{pp.ns}/pods/{pp.name}/status",
                                          {"metadata": {"uid": pp.uid}, "status": status})
        if code in (409, 422):
            return
        if code not in (200, 404):
            log("pod status patch failed", pod=pp.name, code=code, error=body.get("message", ""))

    def run_pod(self, pp):
        pp.ip = self.allocate_ip()
        logdir = os.path.join(self.root, "pods", pp.uid)
        os.makedirs(logdir, exist_ok=True)
        deadline = time.time() + self.args.start_timeout
        while True:
            if pp.deleting:
                return
            try:
                mounts = self.materialize_volumes(pp)
                cmds = {}
                for c in pp.pod["spec"]["containers"]:
                    argv = list(c.get("command", [])) + list(c.get("args", []))
                    argv = self.rewrite_args(pp, c, argv, mounts)
                    argv[0] = self.binary_for(c, argv[0])
                    cmds[c["name"]] = argv
                break
            except (TimeoutError, RuntimeError) as e:
                if time.time() > deadline:
                    log("pod cannot start", pod=pp.name, error=str(e))
                    self.patch_status(pp, {"phase": "Failed", "reason": "StartError", "message": str(e)})
                    pp.done = True
                    return
                time.sleep(0.5)
        start = now_rfc3339()
        for c in pp.pod["spec"]["containers"]:
            env = {"PATH": os.environ.get("PATH", ""), "HOME": logdir, "POD_IP": pp.ip, "NODE_NAME": pp.node,
                   "POD_NAME": pp.name, "POD_NAMESPACE": pp.ns,
                   "KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": str(self.api_port)}
            for e in c.get("env", []):
                if "value" in e:
                    env[e["name"]] = e["value"]
            out = open(os.path.join(logdir, f"{c['name']}.log"), "ab")
            try:
                pp.procs[c["name"]] = subprocess.Popen(cmds[c["name"]], stdout=out, stderr=subprocess.STDOUT,
                                                       env=env, cwd=logdir, start_new_session=True)
            except OSError as e:
                log("exec failed", pod=pp.name, container=c["name"], error=str(e))
                pp.exit_codes[c["name"]] = 127
        log("pod started", pod=f"{pp.ns}/{pp.name}", node=pp.node, ip=pp.ip,
            cmd=" ".join(" ".join(v) for v in cmds.values()))
        self.report(pp, start)
        probes = {c["name"]: c.get("readinessProbe") for c in pp.pod["spec"]["containers"]}
        while True:
            alive = False
            for name, p in pp.procs.items():
                if name in pp.exit_codes:
                    continue
                rc = p.poll()
                if rc is None:
                    alive = True
                else:
                    pp.exit_codes[name] = 128 + (-rc) if rc < 0 else rc
            if not alive:
                break
            ready = all(self.probe(pp, c, probes[c["name"]]) for c in pp.pod["spec"]["containers"]
                        if c["name"] not in pp.exit_codes)
            if ready != pp.ready:
                pp.ready = ready
                self.report(pp, start)
            time.sleep(0.25)
        pp.ready = False
        self.report(pp, start, finished=True)
        pp.done = True
        log("pod finished", pod=f"{pp.ns}/{pp.name}", exit_codes=json.dumps(pp.exit_codes))

    def probe(self, pp, container, probe):
        if not probe or "httpGet" not in probe:
            return True
        port = probe["httpGet"]["port"]
        if isinstance(port, str):
            for cp in container.get("ports", []):
                if cp.get("name") == port:
                    port = cp["containerPort"]
        try:
            with urllib.request.urlopen(f"http://{pp.ip}:{port}{probe['httpGet'].get('path', '/')}", timeout=1) as r:
                return 200 <= r.status < 400
        except Exception:
            return False

    def report(self, pp, start, finished=False):
        statuses = []
        for c in pp.pod["spec"]["containers"]:
            name = c["name"]
            if name in pp.exit_codes:
                code = pp.exit_codes[name]
                state = {"terminated": {"exitCode": code, "reason": "Completed" if code == 0 else "Error",
                                        "startedAt": start, "finishedAt": now_rfc3339()}}
            else:
                state = {"running": {"startedAt": start}}
            statuses.append({"name": name, "image": c.get("image", ""), "imageID": "", "ready": pp.ready and
                             name not in pp.exit_codes, "restartCount": 0, "started": name not in pp.exit_codes,
                             "state": state, "containerID": f"process://{pp.procs[name].pid}" if name in pp.procs else ""})
        phase = "Running"
        if finished:
            phase = "Succeeded" if all(v == 0 for v in pp.exit_codes.values()) else "Failed"
        now = now_rfc3339()
        ready = "True" if pp.ready and not finished else "False"
        self.patch_status(pp, {
            "phase": phase, "podIP": pp.ip, "podIPs": [{"ip": pp.ip}], "hostIP": "127.0.0.1",
            "hostIPs": [{"ip": "127.0.0.1"}], "startTime": start,
            "conditions": [{"type": "PodScheduled", "status": "True", "lastTransitionTime": start},
                           {"type": "Initialized", "status": "True", "lastTransitionTime": start},
                           {"type": "ContainersReady", "status": ready, "lastTransitionTime": now},
                           {"type": "Ready", "status": ready, "lastTransitionTime": now}],
            "containerStatuses": statuses})

    def kill_pod(self, pp, sig=signal.SIGTERM, grace=5.0):
        for p in pp.procs.values():
            if p.poll() is None:
                try:
                    os.killpg(p.pid, sig)
                except ProcessLookupError:
                    pass
        end = time.time() + grace
        while time.time() < end and any(p.poll() is None for p in pp.procs.values()):
            time.sleep(0.05)
        for p in pp.procs.values():
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def delete_pod(self, pp):
        """A pod being deleted: stop its processes, then remove it for good (as kubelet does)."""
        if pp.deleting:
            return
        pp.deleting = True

        def work():
            self.kill_pod(pp)
            self.api.request("DELETE", f"/api/v1/namespaces/{pp.ns}/pods/{pp.name}",
                             {"apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0,
                              "preconditions": {"uid": pp.uid}})
            log("pod deleted", pod=f"{pp.ns}/{pp.name}")
        threading.Thread(target=work, daemon=True).start()

    def handle_pod(self, etype, pod):
        node = pod.get("spec", {}).get("nodeName")
        if node not in self.nodes:
            return
        uid = pod["metadata"]["uid"]
        with self.lock:
            if node in self.not_ready:
                self.held[uid] = (etype, pod)  # seen when the node is back
                return
            pp = self.pods.get(uid)
        if etype == "DELETED":
            if pp:
                self.kill_pod(pp, grace=0.5)
            return
        if pod["metadata"].get("deletionTimestamp"):
            if pp:
                self.delete_pod(pp)
            else:
                self.delete_pod(PodProc(pod))
            return
        phase = pod.get("status", {}).get("phase")
        if not pp and phase not in ("Succeeded", "Failed"):
            self.start_pod(pod)

    def release_held(self, node):
        """The node is back: report what its pods did while it was away, then act on the
        latest event of each pod held meanwhile."""
        with self.lock:
            unreported = [v for uid, v in self.unreported.items() if v[0].node == node]
            for pp, _ in unreported:
                del self.unreported[pp.uid]
        for pp, status in unreported:
            self.patch_status(pp, status)
        with self.lock:
            held = [(uid, ev) for uid, ev in self.held.items() if ev[1].get("spec", {}).get("nodeName") == node]
            for uid, _ in held:
                del self.held[uid]
        for uid, (etype, pod) in held:
            log("node back: acting on a held pod event", pod=f"{pod['metadata'].get('namespace')}/"
                f"{pod['metadata']['name']}", event=etype)
            self.handle_pod(etype, pod)

    def watch_pods(self):
        rv = ""
        backoff = 0.2
        while not self.stop.is_set():
            try:
                if not rv:
                    code, lst = self.api.get("/api/v1/pods")
                    if code != 200:
                        raise RuntimeError(f"list pods: {code}")
                    for pod in lst["items"]:
                        self.handle_pod("ADDED", pod)
                    rv = lst["metadata"]["resourceVersion"]
                for ev in self.api.watch("/api/v1/pods", rv):
                    if ev["type"] == "ERROR":
                        rv = ""  # 410 Gone: re-list
                        break
                    rv = ev["object"]["metadata"].get("resourceVersion", rv)
                    if ev["type"] != "BOOKMARK":
                        self.handle_pod(ev["type"], ev["object"])
                backoff = 0.2
            except Exception as e:
                if self.stop.is_set():
                    return
                log("pod watch failed; retrying", error=str(e))
                time.sleep(backoff)
                backoff = min(backoff * 2, 5)

    # ---- control endpoint ----------------------------------------------------------------
    def serve_control(self):
        runner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def reply(self, code, obj):
                body = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                if self.path == "/pods":
                    with runner.lock:
                        pods = [{"namespace": p.ns, "name": p.name, "node": p.node, "ip": p.ip, "ready": p.ready,
                                 "exitCodes": p.exit_codes, "pids": {k: v.pid for k, v in p.procs.items()}}
                                for p in runner.pods.values()]
                    return self.reply(200, pods)
                self.reply(404, {"error": "not found"})

            def do_POST(self):
                parts = self.path.strip("/").split("/")
                if len(parts) == 3 and parts[0] == "nodes" and parts[1] in runner.nodes:
                    if parts[2] == "notready":
                        with runner.lock:
                            runner.not_ready.add(parts[1])
                        runner.post_node_status(parts[1], False)
                    elif parts[2] == "ready":
                        with runner.lock:
                            runner.not_ready.discard(parts[1])
                        runner.post_node_status(parts[1], True)
                        runner.renew_lease(parts[1])
                        runner.release_held(parts[1])
                    return self.reply(200, {"node": parts[1], "notReady": parts[1] in runner.not_ready})
                if len(parts) == 4 and parts[0] == "pods" and parts[3] == "kill":
                    with runner.lock:
                        match = [p for p in runner.pods.values()
                                 if p.ns == parts[1] and p.name == parts[2] and not p.done]
                    for p in match:
                        runner.kill_pod(p, signal.SIGKILL, grace=0)
                    return self.reply(200 if match else 404, {"killed": len(match)})
                self.reply(404, {"error": "not found"})

        srv = http.server.ThreadingHTTPServer(("127.0.0.1", self.args.control_port), Handler)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        return srv

    def run(self):
        self.register_nodes()
        srv = self.serve_control()
        threading.Thread(target=self.heartbeat_loop, daemon=True).start()
        threading.Thread(target=self.watch_pods, daemon=True).start()
        threading.Thread(target=self.volume_sync_loop, daemon=True).start()
        port = srv.server_address[1]
        if self.args.port_file:
            with open(self.args.port_file + ".tmp", "w") as f:
                f.write(str(port))
            os.replace(self.args.port_file + ".tmp", self.args.port_file)
        print(f"pod-runner ready control={port}", flush=True)

        def on_signal(*_):
            self.stop.set()
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        while not self.stop.wait(0.5):
            pass
        srv.shutdown()
        with self.lock:
            pods = list(self.pods.values())
        for pp in pods:
            self.kill_pod(pp, grace=2)
        log("pod runner stopped")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kubeconfig", required=True)
    ap.add_argument("--nodes", type=int, default=2, help="edge nodes named <prefix>-0..N-1")
    ap.add_argument("--node-prefix", default="edge")
    ap.add_argument("--node", action="append", help="an extra node name (repeatable)")
    ap.add_argument("--label", action="append", help="extra node label k=v (repeatable)")
    ap.add_argument("--root", default="/tmp/fedge-pod-runner")
    ap.add_argument("--bin-dir", action="append", help="directory with fedge-* binaries (repeatable)")
    ap.add_argument("--control-port", type=int, default=0)
    ap.add_argument("--port-file", help="write the control port here once ready")
    ap.add_argument("--heartbeat", type=float, default=5.0, help="seconds between node heartbeats")
    ap.add_argument("--volume-sync", type=float, default=2.0,
                    help="seconds between refreshes of running pods' configMap/secret volumes")
    ap.add_argument("--start-timeout", type=float, default=120.0,
                    help="seconds a pod may wait for the services it names to get a backend")
    Runner(ap.parse_args()).run()


if __name__ == "__main__":
    main()
