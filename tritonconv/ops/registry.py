"""Every operator's harness by layer name: what ``python -m autotune`` and ``python -m perf`` drive."""

from tritonconv.ops.depthwise.harness import HARNESS as DEPTHWISE
from tritonconv.ops.dwsep.harness import HARNESS as DWSEP
from tritonconv.ops.ghost.harness import HARNESS as GHOST
from tritonconv.ops.hetconv.harness import HARNESS as HETCONV
from tritonconv.ops.shift.harness import HARNESS as SHIFT
from tritonconv.ops.shuffle.harness import HARNESS as SHUFFLE
from tritonconv.ops.versatile.harness import HARNESS as VERSATILE

HARNESSES = {"hetconv": HETCONV, "dwsep": DWSEP, "depthwise": DEPTHWISE, "ghost": GHOST, "shift": SHIFT,
              "versatile": VERSATILE, "shuffle": SHUFFLE}
