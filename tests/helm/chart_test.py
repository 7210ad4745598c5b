#!/usr/bin/env python3
"""Checks the fedge Helm chart with a real helm v4 binary.

helm lint --strict and helm template, with default values and with watchNamespace set,
then the rendered objects: every pod template passes the `restricted` Pod Security level
(checked as the admission plugin does, plus readOnlyRootFilesystem), standard labels on
every object, a Role instead of the ClusterRole's job rules when watchNamespace is set,
the Lease Role in the release namespace only, PodDisruptionBudget and anti-affinity for
the replicas, images defaulting to appVersion, the Grafana dashboard ConfigMap identical
to deploy/grafana/fedge-dashboard.json, monitors off by default, and values.schema.json
refusing bad values.

helm: $FEDGE_HELM_BIN, else the cache scripts/cluster/build-helm.sh fills. Without it
the script prints why and exits 77, which ctest reports as skipped (SKIP_RETURN_CODE).
"""
import json
import os
import subprocess
import sys
import unittest

import yaml

ROOT = os.environ.get("FEDGE_SOURCE_DIR", os.path.abspath(os.path.join(os.path.dirname(__file__), "../..")))
CHART = os.path.join(ROOT, "helm", "fedge")
HELM_VERSION = os.environ.get("FEDGE_HELM_VERSION", "v4.3.2")
SKIP = 77


def helm_bin():
    if os.environ.get("FEDGE_HELM_BIN"):
        return os.environ["FEDGE_HELM_BIN"]
    for c in (os.environ.get("FEDGE_HELM_CACHE"), "/var/cache/fedge/helm", os.path.expanduser("~/.cache/fedge/helm")):
        if c and os.path.exists(os.path.join(c, HELM_VERSION, ".complete")):
            return os.path.join(c, HELM_VERSION, "bin", "helm")
    return None


HELM = helm_bin()
RELEASE, NAMESPACE = "rel", "fedge-system"
STANDARD_LABELS = ("app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/version",
                   "app.kubernetes.io/component", "app.kubernetes.io/managed-by", "helm.sh/chart")
# Volume types the restricted level allows (k8s.io/pod-security-admission, restrictedVolumes).
ALLOWED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                   "projected", "secret"}


def helm(*args, check=True):
    out = subprocess.run([HELM, *args], capture_output=True, text=True, timeout=120)
    if check and out.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed ({out.returncode}):\n{out.stderr}\n{out.stdout}")
    return out


def render(*sets):
    args = ["template", RELEASE, CHART, "--namespace", NAMESPACE]
    for s in sets:  # "json:KEY=JSON" for --set-json
        args += ["--set-json", s[5:]] if s.startswith("json:") else ["--set", s]
    return [d for d in yaml.safe_load_all(helm(*args).stdout) if d]


