"""What every operator's torch operators share: their definition (``define_op``), the autograd Function
around them (``training_function``), and their body (``run_forward``, ``run_backward``): decide, run the
operator's adapter's kernels or its fallback, lay out the result. Each operator's ``op.py`` keeps only
what is its own: the typed signatures torch.library needs and how to build its spec from them."""

from __future__ import annotations

import functools
from typing import Callable

import torch
from torch import Tensor
from torch.autograd import forward_ad

from tritonconv import _replay, dispatch
from tritonconv._layout import memory_format_of, missing_as_empty
from tritonconv._weights import empty_grad, same_layout


def run_forward(adapter, spec, t: dict) -> Tensor:
    """The forward op's body: ``adapter.forward`` (our kernel) or ``adapter.fallback_forward``, the output
    in x's layout. Notes the backend forced around the call for its backward (see
    ``dispatch.note_forward``)."""
    x, operator = t["x"], adapter.operator
    decision = dispatch.decide(operator, spec, "forward", x.device)
    dispatch.note_forward(operator, x)
    if decision.backend == "triton":
        return dispatch.launch(adapter.forward, spec, t, decision.tiles["forward"])
    return adapter.fallback_forward(spec, t).contiguous(memory_format=memory_format_of(x))


def run_backward(adapter, spec, t: dict, grad: Tensor, need_input: bool, need_weights: bool, forced: str) -> tuple:
    """The backward op's body: (grad x, one gradient per parameter) from ``adapter.backward`` (our
    kernels) or ``adapter.fallback_backward``, grad x in x's layout, each missing one as its own empty
    tensor."""
    x = t["x"]
    decision = dispatch.decide(adapter.operator, spec, "backward", x.device,
                               forced=dispatch.backward_forced(adapter.operator, x, forced))
    if decision.backend == "triton":
        grads = tuple(dispatch.launch(adapter.backward, spec, t, grad, decision.tiles, need_input, need_weights))
    else:
        dx, *rest = adapter.fallback_backward(spec, t, grad, need_input, need_weights)
        grads = (dx.contiguous(memory_format=memory_format_of(x)) if dx is not None else None, *rest)
    return missing_as_empty(grads, x)


def fake_output(x: Tensor, spec) -> Tensor:
    """A forward op's fake (shape-only) result: ``spec.output_shape`` in ``x``'s layout."""
    return x.new_empty(spec.output_shape).contiguous(memory_format=memory_format_of(x))


def fake_gradients(x: Tensor, need_input: bool, need_weights: bool, *params, in_weight_layout: tuple = ()) -> tuple:
    """A backward op's fake result: grad input in ``x``'s layout, then one gradient per parameter,
    each shaped like the tensor or the shape given (None: the parameter is absent). The gradients of the
    parameters at the positions ``in_weight_layout`` have the parameter's strides
    (``_weights.grad_strides``: the layer's taps-major weights), as their launchers write them."""
    def like(index, param):
        if not need_weights or param is None:
            return None
        if index in in_weight_layout:
            return empty_grad(param, param.shape, device=param.device, dtype=param.dtype)
        return param.new_empty(param.shape) if isinstance(param, Tensor) else x.new_empty(param)

    dx = x.new_empty(x.shape).contiguous(memory_format=memory_format_of(x)) if need_input else None
    return missing_as_empty((dx, *(like(i, param) for i, param in enumerate(params))), x)


def in_parameter_strides(grad: Tensor, param: Tensor) -> Tensor:
    """``grad`` viewed with ``param``'s strides where both lay the same memory out and differ only in the
    strides of size-1 dimensions (a [N, C, 1, 1] weight after ``model.to(memory_format=channels_last)``):
    a view, no copy. DDP's gradient buckets compare strides exactly and warn (and copy) otherwise."""
    if grad.stride() == param.stride() or grad.shape != param.shape:
        return grad
    if not same_layout(grad.shape, grad.stride(), param.stride()):
        return grad
    return grad.as_strided(param.shape, param.stride())


