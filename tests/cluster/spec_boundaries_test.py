"""The CRD and the C++ validator agree on every boundary of a FederatedTrainingJob.

Each row of spec_boundaries.json (a field just inside and just outside each bound, every
enum, the cross-field rules) is checked twice:
  - by `fedge validate -f -` (fedge::ParseJobSpec + ValidateJobSpec, what `fedge run`, the
    operator, the aggregator and the agents use), and
  - by a real kube-apiserver with crds/fedge.io_federatedtrainingjobs.yaml installed
    (`kubectl apply --dry-run=server`: OpenAPI schema, CEL rules, strict field validation).
Both must give the row's verdict. The test prints the table (row, expected, fedge,
apiserver) and, for each disagreement, both sides' messages.

The control plane comes from scripts/cluster/start-control-plane.sh, as in
operator_cluster_test.py (whose helpers this reuses). Run by ctest (label integration;
`python3 spec_boundaries_test.py`, exit 77 = skipped) with FEDGE_SOURCE_DIR and
FEDGE_BINARY_DIR set. The same table drives common/tests/job_spec_boundaries_test.cpp,
which needs no cluster.
"""
import copy
import json
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

from operator_cluster_test import BUILD, CRD, ROOT, SCRIPTS, control_plane_bin, wait_for

FEDGE = os.environ.get("FEDGE_CLI_BIN", os.path.join(BUILD, "cli", "fedge"))
TABLE = os.path.join(ROOT, "tests", "cluster", "spec_boundaries.json")


def expand(value):
    """Expands the table's {"$repeat"}, {"$list"} and {"$map"} shorthands."""
    if isinstance(value, dict) and len(value) == 1:
        (key, arg), = value.items()
        if key == "$repeat":
            return arg[0] * arg[1]
        if key == "$list":
            return [f"{arg[0]}{i}" for i in range(arg[1])]
        if key == "$map":
            return {f"{arg[0]}{i}": "v" for i in range(arg[1])}
    if isinstance(value, dict):
        return {k: expand(v) for k, v in value.items()}
    if isinstance(value, list):
        return [expand(v) for v in value]
    return value


def manifest(base, sets):
    m = copy.deepcopy(base)
    for path, value in sets.items():
        cur = m
        keys = path.split(".")
        for k in keys[:-1]:
            cur = cur.setdefault(k, {})
        if value is None:
            cur.pop(keys[-1], None)
        else:
            cur[keys[-1]] = expand(value)
    return m


def short(value):
    """The row's value as printed in the table."""
    if isinstance(value, dict) and len(value) == 1 and next(iter(value)).startswith("$"):
        (key, arg), = value.items()
        return {"$repeat": f"{arg[0]!r}x{arg[1]}", "$list": f"[{arg[1]} items]", "$map": f"{{{arg[1]} keys}}"}[key]
    return json.dumps(value)


def row_name(row):
    return ", ".join(f"{p}={short(v)}" for p, v in row["set"].items()) or "(base)"


def load_table():
    with open(TABLE) as f:
        return json.load(f)


@unittest.skipUnless(control_plane_bin(), "SKIP: control-plane binaries not built; run "
                     "scripts/cluster/build-control-plane.sh")
@unittest.skipUnless(os.path.exists(FEDGE), f"SKIP: {FEDGE} not built")
class SpecBoundariesTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="fedge-spec-bounds-")
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

    @classmethod
    def tearDownClass(cls):
        subprocess.run([os.path.join(SCRIPTS, "stop-control-plane.sh"), "--purge"], env=cls.env,
                       capture_output=True, timeout=60)
        shutil.rmtree(cls.tmp, ignore_errors=True)

    @classmethod
    def kubectl(cls, *args, stdin=None, check=True):
        out = subprocess.run([cls.kubectl_bin, "--kubeconfig", cls.kubeconfig, *args], input=stdin,
                             capture_output=True, text=True, timeout=60)
        if check and out.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed: {out.stderr}")
        return out

    def fedge_verdict(self, text):
        out = subprocess.run([FEDGE, "validate", "-f", "-"], input=text, capture_output=True, text=True, timeout=30)
        # 0 valid, 1 invalid; anything else (a crash, a usage error) is a failure of its own.
        self.assertIn(out.returncode, (0, 1), f"fedge validate exited {out.returncode}: {out.stderr}")
        return out.returncode == 0, out.stderr.strip()

    def apiserver_verdict(self, text):
        out = self.kubectl("apply", "--dry-run=server", "-f", "-", stdin=text, check=False)
        if out.returncode != 0 and ("connection refused" in out.stderr or "Unable to connect" in out.stderr):
            raise AssertionError(f"the API server is unreachable: {out.stderr}")
        return out.returncode == 0, out.stderr.strip()

    def test_every_row_gets_the_same_verdict_from_fedge_and_the_api_server(self):
        table = load_table()
        self.assertGreater(len(table["rows"]), 100)
        lines, wrong = [], []
        for row in table["rows"]:
            text = json.dumps(manifest(table["base"], row["set"]))
            ok_fedge, msg_fedge = self.fedge_verdict(text)
            ok_api, msg_api = self.apiserver_verdict(text)
            verdict = lambda ok: "accept" if ok else "reject"
            mark = "" if ok_fedge == ok_api == row["valid"] else "  <-- DISAGREE"
            lines.append(f"{row_name(row)[:90]:90} {verdict(row['valid']):7} {verdict(ok_fedge):7} "
                         f"{verdict(ok_api):7}{mark}")
            if mark:
                wrong.append(f"{row_name(row)[:120]}: expected {verdict(row['valid'])}\n"
                             f"    fedge:     {verdict(ok_fedge)} {msg_fedge[:400]}\n"
                             f"    apiserver: {verdict(ok_api)} {msg_api[:400]}")
        print(f"\n{'row':90} {'expect':7} {'fedge':7} {'apisrv':7}", file=sys.stderr)
        print("\n".join(lines), file=sys.stderr)
        print(f"{len(lines)} rows, {len(wrong)} disagreements", file=sys.stderr)
        self.assertEqual(wrong, [], "\n" + "\n".join(wrong))

    def test_the_helm_chart_installs_the_same_crd(self):
        with open(CRD, "rb") as a, open(os.path.join(ROOT, "helm", "fedge", "crds", os.path.basename(CRD)), "rb") as b:
            self.assertEqual(a.read(), b.read(), "helm/fedge/crds/ must be a byte-identical copy of crds/")


if __name__ == "__main__":
    # ctest runs this file: missing control-plane binaries or fedge are SKIPPED (exit 77,
    # SKIP_RETURN_CODE), never a pass.
    if not control_plane_bin() or not os.path.exists(FEDGE):
        print("SKIPPED: " + ("control-plane binaries not built; run scripts/cluster/build-control-plane.sh"
                             if not control_plane_bin() else f"{FEDGE} not built"))
        raise SystemExit(77)
    unittest.main(verbosity=2)
