"""tritonconv: compact convolutions as direct Triton kernels, dispatched against cuDNN per shape."""

from tritonconv import blocks, models
from tritonconv.accounting import Cost, count_macs
from tritonconv.convert import ConversionReport, convert
from tritonconv.dispatch import BackendUnavailable, Decision, explaining, set_tuning, use_backend
from tritonconv.ops.depthwise import DepthwiseConv2d, DepthwiseSpec, depthwise_conv2d
from tritonconv.ops.dwsep import DepthwiseSeparableConv2d, DwSepSpec, dwsep_conv2d
from tritonconv.ops.ghost import GhostModule
from tritonconv.ops.hetconv import HetConv2d, HetConvSpec, hetconv2d
from tritonconv.ops.linearconv import LinearConv2d, LinearConvSpec, correlation_loss
from tritonconv.ops.rotflip import RotFlipConv2d
from tritonconv.ops.shift import ShiftConv2d, ShiftSpec, shift_conv2d
from tritonconv.ops.shuffle import ShuffledGroupConv2d, ShuffleUnit, channel_shuffle, shuffle_conv1x1
from tritonconv.ops.versatile import VersatileConv2d, VersatileSpec, versatile_conv2d

__all__ = [
    "BackendUnavailable", "ConversionReport", "Cost", "Decision", "DepthwiseConv2d",
    "DepthwiseSeparableConv2d", "DepthwiseSpec", "DwSepSpec", "GhostModule", "HetConv2d", "HetConvSpec",
    "LinearConv2d", "LinearConvSpec", "RotFlipConv2d", "ShiftConv2d", "ShiftSpec", "ShuffleUnit",
    "ShuffledGroupConv2d", "VersatileConv2d", "VersatileSpec", "blocks", "channel_shuffle", "convert",
    "correlation_loss", "count_macs", "depthwise_conv2d", "dwsep_conv2d", "explain", "hetconv2d", "models",
    "set_tuning", "shift_conv2d", "shuffle_conv1x1", "tune", "use_backend", "versatile_conv2d",
]


def explain(layer, x, pass_: str = "forward") -> Decision:
    """Which backend ``layer(x)`` (``pass_="backward"``: its backward) takes, and why (with first-call
    tuning on, what it would measure: explaining runs and tunes nothing)."""
    with explaining():
        return layer.explain(x, pass_)


def tune(model, example_inputs, passes=("forward", "backward"), force: bool = False, **options):
    """Tune every tritonconv layer call ``model`` makes on ``example_inputs`` into the tuning cache and
    return a pandas DataFrame of the winners (see ``tritonconv.tuner.tune``; options: ``cache``,
    ``max_tiles``, ``timer``, ``progress``). Under torch.distributed every rank calls it: the ranks split
    the calls and all end with the same winners (``tritonconv.distributed``)."""
    from tritonconv.tuner import tune as tune_calls  # pandas and the registry, loaded when first used
    return tune_calls(model, example_inputs, passes, force, **options)