_LIBRARY = torch.library.Library("tritonconv", "FRAGMENT")
# operator -> its Python body, which an eager call runs directly (``_plain_eager``), replayed from the
# second call of a shape on (``_replay``: the operator itself, under torch.compile, runs the plain body)
_IMPLEMENTATIONS: dict = {}


def define_op(name: str, implementation: Callable, fake: Callable):
    """``torch.ops.tritonconv.<name>.default``: an operator (opaque to torch.compile) with the schema of
    ``implementation``'s annotations, which runs it on every device, and ``fake`` as its shape function.
    ``training_function`` makes it differentiable: a torch.autograd.Function around a plain operator
    costs about 15 us per call on the CPU, the same operator made with ``torch.library.custom_op`` and
    ``register_autograd`` about 42 us (pytorch/pytorch#176592), most of a small layer's host time."""
    _LIBRARY.define(name + torch.library.infer_schema(implementation, mutates_args=()))
    _LIBRARY.impl(name, implementation, "CompositeExplicitAutograd")
    torch.library.register_fake(f"tritonconv::{name}", fake, lib=_LIBRARY)
    op = getattr(torch.ops.tritonconv, name).default
    # an eager body leaves no forced-backend note (``_without_note``); a replayed call runs no body
    _IMPLEMENTATIONS[op] = _replay.replaying(functools.partial(_without_note, implementation))
    return op


def training_function(forward_op, backward_op, *, params: int, saves_output: bool = False) -> Callable:
    """The differentiable call of ``forward_op(x, *params, *hyperparameters)``, written once for every
    operator: a torch.autograd.Function whose backward is ``backward_op(grad, x, *params, [output,]
    *hyperparameters, need_input, need_weights, forced)``, returning (grad input, one gradient per
    parameter). An absent parameter (None, e.g. no bias) gets no gradient; ``saves_output`` passes the
    forward's output too (to undo an activation). The backend forced around the forward is captured for
    the backward, which may run on an autograd worker thread that does not see ``use_backend()``.
    torch.compile traces the Function, and the two operators inside stay opaque.

    Eagerly, with plain tensors (``_plain_eager``), the operators' bodies run directly, without torch's
    operator dispatch (an Autograd kernel and a redispatch per operator call), and a call that no
    gradient can flow through (inference, ``torch.no_grad``) skips the Function too: on the CPU (``python
    -m perf host``, paired runs) a training forward about 15% less host time, an inference forward 40%."""
    run_forward_op = _eager_or_op(forward_op)
    run_backward_op = _eager_or_op(backward_op)

    def forward(ctx, x, *inputs):
        if torch.compiler.is_compiling():  # the compiled graph's operator notes the backend at run time
            output = forward_op(x, *inputs)
        else:
            output = _without_note(run_forward_op, x, *inputs)
        ctx.hyperparameters = inputs[params:]
        ctx.save_for_backward(x, *inputs[:params], *((output,) if saves_output else ()))
        ctx.forced = dispatch.forced_for_backward()
        return output

    def backward(ctx, grad):
        x, *saved = ctx.saved_tensors
        weights = saved[:params]
        need_input = ctx.needs_input_grad[0]
        need_weights = any(ctx.needs_input_grad[1:1 + params])
        dx, *dweights = run_backward_op(grad, x, *saved, *ctx.hyperparameters, need_input, need_weights,
                                        ctx.forced)
        return (dx if need_input else None,
                *(in_parameter_strides(g, w) if need_weights and w is not None else None
                  for g, w in zip(dweights, weights)),
                *(None,) * len(ctx.hyperparameters))

    # Made with type(), not a class statement, so that autograd's node (and profiler traces) carry the
    # operator's name: torch names the backward class when the Function class is created.
    name = f"{forward_op.name().split('::')[-1]}_training"
    Training = type(name, (torch.autograd.Function,), {"forward": staticmethod(forward),
                                                        "backward": staticmethod(backward),
                                                        "__module__": __name__, "__qualname__": name})
    _register_autograd(forward_op, Training)
    _register_autograd(backward_op, None)
    implementation = _IMPLEMENTATIONS[forward_op]

    def call(*args):
        # is_compiling first: torch.compile then traces nothing but the Function
        if not torch.compiler.is_compiling() and not _differentiated(args) and _plain_eager(args):
            return implementation(*args)
        return Training.apply(*args)

    call.__name__ = call.__qualname__ = name
    return call


