"""Every operator's adapter by layer name: what ``python -m autotune`` and ``python -m perf`` drive."""

from tritonconv.ops.depthwise.adapter import ADAPTER as DEPTHWISE
from tritonconv.ops.dwsep.adapter import ADAPTER as DWSEP
from tritonconv.ops.ghost.adapter import ADAPTER as GHOST
from tritonconv.ops.hetconv.adapter import ADAPTER as HETCONV
from tritonconv.ops.shift.adapter import ADAPTER as SHIFT
from tritonconv.ops.shuffle.adapter import ADAPTER as SHUFFLE
from tritonconv.ops.versatile.adapter import ADAPTER as VERSATILE

ADAPTERS = {"hetconv": HETCONV, "dwsep": DWSEP, "depthwise": DEPTHWISE, "ghost": GHOST, "shift": SHIFT,
              "versatile": VERSATILE, "shuffle": SHUFFLE}
