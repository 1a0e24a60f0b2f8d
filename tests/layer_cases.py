"""Every layer of the library as a small test case: the table the contract and fuzz tests run over.

A new layer gets the contract tests by adding a ``LayerCase`` here; ``test_every_layer_has_a_case``
fails until it does. ``oracle`` is the float64 answer: a float64 copy of the layer run through the
fallback (the published formulation in plain torch), which the operator tests check against the
definitions of ../shared/SPEC.md.
"""

from __future__ import annotations

import copy
import random
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

import tritonconv


@dataclass(frozen=True)
class LayerCase:
    name: str
    build: Callable[..., nn.Module]  # (**factory) -> module, factory = device/dtype
    input_shape: tuple[int, int, int, int]
    has_batch_norm: bool = False  # batch statistics mix the batch: NaN locality holds in eval mode only
    dispatched: bool = True  # its calls go through our dispatcher (False: it only composes torch ops)
    residual: bool = False  # adds its input: under autocast the output takes the input's dtype, as torch's add
    # (kwargs, error type, words the message must contain) for constructor arguments no backend can take
    bad_arguments: tuple = ()
    # index of the spatial size under which the layer cannot compute (kernel larger than the padded input)
    too_small: tuple[int, int] | None = None
    random_case: Callable[[random.Random], tuple[Callable[..., nn.Module], tuple]] | None = field(default=None)

    def __str__(self) -> str:
        return self.name


def _hetconv_random(rng):
    p = rng.choice([1, 2, 3, 4])
    m, n = p * rng.randint(1, 6), p * rng.randint(1, 6)
    k, stride, bias = rng.choice([1, 3, 5]), rng.choice([1, 2]), rng.random() < 0.5
    shape = (rng.randint(1, 3), m, rng.randint(1, 9), rng.randint(1, 9))
    return (lambda **f: tritonconv.HetConv2d(m, n, k, stride, p, bias, **f)), shape


def _dwsep_random(rng):
    c, n, k = rng.randint(1, 12), rng.randint(1, 20), rng.choice([3, 5])
    stride, dilation = rng.choice([1, 2]), rng.choice([1, 1, 2])
    acts = [None, "relu", "relu6"]
    act, out_act, bias = rng.choice(acts), rng.choice(acts), rng.random() < 0.5
    shape = (rng.randint(1, 3), c, rng.randint(1, 9), rng.randint(1, 9))
    return (lambda **f: tritonconv.DepthwiseSeparableConv2d(c, n, k, stride, dilation=dilation, bias=bias,
                                                            activation=act, out_activation=out_act, **f)), shape


def _depthwise_random(rng):
    c, k, mult = rng.randint(1, 10), rng.choice([3, 5, 7]), rng.choice([1, 2, 3])
    stride, dilation, bias = rng.choice([1, 2]), rng.choice([1, 2]), rng.random() < 0.5
    act = rng.choice([None, "relu", "relu6"])
    shape = (rng.randint(1, 3), c, rng.randint(1, 9), rng.randint(1, 9))
    return (lambda **f: tritonconv.DepthwiseConv2d(c, k, stride, dilation=dilation, bias=bias, multiplier=mult,
                                                   activation=act, **f)), shape


def _ghost_random(rng):
    c, n, ratio = rng.randint(1, 10), rng.randint(1, 16), rng.choice([2, 3])
    k, dw, stride, relu = rng.choice([1, 3]), rng.choice([3, 5]), rng.choice([1, 2]), rng.random() < 0.5
    shape = (rng.randint(1, 3), c, rng.randint(1, 8), rng.randint(1, 8))
    return (lambda **f: tritonconv.GhostModule(c, n, k, ratio, dw, stride, relu, **f)), shape


def _shift_random(rng):
    c, n, k = rng.randint(1, 20), rng.randint(1, 20), rng.choice([3, 5])
    dilation, stride, bias = rng.choice([1, 2]), rng.choice([1, 2]), rng.random() < 0.5
    assignment = rng.choice(["interleaved", "grouped"])
    shape = (rng.randint(1, 3), c, rng.randint(1, 9), rng.randint(1, 9))
    return (lambda **f: tritonconv.ShiftConv2d(c, n, k, dilation, stride, bias, assignment, **f)), shape


