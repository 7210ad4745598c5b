#!/usr/bin/env python3
"""Dynamic provisioner for the test cluster's `local-path` StorageClass (what K3s's
local-path-provisioner does, for nodes whose disks are directories of this host).

Runs on the host beside the control plane (started by start-cluster.sh). For every claim
of a StorageClass whose provisioner is ours, once the scheduler has picked the node
(annotation volume.kubernetes.io/selected-node, set because the class binds
WaitForFirstConsumer), it creates
    <nodes-dir>/<node>/disk/storage/<pv-name>       (mode 0777, so non-root pods can write)
and a `local` PersistentVolume for exactly that claim (claimRef), pinned to the node by
nodeAffinity; the node sees the directory at <node-disk-path>/storage/<pv-name>. When a
claim is deleted and its volume becomes Released (or Failed) with reclaimPolicy Delete, it
removes the directory and the volume. Claims it cannot serve (a node it does not know,
ReadWriteMany/ReadOnlyMany, block mode) get a Warning event and stay Pending.

It lists claims and volumes every --resync seconds and at once when a watch reports a
change; every action is idempotent, so a restart or a missed event costs one resync.
"""
import argparse
import json
import os
import shutil
import ssl
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid

PROVISIONED_BY = "pv.kubernetes.io/provisioned-by"
SELECTED_NODE = "volume.kubernetes.io/selected-node"


def log(msg):
    print(f"{time.strftime('%H:%M:%S')} local-path: {msg}", flush=True)


class Api:
    def __init__(self, server, ca, cert, key):
        self.server = server.rstrip("/")
        self.ctx = ssl.create_default_context(cafile=ca)
        self.ctx.load_cert_chain(cert, key)

    def request(self, method, path, body=None, timeout=30):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.server + path, data=data, method=method)
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, context=self.ctx, timeout=timeout) as resp:
                return resp.status, json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as e:
            try:
                return e.code, json.loads(e.read() or b"{}")
            except ValueError:
                return e.code, {}

    def stream(self, path, timeout):
        req = urllib.request.Request(self.server + path)
        return urllib.request.urlopen(req, context=self.ctx, timeout=timeout)


