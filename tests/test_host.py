"""``python -m perf host``: the host cost of a layer call next to F.conv2d, on the CPU with the launches
recorded (the JIT's kernels, so it runs without TRITON_INTERPRET, in a process of its own)."""

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd

from perf.__main__ import main

REPO = Path(__file__).resolve().parents[1]


def test_host_reports_each_pass_of_each_layer_next_to_the_plain_conv(tmp_path):
    out = tmp_path / "host.csv"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-m", "perf", "host", "--layer", "hetconv", "shuffle", "--calls", "2",
                           "--rounds", "1", "--out", str(out)], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    rows = pd.read_csv(out)
    assert sorted(zip(rows["layer"], rows["pass"])) == [(layer, pass_) for layer in ("hetconv", "shuffle")
                                                         for pass_ in ("bwd", "fwd", "infer")]
    assert (rows["host_us"] > 0).all() and (rows["dense_us"] > 0).all() and (rows["body_us"] > 0).all()
    assert set(rows["launches"]) == {"recorded"} and set(rows["device"]) == {"cpu"}
    assert rows["gpu_us"].isna().all()
    # Triton's binder and cache key, timed on the recorded launches: every pass launches (1 fwd, 3 bwd)
    binder = rows.set_index(["layer", "pass"])["binder_us"]
    assert (binder > 0).all() and (binder.xs("bwd", level="pass") > binder.xs("fwd", level="pass")).all()
    assert all(column in done.stdout for column in ("ours us", "body us", "F.conv2d us", "binder us"))


def test_host_times_the_gpu_path_with_a_stand_in_kernel(tmp_path):
    """--stand-in-launch: the replays' direct launches (and the launcher's) into a kernel that does nothing."""
    out = tmp_path / "host.csv"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-m", "perf", "host", "--layer", "shift", "--stand-in-launch", "--calls",
                           "2", "--rounds", "1", "--device", "cpu", "--out", str(out)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    rows = pd.read_csv(out)
    assert set(rows["launches"]) == {"stand-in"} and len(rows) == 3 and (rows["host_us"] > 0).all()
    assert rows["timing"].str.contains("does nothing").all()


def test_host_refuses_interpreted_kernels_and_bad_counts(capsys):
    assert main(["host", "--device", "cpu"]) == 2  # conftest sets TRITON_INTERPRET: nothing to record
    assert "TRITON_INTERPRET" in capsys.readouterr().err
    assert main(["host", "--calls", "0"]) == 2
    assert "--calls 0" in capsys.readouterr().err