def restricted_violations(pod_spec, where):
    """What the restricted Pod Security level (latest) would refuse, plus a writable root."""
    bad = []
    psc = pod_spec.get("securityContext", {})
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if pod_spec.get(key):
            bad.append(f"{where}: {key}")
    for v in pod_spec.get("volumes", []):
        kinds = set(v) - {"name"}
        if not kinds <= ALLOWED_VOLUMES:
            bad.append(f"{where}: volume {v['name']} of type {sorted(kinds)}")
    containers = pod_spec.get("containers", []) + pod_spec.get("initContainers", [])
    if not containers:
        bad.append(f"{where}: no containers")
    for c in containers:
        sc = c.get("securityContext", {})
        cw = f"{where}/{c['name']}"
        if sc.get("privileged"):
            bad.append(f"{cw}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            bad.append(f"{cw}: allowPrivilegeEscalation must be false")
        caps = sc.get("capabilities", {})
        if "ALL" not in caps.get("drop", []):
            bad.append(f"{cw}: capabilities must drop ALL")
        if set(caps.get("add", [])) - {"NET_BIND_SERVICE"}:
            bad.append(f"{cw}: adds capabilities {caps['add']}")
        if sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is not True:
            bad.append(f"{cw}: runAsNonRoot")
        uid = sc.get("runAsUser", psc.get("runAsUser"))
        if not isinstance(uid, int) or uid == 0:
            bad.append(f"{cw}: numeric non-zero runAsUser (got {uid!r})")
        seccomp = sc.get("seccompProfile", psc.get("seccompProfile", {})).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            bad.append(f"{cw}: seccompProfile {seccomp!r}")
        if sc.get("readOnlyRootFilesystem") is not True:
            bad.append(f"{cw}: readOnlyRootFilesystem")
        for p in c.get("ports", []):
            if p.get("hostPort"):
                bad.append(f"{cw}: hostPort")
    return bad


def by_kind(docs, kind):
    return [d for d in docs if d["kind"] == kind]


def rules_cover(rules, resource):
    return any(resource in r.get("resources", []) for r in rules)


class ChartTest(unittest.TestCase):
    def test_lint_strict_is_clean_with_default_and_namespaced_values(self):
        for sets in ([], ["watchNamespace=ml"], ["serviceMonitor.enabled=true", "podMonitor.enabled=true"]):
            with self.subTest(sets=sets):
                args = ["lint", "--strict", CHART]
                for s in sets:
                    args += ["--set", s]
                out = helm(*args)
                self.assertIn("0 chart(s) failed", out.stdout)
                self.assertNotIn("[WARNING]", out.stdout)
                self.assertNotIn("[ERROR]", out.stdout)

    def test_every_pod_template_is_restricted(self):
        for sets in ([], ["watchNamespace=ml", "podAntiAffinity=hard", "imagePullSecrets[0].name=regcred"]):
            docs = render(*sets)
            pods = [(f"{d['kind']}/{d['metadata']['name']}", d["spec"]["template"]["spec"]) for d in docs
                    if d["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job")]
            self.assertTrue(pods)
            for where, spec in pods:
                self.assertEqual(restricted_violations(spec, where), [])

    def test_the_checker_catches_what_restricted_forbids(self):
        # A checker that cannot fail proves nothing: feed it the old chart's pod shape.
        spec = {"containers": [{"name": "c", "image": "x"}],
                "volumes": [{"name": "d", "hostPath": {"path": "/"}}]}
        got = restricted_violations(spec, "old")
        for what in ("hostPath", "allowPrivilegeEscalation", "ALL", "runAsNonRoot", "runAsUser", "seccomp",
                     "readOnlyRootFilesystem"):
            self.assertTrue(any(what in g for g in got), f"{what} not reported: {got}")

    def test_every_object_carries_the_standard_labels(self):
        for d in render("serviceMonitor.enabled=true", "podMonitor.enabled=true"):
            labels = d["metadata"].get("labels", {})
            for key in STANDARD_LABELS:
                self.assertIn(key, labels, f"{d['kind']}/{d['metadata']['name']}")
            self.assertEqual(labels["app.kubernetes.io/instance"], RELEASE)
            self.assertEqual(labels["app.kubernetes.io/managed-by"], "Helm")
        dep = by_kind(render(), "Deployment")[0]
        tmpl = dep["spec"]["template"]["metadata"]["labels"]
        for key in STANDARD_LABELS:
            self.assertIn(key, tmpl)
        for k, v in dep["spec"]["selector"]["matchLabels"].items():
            self.assertEqual(tmpl[k], v)

    def test_cluster_wide_rbac_by_default(self):
        docs = render()
        crole = by_kind(docs, "ClusterRole")
        self.assertEqual(len(crole), 1)
        for res in ("pods", "secrets", "roles", "networkpolicies", "persistentvolumeclaims", "nodes",
                    "persistentvolumes", "federatedtrainingjobs"):
            self.assertTrue(rules_cover(crole[0]["rules"], res), res)
        self.assertFalse(rules_cover(crole[0]["rules"], "leases"), "the Lease is granted in one namespace only")
        roles = by_kind(docs, "Role")
        self.assertEqual(sorted((r["metadata"]["namespace"], [x for rule in r["rules"] for x in rule["resources"]])
                                for r in roles), sorted([(NAMESPACE, ["leases"]), ("default", ["endpointslices"])]))
        self.assertEqual(sorted(b["roleRef"]["name"] for b in by_kind(docs, "RoleBinding")),
                         sorted(r["metadata"]["name"] for r in roles))

    def test_the_chart_owns_the_lease_and_the_operator_may_only_update_it(self):
        # helm uninstall left the operator-made Lease behind (real_e2e_test test_6).
        docs = render()
        leases = by_kind(docs, "Lease")
        self.assertEqual(len(leases), 1)
        lease = leases[0]
        self.assertEqual(lease["metadata"]["namespace"], NAMESPACE)
        self.assertNotIn("spec", lease, "the operator's fields: helm upgrade must not reset them")
        args = by_kind(docs, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["command"]
        self.assertIn(f"--leader-election-id={lease['metadata']['name']}", args)
        rules = [r for role in by_kind(docs, "Role") for r in role["rules"] if "leases" in r["resources"]]
        self.assertEqual(len(rules), 1)
        self.assertEqual(rules[0]["resourceNames"], [lease["metadata"]["name"]])
        self.assertEqual(sorted(rules[0]["verbs"]), ["get", "update"], "no create: it cannot outlive the release")

    def test_watch_namespace_grants_job_resources_through_a_role_there(self):
        docs = render("watchNamespace=ml")
        roles = {r["metadata"]["namespace"]: r for r in by_kind(docs, "Role")}
        self.assertEqual(set(roles), {"ml", NAMESPACE, "default"})
        for res in ("pods", "secrets", "roles", "rolebindings", "networkpolicies", "federatedtrainingjobs"):
            self.assertTrue(rules_cover(roles["ml"]["rules"], res), res)
        self.assertEqual([x for rule in roles[NAMESPACE]["rules"] for x in rule["resources"]], ["leases"])
        crole = by_kind(docs, "ClusterRole")[0]
        granted = sorted(x for rule in crole["rules"] for x in rule.get("resources", []))
        self.assertEqual(granted, ["nodes", "persistentvolumes"], "only cluster-scoped objects cluster-wide")
        # ... and the issuer's public keys (non-resource URLs, read-only).
        self.assertEqual([r["verbs"] for r in crole["rules"] if "nonResourceURLs" in r], [["get"]])
        binding = next(b for b in by_kind(docs, "RoleBinding") if b["metadata"]["namespace"] == "ml")
        self.assertEqual(binding["subjects"][0]["namespace"], NAMESPACE)
        args = by_kind(docs, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["command"]
        self.assertIn("--namespace=ml", args)
        self.assertIn(f"--leader-election-namespace={NAMESPACE}", args)

    def test_replicas_are_spread_and_protected(self):
        docs = render()
        dep = by_kind(docs, "Deployment")[0]
        self.assertEqual(dep["spec"]["replicas"], 2)
        anti = dep["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
        term = anti["preferredDuringSchedulingIgnoredDuringExecution"][0]["podAffinityTerm"]
        self.assertEqual(term["topologyKey"], "kubernetes.io/hostname")
        self.assertEqual(term["labelSelector"]["matchLabels"], dep["spec"]["selector"]["matchLabels"])
        pdb = by_kind(docs, "PodDisruptionBudget")[0]
        self.assertEqual(pdb["spec"]["minAvailable"], 1)
        self.assertEqual(pdb["spec"]["selector"]["matchLabels"], dep["spec"]["selector"]["matchLabels"])
        hard = by_kind(render("podAntiAffinity=hard"), "Deployment")[0]["spec"]["template"]["spec"]["affinity"]
        self.assertIn("requiredDuringSchedulingIgnoredDuringExecution", hard["podAntiAffinity"])
        self.assertEqual(by_kind(render("replicas=1"), "PodDisruptionBudget"), [])

    def test_images_default_to_app_version_and_values_reach_the_operator(self):
        with open(os.path.join(CHART, "Chart.yaml")) as f:
            app = str(yaml.safe_load(f)["appVersion"])
        pod = by_kind(render(), "Deployment")[0]["spec"]["template"]["spec"]
        c = pod["containers"][0]
        self.assertEqual(c["image"], f"fedge/operator:{app}")
        self.assertEqual(c["imagePullPolicy"], "IfNotPresent")
        for arg in (f"--aggregator-image=fedge/aggregator:{app}", f"--agent-image=fedge/agent:{app}",
                    f"--reporter-image=fedge/operator:{app}", "--allowed-host-path-prefix=/var/lib/fedge",
                    "--image-pull-policy=IfNotPresent", "--monitoring-namespace=monitoring",
                    "--node-state-dir=/var/lib/fedge/state"):
            self.assertIn(arg, c["command"])
        pod = by_kind(render("image.agent.tag=dev", "image.pullPolicy=Never", "imagePullSecrets[0].name=regcred",
                             "allowedHostPathPrefixes={/srv/models,/var/lib/fedge}", "nodeSelector.role=core",
                             "tolerations[0].key=edge", "tolerations[0].operator=Exists",
                             "networkPolicy.enabled=false"), "Deployment")[0]["spec"]["template"]["spec"]
        c = pod["containers"][0]
        self.assertIn("--agent-image=fedge/agent:dev", c["command"])
        self.assertIn("--image-pull-policy=Never", c["command"])
        self.assertIn("--image-pull-secret=regcred", c["command"])
        self.assertIn("--no-network-policy", c["command"])
        self.assertEqual([a for a in c["command"] if a.startswith("--allowed-host-path-prefix")],
                         ["--allowed-host-path-prefix=/srv/models", "--allowed-host-path-prefix=/var/lib/fedge"])
        self.assertEqual(c["imagePullPolicy"], "Never")
        self.assertEqual(pod["imagePullSecrets"], [{"name": "regcred"}])
        self.assertEqual(pod["nodeSelector"], {"role": "core"})
        self.assertEqual(pod["tolerations"][0]["key"], "edge")

    def test_grafana_dashboard_configmap_matches_the_repository_dashboard(self):
        cms = [d for d in by_kind(render(), "ConfigMap") if d["metadata"]["name"].endswith("-dashboard")]
        self.assertEqual(len(cms), 1)
        self.assertEqual(cms[0]["metadata"]["labels"]["grafana_dashboard"], "1")
        with open(os.path.join(ROOT, "deploy", "grafana", "fedge-dashboard.json")) as f:
            want = json.load(f)
        self.assertEqual(json.loads(cms[0]["data"]["fedge-dashboard.json"]), want)

    def test_monitors_are_off_by_default_and_render_when_enabled(self):
        kinds = {d["kind"] for d in render()}
        self.assertNotIn("ServiceMonitor", kinds)
        self.assertNotIn("PodMonitor", kinds)
        docs = render("serviceMonitor.enabled=true", "podMonitor.enabled=true")
        pm = by_kind(docs, "PodMonitor")[0]
        labels = {r["targetLabel"] for r in pm["spec"]["podMetricsEndpoints"][0]["relabelings"]}
        self.assertTrue({"fedge_job", "component", "agent"} <= labels, "the dashboard's labels")
        self.assertEqual(by_kind(docs, "ServiceMonitor")[0]["spec"]["endpoints"][0]["port"], "http")

    def test_agent_egress_reaches_the_operator(self):
        def command(*sets):
            return by_kind(render(*sets), "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["command"]
        c = command()
        self.assertNotIn("--no-agent-egress-policy", c)
        self.assertFalse([a for a in c if a.startswith("--dns-")], "the operator's defaults (K3s, kubeadm)")
        # The DNS pods that agents an older operator made may query until they are replaced.
        c = command("networkPolicy.agentEgress.dnsNamespace=dns", "networkPolicy.agentEgress.dnsPodLabels.tier=dns",
                    "networkPolicy.agentEgress.dnsPodLabels.app=coredns")
        self.assertIn("--dns-namespace=dns", c)
        self.assertIn("--dns-pod-selector=app=coredns,tier=dns", c)
        c = command("networkPolicy.agentEgress.enabled=false", "networkPolicy.agentEgress.dnsNamespace=dns")
        self.assertIn("--no-agent-egress-policy", c)
        self.assertFalse([a for a in c if a.startswith("--dns-")])

    def test_the_operator_may_read_only_the_api_servers_endpoint_slice(self):
        """The aggregators' egress names the API server's addresses, read from the one
        EndpointSlice `kubernetes` in `default`: get on that object, nothing more."""
        for values in ((), ("watchNamespace=jobs",)):
            docs = render(*values)
            roles = [r for r in by_kind(docs, "Role") if r["metadata"]["namespace"] == "default"]
            self.assertEqual(len(roles), 1, values)
            self.assertEqual(roles[0]["rules"], [{"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"],
                                                  "resourceNames": ["kubernetes"], "verbs": ["get"]}])
            binding = [b for b in by_kind(docs, "RoleBinding") if b["metadata"]["namespace"] == "default"]
            self.assertEqual(binding[0]["roleRef"]["name"], roles[0]["metadata"]["name"])
            self.assertEqual(binding[0]["subjects"][0]["namespace"], NAMESPACE)
            for cr in by_kind(docs, "ClusterRole"):
                self.assertFalse(rules_cover(cr["rules"], "endpointslices"), "not cluster-wide")
            c = by_kind(docs, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["command"]
            self.assertNotIn("--no-aggregator-egress-policy", c)
        for off in ("networkPolicy.aggregatorEgress.enabled=false", "networkPolicy.enabled=false"):
            docs = render(off)
            self.assertEqual([r for r in by_kind(docs, "Role") if r["metadata"]["namespace"] == "default"], [], off)
            c = by_kind(docs, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["command"]
            if off.startswith("networkPolicy.aggregatorEgress"):
                self.assertIn("--no-aggregator-egress-policy", c)
                self.assertNotIn("--no-agent-egress-policy", c, "the agents' rules are their own switch")

    def test_only_the_monitoring_namespaces_reach_the_operator(self):
        docs = render()
        np = by_kind(docs, "NetworkPolicy")
        self.assertEqual(len(np), 1)
        pod_labels = by_kind(docs, "Deployment")[0]["spec"]["template"]["metadata"]["labels"]
        sel = np[0]["spec"]["podSelector"]["matchLabels"]
        self.assertTrue(sel and sel.items() <= pod_labels.items(), f"{sel} does not select the operator pods")
        self.assertEqual(np[0]["spec"]["policyTypes"], ["Ingress"])
        self.assertEqual(np[0]["spec"]["ingress"],
                         [{"from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}],
                           "ports": [{"port": 8081, "protocol": "TCP"}]}])
        # No monitoring namespace: nothing gets in (the kubelet's probes come from the node).
        none = by_kind(render("json:networkPolicy.monitoringNamespaces=[]"), "NetworkPolicy")
        self.assertEqual(none[0]["spec"]["ingress"], [])
        self.assertEqual(by_kind(render("networkPolicy.enabled=false"), "NetworkPolicy"), [])

    def test_the_operator_may_read_the_service_account_issuer_keys(self):
        """Aggregators verify agents' projected tokens with the keys the operator copies."""
        for values in ((), ("watchNamespace=jobs",)):
            rules = [r for cr in by_kind(render(*values), "ClusterRole") for r in cr["rules"]]
            urls = {u for r in rules if "get" in r.get("verbs", []) for u in r.get("nonResourceURLs", [])}
            self.assertEqual(urls, {"/.well-known/openid-configuration", "/openid/v1/jwks"}, values)

    def test_apply_concurrency_reaches_the_operator(self):
        args = lambda d: by_kind(d, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["command"]  # noqa
        self.assertIn("--apply-concurrency=16", args(render()))
        self.assertIn("--apply-concurrency=4", args(render("applyConcurrency=4")))

    def test_agent_session_grace_reaches_the_operator(self):
        args = lambda d: by_kind(d, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["command"]  # noqa
        self.assertIn("--agent-session-grace-seconds=3600", args(render()))
        self.assertIn("--agent-session-grace-seconds=86400", args(render("agentSessionGraceSeconds=86400")))

    def test_schema_refuses_bad_values(self):
        for bad in ("image.pullPolicy=Sometimes", "bogusKey=1", "allowedHostPathPrefixes={relative/dir}",
                    "allowedHostPathPrefixes={/var/lib/../../etc}", "replicas=0", "podAntiAffinity=maybe",
                    "agentCertificateLifetime=1 day", "agentCertificateLifetime=0h",
                    "applyConcurrency=0", "applyConcurrency=257", "agentSessionGraceSeconds=-1",
                    "agentSessionGraceSeconds=2592001"):
            with self.subTest(value=bad):
                out = helm("template", RELEASE, CHART, "--set", bad, check=False)
                self.assertNotEqual(out.returncode, 0, f"{bad} was accepted")
                self.assertIn("schema", out.stderr.lower())

    def test_state_dir_outside_the_prefixes_fails_at_render_time(self):
        # The operator would exit at start (--node-state-dir outside every prefix).
        out = helm("template", RELEASE, CHART, "--set", "allowedHostPathPrefixes={/srv/fedge}", check=False)
        self.assertNotEqual(out.returncode, 0)
        self.assertIn("nodeStateDir /var/lib/fedge/state must lie under one of allowedHostPathPrefixes", out.stderr)
        helm("template", RELEASE, CHART, "--set", "allowedHostPathPrefixes={/srv/fedge}",
             "--set", "nodeStateDir=/srv/fedge/state")

    def test_notes_tell_what_to_do_next(self):
        out = helm("install", RELEASE, CHART, "--namespace", NAMESPACE, "--dry-run=client")
        notes = out.stdout.split("NOTES:", 1)[-1]
        for want in ("/var/lib/fedge", "kubectl apply -f", "kubectl get ftj", "fedge.io/edge=true",
                     "pod-security.kubernetes.io/enforce=restricted"):
            self.assertIn(want, notes)


if __name__ == "__main__":
    if not HELM or not os.access(HELM, os.X_OK):
        print(f"SKIPPED: helm {HELM_VERSION} not built; run scripts/cluster/build-helm.sh "
              "(about 10 minutes on 2 cores, cached afterwards) or set FEDGE_HELM_BIN")
        sys.exit(SKIP)
    unittest.main(verbosity=2)
