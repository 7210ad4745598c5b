"""Chaos on real nodes (issue 9 item 5): faults injected into a running fedge job on the
K3s-shaped cluster of scripts/cluster/start-cluster.sh, with the real images and the chart
installed by helm, as in real_e2e_test.py. One job per fault, each
deploy/examples/cluster-quickstart.yaml with more rounds (so there is time for the fault):

  agent container killed     SIGKILL to the agent's container through the node's
                             containerd (`node.sh ctr <node> tasks kill -s SIGKILL <id>`:
                             what `crictl stop` does; crictl is not packaged in Debian 12)
  kubelet stopped for 60 s   SIGKILL to the kubelet of the aggregator's node, the node
                             goes NotReady, then start-cluster.sh brings the kubelet back
  aggregator pod deleted     kubectl delete pod <job>-aggregator
  operator leader deleted    kubectl delete pod <Lease holder>
  API server restarted       SIGKILL to kube-apiserver, then start-cluster.sh

Each time the job must reach Succeeded with all its rounds, and no completed round may be
lost: a monitor samples the job's status.roundsCompleted (API server) and the
aggregator's completed rounds (/v1/status at its pod IP) once a second; neither may ever
decrease, and a replaced aggregator must resume from its checkpoint claim with the rounds
the old one had completed (its log says "resumed from checkpoint", its /v1/status lists
the same round records). Printed per fault, and as the table in docs/operator.md: what the
job did, rounds lost, when the broken part was back, when the next round completed.

And one deletion fault (test_7): the kubelet of a node is SIGKILLed after its job
succeeded and the job is deleted while the node is NotReady; the deletion must not wait
for it, and once start-cluster.sh brings the kubelet back the node's agent state must be
removed and the deferred cleanup (gated pod, claim, volume) gone.

And one attack (test_8): the projected token of a running job's agent is read off its
node's kubelet volume, then the agent pod is deleted. The operator must revoke the pod
(the trust ConfigMap's revoked-pods.json), the kubelet must bring that to the aggregator's
mounted copy, and a real fedge-agent run on the node with the copied token must be
refused at Join (PERMISSION_DENIED, fedge_aggregator_joins_refused_total{reason="pod_gone"}),
while the job goes on.

And one more deletion (test_9): a succeeded job deleted in the foreground, whose garbage
collector deletes the node claims before the job; every node's agent state must go all the
same, with every pod, claim and volume of the job.

Exit status 77 (SKIPPED) like real_e2e_test.py. Run: ctest -R integration_real_chaos
--output-on-failure, or python3 real_chaos_test.py -v [RealChaosTest.test_3_...].
"""
import base64
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import real_cluster as rc  # noqa: E402
from real_cluster import kubectl, kubectl_json, log, run, wait_for  # noqa: E402

NS = "fedge-chaos"
ROWS = []


def fmt_s(x):
    return "-" if x is None else f"{x:.1f} s"


class RealChaosTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.work = rc.new_workdir("fedge-real-chaos-")
        cls.t_total = time.time()
        cls.started_here, cls.cluster_start = rc.start_cluster()
        rc.check_no_other_operator()
        rc.build_and_import_images(os.path.join(cls.work, "images"))
        rc.place_model_and_data(cls.work)
        _, pods, leader = rc.helm_install()
        log(f"operator replicas {[p['metadata']['name'] for p in pods]}, leader {leader}")
        rc.ensure_namespace(NS)
        cls.api = rc.Api()

    @classmethod
    def tearDownClass(cls):
        try:
            if os.environ.get("FEDGE_KEEP_CHAOS") == "1":
                log("kept the release and the jobs")
                return
            if kubectl("get", "crd", "federatedtrainingjobs.fedge.io", check=False, quiet=True).returncode == 0:
                kubectl("-n", NS, "delete", "ftj", "--all", "--wait=true", "--timeout=180s", check=False, timeout=240)
            rc.helm("uninstall", rc.RELEASE, "-n", rc.RELEASE_NS, "--wait", check=False, timeout=300)
            for ns in (NS, rc.RELEASE_NS):
                kubectl("delete", "namespace", ns, "--wait=true", "--timeout=180s", check=False, timeout=240)
            kubectl("delete", "crd", "federatedtrainingjobs.fedge.io", check=False)
            shutil.rmtree(cls.work, ignore_errors=True)
        finally:
            if cls.started_here:
                rc.stop_cluster()
            log(f"chaos suite: {time.time() - cls.t_total:.0f} s in all")
            log("| fault | what the job did | rounds lost | broken part back after | next round completed after "
                "| job |")
            print("| --- | --- | --- | --- | --- | --- |")
            for r in ROWS:
                print(f"| {r['fault']} | {r['did']} | {r['lost']} | {r['back']} | {r['next']} | {r['job']} |")
            sys.stdout.flush()

    # --- one job, one fault ------------------------------------------------------------
    def agg_status(self, job):
        """The aggregator's /v1/status now (None if it does not answer)."""
        try:
            p = self.api.get(f"/api/v1/namespaces/{NS}/pods/{job}-aggregator")
        except OSError:
            return None
        ip = p and p["status"].get("podIP")
        return rc.http_json(f"http://{ip}:9090/v1/status", timeout=3) if ip else None

    def chaos(self, job, rounds, fault_name, inject, after_rounds=2, restarts=0):
        """Applies the quickstart as `job` with `rounds` rounds, waits until the aggregator
        completed `after_rounds`, calls inject(job, t0, status before) -> (what the job did,
        seconds until the broken part was back), waits for Succeeded and checks that no
        round was lost and that the operator recreated `restarts` failed pods (None: not
        checked here)."""
        rc.clear_agent_state(NS, job)
        kubectl("-n", NS, "apply", "-f", "-", input=rc.job_manifest(job, total=rounds))
        mon = rc.JobMonitor(NS, job)
        mon.start()
        try:
            rc.wait_agents_joined(NS, job, len(rc.NODES), timeout=120)
            wait_for(lambda: (lambda s: s and len(s.get("rounds", [])) >= after_rounds and s)(self.agg_status(job)),
                     600, f"{job}: {after_rounds} rounds completed", interval=1)
            # Right before the fault: what the aggregator has completed (records kept to
            # compare with what a resumed aggregator restores).
            kubectl("-n", NS, "get", "ftj,pods", "-o", "wide")
            before_status = self.agg_status(job)
            before = len(before_status["rounds"])
            t0 = time.time()
            log(f"=== {fault_name}: injecting at {before} completed rounds of {rounds}")
            did, back = inject(job, t0, before_status)
            kubectl("-n", NS, "wait", "--for=condition=Succeeded", f"ftj/{job}", "--timeout=1200s", timeout=1300)
            t_done = time.time()
            time.sleep(1.5)  # one more sample
        finally:
            mon.stop()
        kubectl("-n", NS, "get", "ftj", job)
        final = kubectl_json("-n", NS, "get", "ftj", job)
        st = final["status"]
        ok, detail = mon.never_decreased()
        self.assertTrue(ok, f"{fault_name}: a completed round went missing: {detail}")
        self.assertEqual(st["state"], "Succeeded")
        self.assertEqual(st["roundsCompleted"], rounds)
        # One new global version per round on top of the initial one (version 1): a round
        # lost and redone from an older checkpoint would still count, so also check the
        # samples: nothing after the fault reported fewer completed rounds than before it.
        self.assertEqual(st["globalModel"]["version"], rounds + 1)
        least = mon.min_after(t0)
        lost = max(0, before - least) if least is not None else None
        self.assertEqual(lost, 0, f"{fault_name}: {before} rounds completed before the fault, {least} after")
        failed = sorted({c for s in mon.samples if s["pods"] for p in s["pods"] for c in p.split()[2:]
                         if "=" in c and not c.endswith("Completed(0)")})
        log(f"{fault_name}: status.restarts {st.get('restarts', 0)}; containers that ended otherwise than "
            f"Completed(0): {failed or 'none'}")
        if restarts is not None:
            self.assertEqual(st.get("restarts", 0), restarts, f"{fault_name}: pods recreated; failed: {failed}")
        nxt = mon.first_after(t0, lambda s: (mon.completed(s) or 0) > before)
        next_after = (nxt["t"] - t0) if nxt else None
        # The timeline, once a second, compressed to the changes.
        log(f"{fault_name}: samples (t from the fault; api = status.roundsCompleted, agg = aggregator's rounds):")
        last, last_pods = None, None
        for s in mon.samples:
            key = (s["api_rounds"], s["state"], s["degraded"], s["restarts"], s["agg_rounds"], s["agg_uid"],
                   s["agg_phase"])
            if key != last:
                print(f"    {s['t'] - t0:+7.1f}s api={s['api_rounds']} state={s['state']} degraded={s['degraded']} "
                      f"restarts={s['restarts']} agg={s['agg_rounds']} {s['agg_phase']} "
                      f"pod={(s['agg_uid'] or '-')[:8]}")
                last = key
            if s["pods"] is not None and s["pods"] != last_pods:
                print(f"    {s['t'] - t0:+7.1f}s pods: {'; '.join(s['pods'])}")
                last_pods = s["pods"]
        row = {"fault": fault_name, "did": did, "lost": lost, "back": fmt_s(back), "next": fmt_s(next_after),
               "job": f"Succeeded, {st['roundsCompleted']}/{rounds} rounds, accuracy {st['lastRound']['accuracy']:.3f}, "
                      f"restarts {st.get('restarts', 0)}, {t_done - mon.samples[0]['t']:.0f} s"}
        ROWS.append(row)
        log(f"ROW {row}")
        kubectl("-n", NS, "delete", "ftj", job, "--wait=true", "--timeout=180s", timeout=240)
        rc.clear_agent_state(NS, job)
        return st, mon, t0

    def operator_metric(self, name):
        """`name` summed on the current leader's /metrics."""
        pod = kubectl_json("-n", rc.RELEASE_NS, "get", "pod", rc.lease_holder_pod())
        return rc.metric_value(rc.metrics_text(f"http://{pod['status']['podIP']}:8081/metrics"), name)

    # --- a stolen token --------------------------------------------------------------------
    def read_pod_token(self, node, pod_uid):
        """The pod's projected service-account token as the node's kubelet mounted it."""
        pods = os.path.join(rc.CLUSTER_DIR, "nodes", node, "kubelet", "pods", pod_uid, "volumes",
                            "kubernetes.io~projected")
        out = rc.node_sh("exec", node, "sh", "-c", f"cat {pods}/*/token", quiet=True).stdout.strip()
        self.assertEqual(out.count("."), 2, "a JWT read off the node")
        return out

    def stolen_token_is_refused(self, job, node, pod_uid, token, t0, listed=None):
        """The killed pod's token, copied off its node, after the operator revoked the pod:
        seconds until the trust ConfigMap and then the aggregator's mounted copy listed it
        (`listed(text)`; by default an entry names the pod), and a real fedge-agent run on
        the node with the copy must be refused at Join."""
        if listed is None:
            def listed(text):
                return text and pod_uid in {e["uid"] for e in json.loads(text)["pods"]}

        def in_configmap():
            cm = kubectl_json("-n", NS, "get", "configmap", f"{job}-trust")
            return listed(cm["data"].get("revoked-pods.json"))
        wait_for(in_configmap, 120, "the killed agent pod in revoked-pods.json", interval=0.5)
        t_cm = time.time() - t0
        agg = kubectl_json("-n", NS, "get", "pod", f"{job}-aggregator")
        mounted = os.path.join(rc.CLUSTER_DIR, "nodes", agg["spec"]["nodeName"], "kubelet", "pods",
                               agg["metadata"]["uid"], "volumes", "kubernetes.io~configmap", "trust",
                               "revoked-pods.json")

        def in_aggregator():
            return listed(rc.node_sh("exec", agg["spec"]["nodeName"], "cat", mounted, check=False,
                                     quiet=True).stdout)
        wait_for(in_aggregator, 300, "the aggregator's mounted revoked-pods.json listing it", interval=1)
        t_mounted = time.time() - t0
        log(f"stolen token: pod {pod_uid} revoked in the ConfigMap {t_cm:.1f} s and in the aggregator's "
            f"mounted file {t_mounted:.1f} s after the kill")
        # The attacker runs the real agent with the copy, as the node's agent, from the
        # aggregator's node: the job's NetworkPolicy (enforced on every node) lets only its
        # agent pods and the aggregator's own node reach the gRPC port, so from another
        # node's host network the copy would not even connect.
        d = tempfile.mkdtemp(prefix="stolen-", dir=self.work)
        cfg = kubectl_json("-n", NS, "get", "configmap", f"{job}-config")["data"]["job.yaml"]
        trust = kubectl_json("-n", NS, "get", "configmap", f"{job}-trust")["data"]
        for name, text in (("job.yaml", cfg), ("token", token), ("ca.crt", trust.get("ca.crt", ""))):
            with open(os.path.join(d, name), "w") as f:
                f.write(text)
        agent = wait_for(lambda: kubectl("-n", NS, "get", "pod", f"{job}-agent-{node}", "-o", "json", check=False,
                                         quiet=True).stdout, 120, f"the agent pod of {node} made again")
        cmd = json.loads(agent)["spec"]["containers"][0]["command"]
        arg = {cmd[i]: cmd[i + 1] for i in range(1, len(cmd) - 1) if cmd[i].startswith("--")}
        tls = ["--tls-ca", f"{d}/ca.crt", "--tls-server-name", arg["--tls-server-name"]] if "--tls-ca" in arg else []
        before = self.agg_metric(job, "fedge_aggregator_joins_refused_total", {"reason": "pod_gone"})
        t_run = time.time()
        p = rc.node_sh("exec", agg["spec"]["nodeName"], os.path.join(rc.BUILD, "agent", "fedge-agent"),
                       "--config", f"{d}/job.yaml",
                       "--aggregator", f"{agg['status']['podIP']}:7070", "--agent-id", node, "--node-name", node,
                       "--token-file", f"{d}/token", *tls, "--data-dir", arg["--data-dir"], "--model-dir", arg["--model-dir"],
                       "--http", "127.0.0.1:18099", "--state-dir", f"{d}/state", "--exit-when-done",
                       check=False, timeout=180, max_lines=6)
        out = (p.stdout or "") + (p.stderr or "")
        self.assertNotEqual(p.returncode, 0, f"the stolen token joined: {out[-2000:]}")
        self.assertIn("revoked it", out, out[-2000:])
        self.assertNotIn('msg="joined"', out)
        after = self.agg_metric(job, "fedge_aggregator_joins_refused_total", {"reason": "pod_gone"})
        self.assertEqual(after - before, 1, "one Join refused as pod_gone")
        return (f"its token, read off the node, was revoked {t_cm:.1f} s (ConfigMap) / {t_mounted:.1f} s "
                f"(aggregator's file) after the kill and refused at Join ({time.time() - t_run:.1f} s agent run)")

    def agg_metric(self, job, name, labels):
        def read():
            ip = kubectl_json("-n", NS, "get", "pod", f"{job}-aggregator")["status"].get("podIP")
            try:
                return ip and rc.metrics_text(f"http://{ip}:9090/metrics")
            except OSError as e:
                log(f"aggregator /metrics: {e}")
                return None
        return rc.metric_value(wait_for(read, 60, "the aggregator's /metrics", interval=1), name, labels)

    # --- the faults ----------------------------------------------------------------------
    def test_1_agent_container_killed(self):
        node = rc.NODES[0]

        def inject(job, t0, _):
            pod = kubectl_json("-n", NS, "get", "pod", f"{job}-agent-{node}")
            cid = pod["status"]["containerStatuses"][0]["containerID"].replace("containerd://", "")
            old_uid = pod["metadata"]["uid"]
            rc.node_sh("ctr", node, "tasks", "kill", "-s", "SIGKILL", cid)

            def replaced():
                p = kubectl_json("-n", NS, "get", "pods", "-l", f"fedge.io/job={job},fedge.io/role=agent")["items"]
                p = [x for x in p if x["spec"].get("nodeName") == node and x["metadata"]["uid"] != old_uid
                     and x["status"].get("phase") == "Running"
                     and all(c.get("ready") for c in x["status"].get("containerStatuses", []))]
                return p[0] if p else None
            new = wait_for(replaced, 300, "a replacement agent pod Ready", interval=0.5)
            back = time.time() - t0
            kubectl("-n", NS, "get", "pods", "-o", "wide")
            kubectl("-n", NS, "get", "events", "--field-selector", f"involvedObject.name={job}",
                    "--sort-by=.lastTimestamp", max_lines=8)
            st = kubectl_json("-n", NS, "get", "ftj", job)["status"]
            self.assertGreaterEqual(st.get("restarts", 0), 1)
            return (f"operator replaced the failed agent pod (restarts {st.get('restarts')}); the new agent "
                    f"rejoined ({new['metadata']['name']} on {node})"), back

        self.chaos("chaos-agent", 6, "agent container killed (SIGKILL via containerd)", inject, restarts=1)

    def test_2_kubelet_stopped_for_60_seconds(self):
        def inject(job, t0, _):
            node = kubectl_json("-n", NS, "get", "pod", f"{job}-aggregator")["spec"]["nodeName"]
            pid = rc.node_sh("pid", node, "kubelet", quiet=True).stdout.strip()
            log(f"$ kill -KILL {pid}   # kubelet of {node}, which runs the aggregator")
            os.kill(int(pid), signal.SIGKILL)
            not_ready = {}

            def ready_status():
                n = self.api.get(f"/api/v1/nodes/{node}")
                return [c for c in n["status"]["conditions"] if c["type"] == "Ready"][0]["status"]

            def watch_not_ready():
                if ready_status() != "True":
                    not_ready.setdefault("t", time.time())
                return time.time() - t0 >= 60
            wait_for(watch_not_ready, 90, "60 s", interval=0.5)
            kubectl("get", "nodes")
            self.assertIn("t", not_ready, f"{node} never went NotReady while its kubelet was stopped")
            log(f"{node} NotReady {not_ready['t'] - t0:.1f} s after the kubelet stopped")
            kubectl("-n", NS, "get", "ftj", job, "-o", "jsonpath={.status.conditions[?(@.type==\"Degraded\")]}")
            t_restart = time.time()
            run([os.path.join(rc.SCRIPTS, "start-cluster.sh")], timeout=600, max_lines=4)
            wait_for(lambda: ready_status() == "True", 120, f"{node} Ready again")
            back = time.time() - t_restart
            kubectl("get", "nodes")
            return (f"kept training through the outage ({node} NotReady after {not_ready['t'] - t0:.0f} s; "
                    f"containers kept running, agents tolerate not-ready); kubelet back and node Ready "
                    f"{back:.1f} s after the restart"), back

        st, mon, t0 = self.chaos("chaos-kubelet", 24, "edge node's kubelet stopped 60 s", inject)
        degraded = {s["degraded"] for s in mon.samples if s["t"] >= t0}
        log(f"Degraded conditions seen during the outage: {degraded}")
        self.assertTrue(any(d and d.startswith("True/NodeNotReady") for d in degraded),
                        "the job never reported Degraded/NodeNotReady")

    def test_3_aggregator_pod_deleted(self):
        def inject(job, t0, before_status):
            old = kubectl_json("-n", NS, "get", "pod", f"{job}-aggregator")["metadata"]["uid"]
            kubectl("-n", NS, "delete", "pod", f"{job}-aggregator", "--wait=false")

            def resumed():
                p = kubectl_json("-n", NS, "get", "pods", "-l", f"fedge.io/job={job},fedge.io/role=aggregator")["items"]
                p = [x for x in p if x["metadata"]["uid"] != old and x["status"].get("podIP")]
                if not p:
                    return None
                s = rc.http_json(f"http://{p[0]['status']['podIP']}:9090/v1/status")
                return (p[0], s) if s and s.get("rounds") is not None else None
            pod, status = wait_for(resumed, 300, "a new aggregator answering /v1/status", interval=0.5)
            back = time.time() - t0
            text = kubectl("-n", NS, "logs", pod["metadata"]["name"], "-c", "aggregator", quiet=True).stdout
            m = re.search(r'msg="resumed from checkpoint" completed_round=(\d+)', text)
            self.assertIsNotNone(m, "the new aggregator did not resume from its checkpoint:\n" + text[:2000])
            log(f"new aggregator {pod['metadata']['name']} ({pod['metadata']['uid'][:8]}) on "
                f"{pod['spec']['nodeName']}: {m.group(0)}")
            before = len(before_status["rounds"])
            self.assertEqual(int(m.group(1)), before)
            # The resumed aggregator reports the old one's round records, unchanged.
            restored = [(r["round"], r["accuracy"], r["loss"]) for r in status["rounds"][:before]]
            self.assertEqual(restored, [(r["round"], r["accuracy"], r["loss"]) for r in before_status["rounds"]])
            kubectl("-n", NS, "get", "pvc", f"{job}-checkpoints")
            return (f"operator made a new aggregator pod on the same checkpoint claim; it resumed at "
                    f"completed_round={m.group(1)} and the agents rejoined; the round in progress was redone"), back

        self.chaos("chaos-aggregator", 6, "aggregator pod deleted", inject)

    def test_4_operator_leader_deleted(self):
        def inject(job, t0, _):
            leader = rc.lease_holder_pod()
            self.assertIsNotNone(leader)
            kubectl("-n", rc.RELEASE_NS, "delete", "pod", leader, "--wait=false")
            new = wait_for(lambda: (lambda h: h if h and h != leader else None)(rc.lease_holder_pod()), 120,
                           "a new Lease holder", interval=0.25)
            back = time.time() - t0
            kubectl("-n", rc.RELEASE_NS, "get", "lease", "fedge-operator")
            wait_for(lambda: len([p for p in rc.operator_pods() if p["status"].get("phase") == "Running"
                                  and not p["metadata"].get("deletionTimestamp")]) == 2, 180,
                     "the Deployment to run 2 replicas again")
            kubectl("-n", rc.RELEASE_NS, "get", "pods", "-o", "wide")
            self.new_leader = new
            return (f"standby {new} took the Lease {back:.1f} s after the delete (the old leader released it "
                    f"on SIGTERM) and reconciled on; the Deployment replaced the pod; training never paused"), back

        self.chaos("chaos-leader", 6, "operator leader pod deleted", inject)
        pod = kubectl_json("-n", rc.RELEASE_NS, "get", "pod", self.new_leader)
        text = rc.metrics_text(f"http://{pod['status']['podIP']}:8081/metrics")
        n = rc.metric_value(text, "fedge_operator_reconcile_total")
        log(f"new leader {self.new_leader}: fedge_operator_reconcile_total {n}")
        self.assertGreater(n, 0, "the new leader never reconciled")

    def test_5_api_server_restarted(self):
        def inject(job, t0, _):
            pid_file = os.path.join(rc.CLUSTER_DIR, "control-plane", "run", "kube-apiserver.pid")
            with open(pid_file) as f:
                pid = int(f.read().strip())
            self.watch_restarts_before = self.operator_metric("fedge_operator_watch_restarts_total")
            log(f"$ kill -KILL {pid}   # kube-apiserver")
            os.kill(pid, signal.SIGKILL)
            log("$ scripts/cluster/start-cluster.sh")
            proc = subprocess.Popen([os.path.join(rc.SCRIPTS, "start-cluster.sh")], stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True)
            wait_for(self.api.ready, 120, "the API server ready", interval=0.2)
            back = time.time() - t0
            out, _ = proc.communicate(timeout=600)
            print("    " + "\n    ".join(out.strip().splitlines()[-3:]))
            self.assertEqual(proc.returncode, 0, out[-3000:])
            log(f"API server answering /readyz {back:.1f} s after the kill; start-cluster.sh returned after "
                f"{time.time() - t0:.1f} s (it also waits for the nodes)")
            kubectl("get", "--raw", "/readyz")
            return ("aggregator and agents trained on (they do not need the API server); the status reporter "
                    "and the operator reconnected and status caught up"), back

        st, mon, t0 = self.chaos("chaos-apiserver", 6, "API server SIGKILLed and restarted", inject, restarts=None)
        type(self).apiserver_restarts = (st.get("restarts", 0), sorted(
            {p for s in mon.samples if s["pods"] for p in s["pods"] if "=Error" in p}))
        # The job's status caught up with the aggregator after the restart.
        caught = mon.first_after(t0, lambda s: s["api_rounds"] is not None and s["agg_rounds"] is not None
                                 and s["api_rounds"] >= s["agg_rounds"] and s["api_rounds"] > 0)
        self.assertIsNotNone(caught)
        log(f"status.roundsCompleted caught up with the aggregator {caught['t'] - t0:.1f} s after the kill")
        after = self.operator_metric("fedge_operator_watch_restarts_total")
        log(f"leader's fedge_operator_watch_restarts_total: {self.watch_restarts_before} -> {after}")
        self.assertGreater(after, self.watch_restarts_before, "the operator's watches never reconnected")

    def test_6_api_server_restart_recreates_no_pod(self):
        """Regression (fixed): the aggregator pod's status reporter kept the error of a
        status apply that failed while the API server was away and exited 1 with it when the
        aggregator finished, so the pod ended Failed and the operator recreated the finished
        aggregator (status.restarts 1). The reporter now forgets an error a later write
        overcame and retries its last write before exiting."""
        if not hasattr(self, "apiserver_restarts"):
            self.skipTest("test_5 did not finish")
        restarts, failed = self.apiserver_restarts
        self.assertEqual(restarts, 0, f"pods recreated after the API server restart; failed containers: {failed}")

    def test_7_node_away_when_its_job_is_deleted_is_cleaned_when_back(self):
        """A node whose kubelet is down when its job is deleted: the deletion is not held
        for it, and its agent state (the feedback log of the inference requests it served,
        the globals) is removed when it is back: the operator leaves a gated cleanup pod,
        owned by nothing, holding the node's claim; the returning kubelet stops the agent it
        was running, the operator lifts the gate, the pod runs on the node and the pod, the
        claim and the volume go."""
        job = "chaos-away"
        rc.clear_agent_state(NS, job)
        kubectl("-n", NS, "apply", "-f", "-", input=rc.job_manifest(job, total=3))
        kubectl("-n", NS, "wait", "--for=condition=Succeeded", f"ftj/{job}", "--timeout=600s", timeout=660)
        node = rc.NODES[1]
        state = os.path.join(rc.node_disk(node), "state", NS, job)
        self.assertTrue(os.path.isfile(os.path.join(state, "global.safetensors")), state)
        pid = rc.node_sh("pid", node, "kubelet", quiet=True).stdout.strip()
        log(f"$ kill -KILL {pid}   # kubelet of {node}")
        os.kill(int(pid), signal.SIGKILL)
        restarted = []

        def restart():
            if not restarted:
                restarted.append(True)
                run([os.path.join(rc.SCRIPTS, "start-cluster.sh")], timeout=600, max_lines=4)
        self.addCleanup(restart)

        def ready_status():
            n = self.api.get(f"/api/v1/nodes/{node}")
            return [c for c in n["status"]["conditions"] if c["type"] == "Ready"][0]["status"]
        t = time.time()
        wait_for(lambda: ready_status() != "True", 120, f"{node} NotReady", interval=1)
        log(f"{node} NotReady {time.time() - t:.1f} s after its kubelet stopped")
        # (A succeeded job reports no Degraded condition: give the operator's node watch a
        # moment to deliver the change.)
        time.sleep(5)
        t = time.time()
        kubectl("-n", NS, "delete", "ftj", job, "--wait=true", "--timeout=120s", timeout=180)
        took = time.time() - t
        log(f"kubectl delete ftj {job} returned after {took:.1f} s with {node} away")
        self.assertLess(took, 120)
        pod_name = f"{job}-state-cleanup-{node}"
        pod = kubectl_json("-n", NS, "get", "pod", pod_name)
        self.assertNotIn("ownerReferences", pod["metadata"])
        self.assertEqual(pod["spec"].get("schedulingGates"), [{"name": "fedge.io/node-back"}])
        claim_name = pod["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"]
        pv_name = kubectl_json("-n", NS, "get", "pvc", claim_name)["spec"]["volumeName"]
        self.assertTrue(os.path.isfile(os.path.join(state, "global.safetensors")), "removed while the node was away?")
        kubectl("-n", NS, "get", "pods,pvc", "-o", "wide")
        t = time.time()
        restart()
        wait_for(lambda: ready_status() == "True", 120, f"{node} Ready again", interval=1)
        log(f"{node} Ready {time.time() - t:.1f} s after its kubelet was restarted")

        def gone():
            return (not os.path.lexists(state) and
                    kubectl("-n", NS, "get", "pod", pod_name, "--ignore-not-found", "-o", "name", quiet=True).stdout == ""
                    and kubectl("-n", NS, "get", "pvc", claim_name, "--ignore-not-found", "-o", "name",
                                quiet=True).stdout == ""
                    and kubectl("get", "pv", pv_name, "--ignore-not-found", "-o", "name", quiet=True).stdout == "")
        try:
            wait_for(gone, 240, f"the state on {node} removed and the cleanup pod, claim and volume gone", interval=2)
        finally:
            kubectl("-n", NS, "get", "pods,pvc", "-o", "wide", check=False)
        log(f"{node}: state removed and the record gone {time.time() - t:.1f} s after its kubelet was restarted")
        events = kubectl_json("-n", NS, "get", "events", "--field-selector",
                              f"involvedObject.name={pod_name},reason=NodeStateRemoved")["items"]
        self.assertEqual(len(events), 1, events)
        log(f"NodeStateRemoved: {events[0]['message']}")


    def test_8_a_token_copied_off_a_node_stops_working_when_its_pod_is_deleted(self):
        """An attacker on a node reads its agent's projected token off the kubelet's volume;
        then the agent pod is deleted (replaced, or its node left the selector). By its
        signature the copy stays valid for up to 10 minutes, but the operator revokes the
        pod and a real fedge-agent run on the node with the copy is refused at Join. Then
        the same on another node with the operator scaled to 0 while the pod is deleted:
        nothing sees it go, and the operator started next refuses it by the token's age
        (revoked-pods.json's watchedSince and livePods)."""
        job, node = "chaos-token", rc.NODES[0]
        rc.clear_agent_state(NS, job)
        kubectl("-n", NS, "apply", "-f", "-", input=rc.job_manifest(job, total=60))
        try:
            rc.wait_agents_joined(NS, job, len(rc.NODES), timeout=120)
            pod = kubectl_json("-n", NS, "get", "pod", f"{job}-agent-{node}")
            old_uid = pod["metadata"]["uid"]
            stolen = self.read_pod_token(node, old_uid)
            t0 = time.time()
            kubectl("-n", NS, "delete", "pod", f"{job}-agent-{node}", "--wait=false")
            did = self.stolen_token_is_refused(job, node, old_uid, stolen, t0)
            st = kubectl_json("-n", NS, "get", "ftj", job)["status"]
            self.assertEqual(st["state"], "Running", "the job goes on")
            ROWS.append({"fault": "agent pod deleted, its token copied off the node", "did": did, "lost": "-",
                         "back": "-", "next": "-", "job": f"Running, {st.get('roundsCompleted')}/60 rounds"})

            # The same while no operator runs: nothing sees the pod go, so no entry names it.
            # The operator that starts next writes when its informer listed (watchedSince)
            # and the agent pods live then (livePods); the copy, issued before, is refused.
            node = rc.NODES[1]
            pod = kubectl_json("-n", NS, "get", "pod", f"{job}-agent-{node}")
            old_uid = pod["metadata"]["uid"]
            stolen = self.read_pod_token(node, old_uid)
            selector = f"app.kubernetes.io/instance={rc.RELEASE},app.kubernetes.io/component=operator"
            deployments = kubectl_json("-n", rc.RELEASE_NS, "get", "deployments", "-l", selector)["items"]
            self.assertEqual(len(deployments), 1, "the chart's operator Deployment")
            name, replicas = deployments[0]["metadata"]["name"], deployments[0]["spec"]["replicas"]
            kubectl("-n", rc.RELEASE_NS, "scale", "deployment", name, "--replicas=0")
            try:
                wait_for(lambda: not rc.operator_pods(), 120, "no operator pod left", interval=0.5)
                t0 = time.time()
                kubectl("-n", NS, "delete", "pod", f"{job}-agent-{node}", "--wait=true", "--timeout=120s",
                        timeout=150)
                time.sleep(1)  # the next watch begins at least a second after the token was issued
                started = int(time.time())
            finally:
                kubectl("-n", rc.RELEASE_NS, "scale", "deployment", name, f"--replicas={replicas}")
            issued = json.loads(base64.urlsafe_b64decode(stolen.split(".")[1] + "==="))["iat"]
            self.assertLess(issued, started)

            def unseen(text):
                doc = json.loads(text) if text else {}
                return doc.get("watchedSince", 0) >= started and old_uid not in doc.get("livePods", [old_uid]) \
                    and old_uid not in {e["uid"] for e in doc.get("pods", [])}
            did = self.stolen_token_is_refused(job, node, old_uid, stolen, t0, listed=unseen)
            st = kubectl_json("-n", NS, "get", "ftj", job)["status"]
            self.assertEqual(st["state"], "Running", "the job goes on")
            ROWS.append({"fault": "agent pod deleted while no operator ran, its token copied off the node",
                         "did": did, "lost": "-", "back": "-", "next": "-",
                         "job": f"Running, {st.get('roundsCompleted')}/60 rounds"})
        finally:
            kubectl("-n", NS, "delete", "ftj", job, "--wait=true", "--timeout=180s", timeout=240, check=False)
            rc.clear_agent_state(NS, job)

    def test_9_a_job_deleted_in_the_foreground_leaves_no_state_on_its_nodes(self):
        """`kubectl delete --cascade=foreground` (Argo CD's default; the operator's own
        ttlSecondsAfterFinished): the garbage collector deletes the job's children first,
        the node claims the state cleanup mounts among them. The real kubelets, scheduler,
        PersistentVolume controller and collector: every node's agent state must still go,
        and with it every pod, claim and volume of the job."""
        job = "chaos-foreground"
        rc.clear_agent_state(NS, job)
        kubectl("-n", NS, "apply", "-f", "-", input=rc.job_manifest(job, total=2))
        kubectl("-n", NS, "wait", "--for=condition=Succeeded", f"ftj/{job}", "--timeout=600s", timeout=660)
        states = {n: os.path.join(rc.node_disk(n), "state", NS, job) for n in rc.NODES}
        for d in states.values():
            self.assertTrue(os.path.isfile(os.path.join(d, "global.safetensors")), d)
        t = time.time()
        kubectl("-n", NS, "delete", "ftj", job, "--cascade=foreground", "--wait=true", "--timeout=180s", timeout=240)
        took = time.time() - t
        log(f"kubectl delete ftj {job} --cascade=foreground returned after {took:.1f} s")

        def left():
            items = kubectl_json("-n", NS, "get", "pods,pvc", "-l", f"fedge.io/job={job}")["items"]
            items += kubectl_json("get", "pv", "-l", f"fedge.io/job={job},fedge.io/job-namespace={NS}")["items"]
            return [n for n, d in states.items() if os.path.lexists(d)] + \
                [f"{i['kind']}/{i['metadata']['name']}" for i in items]
        try:
            wait_for(lambda: not left(), 240, "every node's state, and every pod, claim and volume of the job, gone",
                     interval=2)
        finally:
            kubectl("-n", NS, "get", "pods,pvc", "-o", "wide", check=False)
        gone = time.time() - t
        log(f"state removed from {len(states)} nodes and the job's objects gone {gone:.1f} s after the delete")
        events = kubectl_json("-n", NS, "get", "events", "--field-selector", "reason=NodeStateRemoved")["items"]
        records = [e for e in events if f"FederatedTrainingJob {NS}/{job} " in e["message"]
                   and "foreground deletion" in e["message"]]
        for e in records:
            log(f"NodeStateRemoved on {e['involvedObject']['name']}: {e['message']}")
        self.assertGreater(len(records), 0, "no node's cleanup waited for the job: the claims were not taken first")
        ROWS.append({"fault": "job deleted in the foreground (`kubectl delete --cascade=foreground`)",
                     "did": f"deleted in {took:.1f} s; {len(records)} of {len(states)} nodes' claims taken by the "
                            f"garbage collector first, their volumes claimed again for the cleanup",
                     "lost": "-", "back": "-", "next": "-",
                     "job": f"state gone from {len(states)} nodes {gone:.1f} s after the delete"})


if __name__ == "__main__":
    reason = rc.missing_prerequisites()
    if reason:
        print(f"SKIPPED: {reason}")
        sys.exit(77)
    unittest.main()