def _shuffle_random(rng):
    groups = rng.choice([1, 2, 3])
    shuffle = rng.choice([1, 2, 3])
    c = groups * rng.randint(1, 5)
    n = groups * shuffle * rng.randint(1, 3)
    bias = rng.random() < 0.5
    shape = (rng.randint(1, 3), c, rng.randint(1, 8), rng.randint(1, 8))
    return (lambda **f: tritonconv.ShuffledGroupConv2d(c, n, groups, shuffle, bias, **f)), shape


def _versatile_random(rng):
    k, g = rng.choice([1, 3, 5]), rng.choice([1, 2])
    delta = g * rng.randint(0, 2)
    c = delta + rng.randint(1, 6)
    secondaries = (k + 1) // 2 * (delta // g + 1)
    n = secondaries * rng.randint(1, 3)
    stride, dilation, bias = rng.choice([1, 2]), rng.choice([1, 2]), rng.random() < 0.5
    shape = (rng.randint(1, 3), c, rng.randint(1, 9), rng.randint(1, 9))
    return (lambda **f: tritonconv.VersatileConv2d(c, n, k, stride, None, dilation, bias, delta, g, **f)), shape


def _linearconv_random(rng):
    variant = rng.choice(["vanilla", "lowrank", "rankratio", "sparse"])
    c, n, k = rng.randint(1, 8), rng.randint(4, 12), rng.choice([1, 3, 5])  # rankratio 0.5 needs P >= 2
    rank = {"lowrank": 1, "rankratio": 0.5}.get(variant)
    sparsity = 0.5 if variant == "sparse" else None
    stride, bias = rng.choice([1, 2]), rng.random() < 0.5
    padding = rng.choice([(k - 1) // 2, 0])  # the Triton path and the cuDNN path
    shape = (rng.randint(1, 3), c, rng.randint(k, 9), rng.randint(k, 9))
    return (lambda **f: tritonconv.LinearConv2d(c, n, k, stride, padding, bias=bias, variant=variant, rank=rank,
                                                sparsity=sparsity, sparsity_ramp=0, **f)), shape


def _rotflip_random(rng):
    c, n, k = rng.randint(1, 6), 8 * rng.randint(1, 2), rng.choice([1, 3])
    stride, bias = rng.choice([1, 2]), rng.random() < 0.5
    shape = (rng.randint(1, 3), c, rng.randint(k, 8), rng.randint(k, 8))
    return (lambda **f: tritonconv.RotFlipConv2d(c, n, k, stride, (k - 1) // 2, bias=bias, **f)), shape


NOT_INT = [({"stride": 1.0}, (TypeError, ValueError), "stride"), ({"stride": True}, (TypeError, ValueError), "stride")]

CASES = [
    LayerCase("hetconv", lambda **f: tritonconv.HetConv2d(8, 8, 3, 1, 4, False, **f), (2, 8, 5, 6),
              bad_arguments=(*NOT_INT, ({"p": 3}, ValueError, "p=3"), ({"bias": "yes"}, TypeError, "bias"),
                             ({"kernel_size": 2}, ValueError, "kernel_size=2")),
              random_case=_hetconv_random),
    LayerCase("hetconv_bias_stride2", lambda **f: tritonconv.HetConv2d(6, 12, 3, 2, 3, True, **f), (2, 6, 7, 5),
              random_case=None),
    LayerCase("dwsep", lambda **f: tritonconv.DepthwiseSeparableConv2d(6, 10, 3, activation="relu", **f),
              (2, 6, 6, 5),
              bad_arguments=(*NOT_INT, ({"bias": "yes"}, TypeError, "bias"),
                             ({"activation": "gelu"}, ValueError, "activation")),
              random_case=_dwsep_random),
    LayerCase("depthwise", lambda **f: tritonconv.DepthwiseConv2d(6, 3, multiplier=2, activation="relu6", **f),
              (2, 6, 6, 5),
              bad_arguments=(*NOT_INT, ({"bias": "yes"}, TypeError, "bias"),
                             ({"multiplier": 0}, ValueError, "multiplier")),
              random_case=_depthwise_random),
    LayerCase("ghost", lambda **f: tritonconv.GhostModule(6, 10, 1, 2, 3, **f), (2, 6, 6, 5), has_batch_norm=True,
              bad_arguments=(*NOT_INT, ({"dw_size": 4}, ValueError, "dw_size"),
                             ({"dw_size": "8"}, (TypeError, ValueError), "dw_size"),
                             ({"relu": "yes"}, TypeError, "relu")),
              random_case=_ghost_random),
    LayerCase("shift", lambda **f: tritonconv.ShiftConv2d(8, 10, 3, **f), (2, 8, 6, 5),
              bad_arguments=(*NOT_INT, ({"bias": "yes"}, TypeError, "bias"),
                             ({"assignment": "random"}, ValueError, "assignment")),
              random_case=_shift_random),
    LayerCase("shuffle", lambda **f: tritonconv.ShuffledGroupConv2d(6, 12, 3, 3, True, **f), (2, 6, 5, 4),
              bad_arguments=(({"groups": 4}, ValueError, "groups"), ({"bias": "yes"}, TypeError, "bias"),
                             ({"groups": 1.5}, (TypeError, ValueError), "groups")),
              random_case=_shuffle_random),
    LayerCase("shuffle_unit", lambda **f: tritonconv.ShuffleUnit(12, 12, 3, **f), (2, 12, 5, 4),
              has_batch_norm=True, residual=True,
              bad_arguments=(*NOT_INT, ({"groups": 5}, ValueError, "groups"))),
    LayerCase("versatile", lambda **f: tritonconv.VersatileConv2d(6, 12, 3, delta=2, g=2, **f), (2, 6, 6, 5),
              bad_arguments=(*NOT_INT, ({"bias": "yes"}, TypeError, "bias"), ({"delta": 1}, ValueError, "g=2"),
                             ({"padding": 1.5}, (TypeError, ValueError), "padding")),
              random_case=_versatile_random),
    LayerCase("linearconv", lambda **f: tritonconv.LinearConv2d(6, 8, 3, padding=1, **f), (2, 6, 6, 5),
              bad_arguments=(*NOT_INT, ({"bias": "yes"}, TypeError, "bias"),
                             ({"variant": "dense"}, ValueError, "variant")),
              random_case=_linearconv_random),
    LayerCase("linearconv_sparse", lambda **f: tritonconv.LinearConv2d(6, 8, 3, padding=1, variant="sparse",
                                                                      sparsity=0.5, sparsity_ramp=0, **f),
              (2, 6, 6, 5)),
    LayerCase("linearconv_lowrank_cudnn", lambda **f: tritonconv.LinearConv2d(6, 8, 3, padding=0, variant="lowrank",
                                                                             rank=2, **f),
              (2, 6, 6, 5), dispatched=False, too_small=(2, 2)),
    LayerCase("rotflip", lambda **f: tritonconv.RotFlipConv2d(4, 16, 3, padding=1, **f), (2, 4, 5, 6),
              bad_arguments=(*NOT_INT, ({"bias": "yes"}, TypeError, "bias"),
                             ({"out_channels": 12}, ValueError, "out_channels")),
              too_small=None, random_case=_rotflip_random),
]

BY_NAME = {case.name: case for case in CASES}


def layer_classes() -> set[type]:
    """Every nn.Module layer class the package exports."""
    return {obj for obj in vars(tritonconv).values() if isinstance(obj, type) and issubclass(obj, nn.Module)}


def oracle(module: nn.Module, x: torch.Tensor, grad: torch.Tensor | None = None):
    """(y, {name: grad}) of a float64 copy of ``module`` through the fallback; grads when ``grad`` is given."""
    module64 = copy.deepcopy(module).double()
    x64 = x.detach().double().requires_grad_(grad is not None)
    with tritonconv.use_backend("fallback"):
        y64 = module64(x64)
        if grad is None:
            return y64.detach(), {}
        y64.backward(grad.double())
    grads = {"input": x64.grad}
    grads.update({name: p.grad for name, p in module64.named_parameters() if p.grad is not None})
    return y64.detach(), grads