class Provisioner:
    def __init__(self, api, name, nodes_dir, node_disk_path):
        self.api = api
        self.name = name
        self.nodes_dir = nodes_dir
        self.node_disk_path = node_disk_path
        self.warned = set()

    def storage_dir(self, node):
        return os.path.join(self.nodes_dir, node, "disk", "storage")

    def our_classes(self):
        code, body = self.api.request("GET", "/apis/storage.k8s.io/v1/storageclasses")
        if code != 200:
            raise RuntimeError(f"list storageclasses: HTTP {code}")
        return {sc["metadata"]["name"]: sc for sc in body.get("items", []) if sc.get("provisioner") == self.name}

    def warn(self, pvc, reason, message):
        key = (pvc["metadata"]["uid"], reason)
        if key in self.warned:
            return
        self.warned.add(key)
        log(f"{pvc['metadata']['namespace']}/{pvc['metadata']['name']}: {message}")
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        ns = pvc["metadata"]["namespace"]
        self.api.request("POST", f"/api/v1/namespaces/{ns}/events", {
            "metadata": {"name": f"{pvc['metadata']['name']}.{uuid.uuid4().hex[:10]}", "namespace": ns},
            "involvedObject": {"kind": "PersistentVolumeClaim", "namespace": ns, "name": pvc["metadata"]["name"],
                               "uid": pvc["metadata"]["uid"], "apiVersion": "v1"},
            "reason": reason, "message": message, "type": "Warning",
            "source": {"component": self.name}, "firstTimestamp": now, "lastTimestamp": now, "count": 1,
        })

    def provision(self, pvc, sc):
        meta, spec = pvc["metadata"], pvc["spec"]
        node = meta.get("annotations", {}).get(SELECTED_NODE)
        if not node:
            return  # the scheduler has not placed its first consumer yet
        if not os.path.isdir(os.path.join(self.nodes_dir, node, "disk")):
            return self.warn(pvc, "UnknownNode", f"node {node} has no disk under {self.nodes_dir}")
        modes = set(spec.get("accessModes", []))
        if not modes or modes - {"ReadWriteOnce", "ReadWriteOncePod"}:
            return self.warn(pvc, "UnsupportedAccessMode",
                             f"local-path serves ReadWriteOnce/ReadWriteOncePod only, not {sorted(modes)}")
        if spec.get("volumeMode", "Filesystem") != "Filesystem":
            return self.warn(pvc, "UnsupportedVolumeMode", "local-path serves volumeMode Filesystem only")
        size = spec.get("resources", {}).get("requests", {}).get("storage")
        if not size:
            return self.warn(pvc, "NoSize", "the claim requests no storage size")
        pv_name = f"pvc-{meta['uid']}"
        host_dir = os.path.join(self.storage_dir(node), pv_name)
        os.makedirs(host_dir, exist_ok=True)
        os.chmod(host_dir, 0o777)
        pv = {
            "apiVersion": "v1", "kind": "PersistentVolume",
            "metadata": {"name": pv_name, "annotations": {PROVISIONED_BY: self.name},
                         "labels": {"fedge.io/local-path-node": node}},
            "spec": {
                "capacity": {"storage": size},
                "accessModes": sorted(modes),
                "persistentVolumeReclaimPolicy": sc.get("reclaimPolicy", "Delete"),
                "storageClassName": sc["metadata"]["name"],
                "volumeMode": "Filesystem",
                "local": {"path": os.path.join(self.node_disk_path, "storage", pv_name)},
                "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                    {"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}]}]}},
                "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "namespace": meta["namespace"],
                             "name": meta["name"], "uid": meta["uid"], "resourceVersion": meta["resourceVersion"]},
            },
        }
        code, body = self.api.request("POST", "/api/v1/persistentvolumes", pv)
        if code == 201:
            log(f"provisioned {pv_name} for {meta['namespace']}/{meta['name']} on {node} ({size})")
        elif code != 409:
            log(f"create {pv_name}: HTTP {code} {body.get('message', '')}")

    def reclaim(self, pv):
        meta, spec = pv["metadata"], pv["spec"]
        if meta.get("annotations", {}).get(PROVISIONED_BY) != self.name:
            return
        if pv.get("status", {}).get("phase") not in ("Released", "Failed"):
            return
        if spec.get("persistentVolumeReclaimPolicy") != "Delete":
            return
        node = meta.get("labels", {}).get("fedge.io/local-path-node", "")
        name = meta["name"]
        if node and "/" not in name and name not in (".", ".."):
            root = os.path.realpath(self.storage_dir(node))
            target = os.path.realpath(os.path.join(root, name))
            if os.path.dirname(target) == root and os.path.isdir(target):
                shutil.rmtree(target)
        code, body = self.api.request("DELETE", f"/api/v1/persistentvolumes/{name}")
        if code in (200, 202):
            log(f"deleted {name} and its directory on {node}")
        elif code != 404:
            log(f"delete {name}: HTTP {code} {body.get('message', '')}")

    def resync(self):
        classes = self.our_classes()
        code, pvcs = self.api.request("GET", "/api/v1/persistentvolumeclaims")
        if code != 200:
            raise RuntimeError(f"list claims: HTTP {code}")
        for pvc in pvcs.get("items", []):
            sc = classes.get(pvc["spec"].get("storageClassName") or "")
            if sc and not pvc["spec"].get("volumeName") and pvc.get("status", {}).get("phase") == "Pending" \
                    and not pvc["metadata"].get("deletionTimestamp"):
                self.provision(pvc, sc)
        code, pvs = self.api.request("GET", "/api/v1/persistentvolumes")
        if code != 200:
            raise RuntimeError(f"list volumes: HTTP {code}")
        for pv in pvs.get("items", []):
            self.reclaim(pv)


def watcher(api, path, wake, stop):
    """Sets `wake` whenever a watch on `path` reports anything; reconnects forever."""
    while not stop.is_set():
        try:
            with api.stream(f"{path}?watch=1&allowWatchBookmarks=false&timeoutSeconds=60", timeout=90) as resp:
                for _ in resp:
                    wake.set()
        except Exception:  # the API server restarts in chaos tests: retry
            time.sleep(1)
        wake.set()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--server", required=True)
    p.add_argument("--ca", required=True)
    p.add_argument("--cert", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--nodes-dir", required=True, help="host directory holding <node>/disk")
    p.add_argument("--node-disk-path", required=True, help="where each node sees its disk")
    p.add_argument("--provisioner", default="fedge.io/local-path")
    p.add_argument("--resync", type=float, default=10.0)
    args = p.parse_args()
    for f in (args.ca, args.cert, args.key):
        if not os.path.isfile(f):
            sys.exit(f"local-path: {f} does not exist")

    api = Api(args.server, args.ca, args.cert, args.key)
    prov = Provisioner(api, args.provisioner, args.nodes_dir, args.node_disk_path)
    wake, stop = threading.Event(), threading.Event()
    for path in ("/api/v1/persistentvolumeclaims", "/api/v1/persistentvolumes"):
        threading.Thread(target=watcher, args=(api, path, wake, stop), daemon=True).start()
    log(f"serving provisioner {args.provisioner} for nodes in {args.nodes_dir}")
    while True:
        wake.clear()
        try:
            prov.resync()
        except Exception as e:  # keep serving: the next resync retries
            log(f"resync failed: {e}")
            time.sleep(1)
        wake.wait(args.resync)
        time.sleep(0.2)  # coalesce a burst of events into one resync


if __name__ == "__main__":
    main()
