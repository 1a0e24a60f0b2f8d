"""CI gates for Hopper, read from sm_90a machine code compiled on the CPU (``perf.audit``).

Every kernel's default tile, on the first conv of each layer's headline network in channels_last, is
compiled as the launchers issue it and must: compile; not spill; put every tl.dot on HGMMA (wgmma),
not HMMA (mma.sync) or FMA; issue at most 4 scalar 8/16-bit global loads in bf16; do no 64-bit
division or modulo inside a loop; fit the H100's shared memory (bf16 and fp32).

Most kernels fail some of these today; they are being rewritten. ``KNOWN_VIOLATIONS`` names each
failure with its cause and the issue that fixes it, and the check is strict both ways: a new
violation fails, and so does a known one that no longer occurs (delete its entry when you fix it).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from perf import audit

ROOT = Path(__file__).resolve().parent.parent

HETCONV = "issue 11: HetConv rewrite"
DEPTHWISE = "issue 12: depthwise/dwsep/ghost"
SHIFT = "issue 13: shift/shuffle/versatile"
ISSUES = (HETCONV, DEPTHWISE, SHIFT)

# (layer, kernel, gate) -> (why it fails today, the issue that fixes it). The gated shape of each layer
# is the first conv of its headline network: `python tests/compile_for_gpu.py LAYER` prints its figures.
# Empty today: every gated kernel meets every gate on its gated shape (other shapes: `perf audit`).
KNOWN_VIOLATIONS: dict = {}

GATE_LAYERS = ("hetconv", "dwsep", "depthwise", "ghost", "shift", "versatile", "shuffle")


def test_every_layer_is_gated():
    assert set(GATE_LAYERS) == set(audit.adapters())


def test_known_violations_name_a_gate_a_reason_and_an_issue():
    assert callable(audit.gate_results) and set(audit.GATE_DTYPES) == {"bfloat16", "float32"}
    for (layer, kernel, gate), (reason, issue) in KNOWN_VIOLATIONS.items():
        assert layer in GATE_LAYERS, layer
        kernels = [k for _, k in audit.kernel_passes(audit.adapters()[layer].operator)]
        assert kernel in kernels, f"{layer} has no kernel {kernel!r}; it has {kernels}"
        assert gate in audit.GATES, f"{gate!r} is not a gate; the gates are {list(audit.GATES)}"
        assert reason.strip() and "\n" not in reason, (layer, kernel, gate)
        assert issue in ISSUES, issue


def _gate_results(layer: str) -> list[dict]:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    done = subprocess.run([sys.executable, str(ROOT / "tests" / "compile_for_gpu.py"), "--json", layer],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode in (0, 1), done.stdout[-3000:] + done.stderr[-6000:]
    return json.loads(done.stdout)


@pytest.mark.slow
@pytest.mark.parametrize("layer", GATE_LAYERS)
def test_kernels_meet_the_hopper_gates_or_are_known_violations(layer):
    results = _gate_results(layer)
    kernels = {entry["kernel"] for entry in results}
    operator = audit.adapters()[layer].operator
    every_kernel = {k for _, k in audit.kernel_passes(operator)}
    # plus what only a whole pass launches (depthwise's fused backward, dwsep's combined reduction)
    assert every_kernel <= kernels <= every_kernel | {f"{p} pass" for p in operator.kernels_of_pass}, kernels
    assert {entry["dtype"] for entry in results} == {"bf16", "fp32"}
    found = {}
    for entry in results:
        for gate in entry["failed"]:
            found.setdefault((layer, entry["kernel"], gate), entry)
    known = {key for key in KNOWN_VIOLATIONS if key[0] == layer}
    new = [f"  NEW {k[1]} fails {k[2]} ({audit.GATES[k[2]][0]}): {found[k]['dtype']} {found[k]['triton_kernel']} "
           f"{found[k]['tile']} on {found[k]['shape']}: {found[k]['figures']}" for k in sorted(set(found) - known)]
    fixed = [f"  FIXED {k[1]} now passes {k[2]}: delete its KNOWN_VIOLATIONS entry ({KNOWN_VIOLATIONS[k][1]})"
             for k in sorted(known - set(found))]
    assert not new and not fixed, f"{layer}: the gates changed\n" + "\n".join(new + fixed)