def _eager_or_op(op) -> Callable:
    """``op``'s body where ``_plain_eager`` allows it and autograd need not see the call, else the
    operator (whose Autograd kernel makes a backward with ``create_graph=True`` raise)."""
    implementation = _IMPLEMENTATIONS[op]

    def run(*args):
        return implementation(*args) if _plain_eager(args) and not _differentiated(args) else op(*args)

    return run


def _without_note(run: Callable, *args):
    """``run(*args)`` with the forward operator leaving no forced-backend note: an eager Function (or a
    call with no backward) keeps the forced backend itself (see ``dispatch.captured_by_function``)."""
    token = dispatch.captured_by_function.set(True)
    try:
        return run(*args)
    finally:
        dispatch.captured_by_function.reset(token)


_PLAIN_TENSORS = (Tensor, torch.nn.Parameter)
# Hyperparameters the operators' bodies take as they are; anything else (a numpy integer, a 0-d tensor)
# goes through the operator, whose schema converts it (as under torch.compile) or rejects it.
_PLAIN_VALUES = (int, float, bool, str, type(None))


def _plain_eager(args) -> bool:
    """Whether a call may run an operator's body without torch's dispatch: not traced (torch.compile,
    torch.jit.trace), no dispatch mode (FakeTensorMode, FlopCounterMode, ...), no functorch transform, no
    profiler (whose trace shows the operator), every tensor a plain Tensor or Parameter (not a FakeTensor,
    DTensor or other subclass, whose own dispatch must see the operator) and not on the meta device (where
    the operator's fake computes the shapes), no torch function mode (pre-dispatch tracing, as
    ``make_fx(pre_dispatch=True)`` and torch.export do it, and users' modes see the operator), and every
    other argument a plain Python value (``_PLAIN_VALUES``, lists of ints)."""
    if torch.compiler.is_compiling():
        return False
    if (torch._C._len_torch_dispatch_stack() or torch._C._is_torch_function_mode_enabled()
            or torch._C._are_functorch_transforms_active() or torch._C._get_tracing_state() is not None
            or torch._C._autograd._profiler_enabled()):
        return False
    for arg in args:
        kind = type(arg)
        if kind in _PLAIN_TENSORS:
            if arg.is_meta:
                return False
        elif kind is list:
            if any(type(value) is not int for value in arg):
                return False
        elif kind not in _PLAIN_VALUES:
            return False
    return True


def _register_autograd(op, training) -> None:
    """The Autograd kernel of ``op``: below autograd when nothing needs a gradient (as inside
    ``Training``); a direct call that does goes through ``training`` (the backward operator has none:
    double backward raises, where torch's default would warn and return wrong gradients)."""
    name = op.name()

    def autograd_kernel(keyset, *args):
        if _differentiated(args):
            if training is None:
                raise RuntimeError(f"{name} is not differentiable (double backward, create_graph=True, is not "
                                   "supported)")
            return training.apply(*args)
        return op.redispatch(keyset & _BELOW_AUTOGRAD, *args)

    _LIBRARY.impl(name.split("::")[-1], autograd_kernel, "Autograd", with_keyset=True)


_BELOW_AUTOGRAD = torch._C._after_autograd_keyset


def _differentiated(args) -> bool:
    """Whether autograd must see this call: a tensor argument requires grad (with grad mode on) or carries
    a forward-mode tangent (inside ``torch.autograd.forward_ad.dual_level``, where the Function raises:
    forward-mode AD is not supported, rather than a tangent silently dropped)."""
    if torch.is_grad_enabled() and any(isinstance(a, Tensor) and a.requires_grad for a in args):
        return True
    return forward_ad._current_level >= 0 and any(
        isinstance(a, Tensor) and forward_ad.unpack_dual(a).tangent is not None for a in args)
