"""Every operator's harness by layer name: what ``python -m autotune`` and ``python -m perf`` drive."""

from tritonconv.ops.hetconv.harness import HARNESS as HETCONV

HARNESSES = {"hetconv": HETCONV}
