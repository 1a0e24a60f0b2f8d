"""perf/gpu_session.sh on the CPU: its dry run checks every command it would run on a GPU machine, so a
typo cannot cost a lent GPU's minutes."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from perf import results

ROOT = Path(__file__).resolve().parent.parent
STAGES = ("tests-gpu", "tests-rest", "ceilings", "tune-hetconv", "bench-hetconv-fwd", "bench-hetconv-fwdbwd",
          "bench-dwsep", "bench-shift", "bench-versatile", "plot", "audit")


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


def test_dry_run_checks_every_stage(tmp_path):
    done = subprocess.run(["bash", str(ROOT / "perf" / "gpu_session.sh"), "--dry-run"], capture_output=True,
                          text=True, timeout=300, env=_env(OUT=str(tmp_path), PYTHON=sys.executable))
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    summary = (tmp_path / "SUMMARY.md").read_text()
    rows = {line.split("|")[1].strip(): line for line in summary.splitlines() if line.startswith("| ")}
    assert set(STAGES) <= set(rows), summary
    for stage in STAGES:
        assert "| checked |" in rows[stage], rows[stage]
    assert "0 stage(s) not ok" in summary
    assert (tmp_path / "device.txt").exists() and (tmp_path / "logs" / "audit.log").exists()


@pytest.mark.parametrize("command", [
    ["perf", "run", "--layer", "hetconv", "--shapes", "vgg61"],          # a shape set that does not exist
    ["perf", "run", "--layer", "hetconv", "--pass", "fwd+bdw"],          # a pass that does not exist
    ["autotune", "--layer", "hetconv", "--shapes", "vgg16", "--dtype", "bf61"],
    ["autotune", "--layer", "dwsep", "--shapes", "vgg16"],               # a set of another layer
    ["perf", "audit", "--layer", "hetconv", "--shapes", "mobilenet_v2"],
    ["pytest", "-m", "gpu", "tests/no_such_test.py"],
    ["no_such_module", "--help"],
])
def test_the_check_catches_a_typo(command):
    done = subprocess.run([sys.executable, "-m", "perf.session_check", "-m", *command], capture_output=True,
                          text=True, timeout=120, cwd=ROOT, env=_env())
    assert done.returncode == 1, done.stdout + done.stderr
    assert "FAIL" in done.stderr


def test_the_commit_can_be_named_where_there_is_no_git(monkeypatch, tmp_path):
    monkeypatch.setenv("TRITONCONV_COMMIT", "abc1234")
    assert results.git_commit(tmp_path) == "abc1234"
