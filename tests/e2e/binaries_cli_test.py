"""The command-line contract every fedge binary keeps (README, Standards): `--help` and
`--version` exit 0 and say what they are; a flag the binary does not know, or two that
exclude each other, exit 2 and say what was wrong on stderr (CLI11's own exit codes are 100+,
which a Kubernetes pod status or a shell script would not read as "usage").

Run by ctest (label e2e) with FEDGE_SOURCE_DIR and FEDGE_BINARY_DIR set.
"""
import os
import subprocess
import tempfile
import unittest

BUILD = os.environ.get("FEDGE_BINARY_DIR", os.path.join(os.path.dirname(__file__), "..", "..", "build"))
BINARIES = {
    "fedge": os.path.join(BUILD, "cli", "fedge"),
    "fedge-aggregator": os.path.join(BUILD, "aggregator", "fedge-aggregator"),
    "fedge-agent": os.path.join(BUILD, "agent", "fedge-agent"),
    "fedge-operator": os.path.join(BUILD, "operator", "fedge-operator"),
}


def run(*args):
    return subprocess.run(list(args), capture_output=True, text=True, timeout=60)


class BinariesCliTest(unittest.TestCase):
    def test_help_version_and_a_bad_flag(self):
        for name, path in BINARIES.items():
            with self.subTest(binary=name):
                self.assertTrue(os.access(path, os.X_OK), f"{path} not built")
                out = run(path, "--help")
                self.assertEqual(out.returncode, 0, out.stderr)
                self.assertIn("--version", out.stdout)
                out = run(path, "--version")
                self.assertEqual(out.returncode, 0, out.stderr)
                self.assertTrue(out.stdout.startswith(name + " "), out.stdout)
                out = run(path, "--no-such-flag")
                self.assertEqual(out.returncode, 2, f"{name}: {out.stdout}{out.stderr}")
                # What is wrong (the unknown flag, or a required one missing first) and where to look.
                self.assertIn("Run with --help", out.stderr)

    def test_serve_final_and_exit_when_done_exclude_each_other(self):
        out = run(BINARIES["fedge-aggregator"], "--config", "job.yaml", "--serve-final", "--exit-when-done")
        self.assertEqual(out.returncode, 2, out.stderr)
        self.assertIn("--serve-final", out.stderr)

    def test_serve_final_without_a_checkpoint_exits_1_and_says_why(self):
        src = os.environ.get("FEDGE_SOURCE_DIR", os.path.join(os.path.dirname(__file__), "..", ".."))
        manifest = os.path.join(src, "deploy", "examples", "quickstart.yaml")
        self.assertTrue(os.path.exists(manifest), manifest)
        with tempfile.TemporaryDirectory() as empty:
            out = run(BINARIES["fedge-aggregator"], "--config", manifest, "--listen", "127.0.0.1:0", "--http", "",
                      "--checkpoint-dir", empty, "--serve-final")
            self.assertEqual(out.returncode, 1, out.stdout + out.stderr)
            self.assertIn("no checkpoint in " + empty, out.stdout + out.stderr)


if __name__ == "__main__":
    unittest.main(verbosity=2)
