"""Kernel launches that skip Triton's argument binder once a launch has been seen.

``kernel[grid](*args, **kwargs)`` runs triton 3.6's ``JITFunction.run``: its argument binder specialises
every argument (a pointer's 16-byte alignment, an integer's equality to 1, divisibility by 16 and
width), then builds and looks up the kernel cache's key, before the driver's launch: about 8 us per
launch on the CPU (``perf host``'s ``binder_us``), several times what the launch itself costs. Our
launchers' integer arguments and constexprs come from memoized plans, so a launch is fully described by
them, the tensors' dtypes and alignments and the device: ``launch`` keys the compiled kernel on exactly
that and, from the second launch on, calls it directly (``CompiledKernel.run``, the call
``JITFunction.run`` ends with), with the argument values in the kernel's parameter order.

Only on a CUDA device with the JIT (not under TRITON_INTERPRET, whose kernels are not JITFunctions, and
not for CPU tensors, whose launches the perf audit records): elsewhere ``launch`` is the plain call.
Triton's per-call options (``knobs.runtime.debug``, the instrumentation mode) are part of the key, as in
``JITFunction.run``'s; switches read only when compiling apply from each key's first launch on.
Measured on the CPU with a stand-in compiled kernel: 4-5 us per launch for the key, the lookup and
the arguments, against 8-10 us for the binder and the cache key; the launch itself on a GPU is owed.
"""

from __future__ import annotations

import functools
import threading
from dataclasses import dataclass

from torch import Tensor
from triton import knobs
from triton.knobs import HookChain
from triton.runtime.driver import driver
from triton.runtime.jit import JITFunction

from tritonconv import env

# Read once: a switch for a machine where the direct call misbehaves (perf/gpu_session.sh sets it when
# the GPU check of this module fails), not a per-call choice.
_ENABLED = env.direct_launch()
_MISSING = object()
_KEPT = 4096  # launch keys kept (one per kernel, plan, tensor dtypes and alignments, device)
_cache: dict = {}
_cache_lock = threading.Lock()


@dataclass(frozen=True)
class _Prepared:
    """A compiled kernel and its arguments in parameter order: ``template`` holds every integer and
    constexpr, ``slots`` the positions the tensors go to."""

    compiled: object
    template: tuple
    slots: tuple

    @functools.cached_property
    def _rest(self) -> tuple | None:
        """With the tensors first (the launchers' usual order): the template after them, else None."""
        leading = self.slots == tuple(range(len(self.slots)))
        return self.template[len(self.slots):] if leading else None

    def values(self, tensors: tuple) -> tuple | list:
        if self._rest is not None:
            return (*tensors, *self._rest)
        values = list(self.template)
        for slot, tensor in zip(self.slots, tensors):
            values[slot] = tensor
        return values


def parameter_values(kernel: JITFunction, args: tuple, kwargs: dict) -> list:
    """The values ``JITFunction.run`` passes to the compiled kernel: every parameter of the kernel, in
    its order, from the positional ``args`` and the keyword ``kwargs`` (its options, num_warps and the
    like, left out), defaults filled in."""
    bound = kernel.signature.bind(*args, **{k: v for k, v in kwargs.items() if k in kernel.signature.parameters})
    bound.apply_defaults()
    return list(bound.arguments.values())


def _direct(kernel, tensors: tuple) -> bool:
    """Whether ``launch`` may call the compiled kernel itself: a JIT kernel (not the interpreter's) with no
    pre-run hooks, on CUDA tensors, TRITONCONV_DIRECT_LAUNCH not 0."""
    if not _ENABLED or type(kernel) is not JITFunction or kernel.pre_run_hooks:
        return False
    lead = next((t for t in tensors if t is not None), None)
    return lead is not None and lead.is_cuda


def _tensor_key(tensor):
    """What the binder specialises of a pointer argument: its dtype and whether it is 16-byte aligned."""
    return None if tensor is None else (tensor.dtype, tensor.data_ptr() % 16 == 0)


def _arguments(tensors: tuple, integers: tuple, positions: tuple | None) -> tuple:
    """The positional arguments: the tensors at ``positions`` (None: leading) among the integers."""
    if positions is None:
        return (*tensors, *integers)
    args, scalars = [], iter(integers)
    for index in range(len(tensors) + len(integers)):
        args.append(tensors[positions.index(index)] if index in positions else next(scalars))
    return tuple(args)


# The ``_replay.Recorder`` watching this thread's call, if any: it sees every launch and buffer.
watching = threading.local()


def recorder():
    return getattr(watching, "recorder", None)


def launch(kernel, grid: tuple, tensors: tuple, integers: tuple, constexprs: dict, positions: tuple | None = None):
    """``kernel[grid](*args, **constexprs)`` for the positional arguments ``tensors`` (tensors or None, at
    the parameter indices ``positions``; None: they lead) and ``integers`` (every other one, in order:
    Python ints only, as the plans make them), ``constexprs`` the constexprs and launch options. On a CUDA
    device the first launch of each (kernel, integers, constexprs, tensor dtypes and alignments, device)
    goes through Triton; the later ones call the compiled kernel directly."""
    watcher = recorder()
    if watcher is not None:
        return watcher.launching(_launch, kernel, grid, tensors, integers, constexprs, positions)
    return _launch(kernel, grid, tensors, integers, constexprs, positions)[0]


def _launch(kernel, grid, tensors, integers, constexprs, positions) -> tuple:
    """(what the launch returned, its ``_Prepared`` or None where it went through Triton without one)."""
    if type(grid) is not tuple or not _direct(kernel, tensors):
        return kernel[grid](*_arguments(tensors, integers, positions), **constexprs), None
    device = driver.active.get_current_device()
    # id(kernel): the kernels are module-level objects (a JITFunction's own hash takes a lock); the knobs
    # are the per-call options JITFunction.run puts in its own key
    key = (id(kernel), device, integers, positions, tuple(constexprs.items()), tuple(map(_tensor_key, tensors)),
           knobs.runtime.debug, knobs.compilation.instrumentation_mode)
    prepared = _cache.get(key)
    if prepared is None:
        args = _arguments(tensors, integers, positions)
        compiled = kernel[grid](*args, **constexprs)
        if compiled is None or any(isinstance(value, Tensor) for value in constexprs.values()):
            return compiled, None  # not compiled here (a user's cache hook), or a tensor the key would keep alive
        slots = positions if positions is not None else tuple(range(len(tensors)))
        template = parameter_values(kernel, args, constexprs)
        for slot in slots:  # no reference to this call's tensors is kept
            template[slot] = None
        prepared = _Prepared(compiled, tuple(template), slots)
        with _cache_lock:
            if len(_cache) >= _KEPT:
                _cache.clear()
            _cache[key] = prepared
        return compiled, prepared
    for (name, _), (value, scope) in kernel.used_global_vals.items():  # as JITFunction.run checks (usually none)
        if scope.get(name, _MISSING) != value:
            return kernel[grid](*_arguments(tensors, integers, positions), **constexprs), None  # Triton raises
    run_prepared(prepared, grid, tensors, driver.active.get_current_stream(device))
    return prepared.compiled, prepared


def run_prepared(prepared: _Prepared, grid: tuple, tensors: tuple, stream, hooks: bool | None = None) -> None:
    """The compiled kernel's launch on ``tensors`` (tensors, addresses as ints, or None) in its slots, as
    ``CompiledKernel.__getitem__``'s runner makes it; without launch hooks (``hooks``: whether one is set,
    None: ask ``hooked``; triton 3.6 keeps empty hook chains, never None) it skips the launch metadata and
    the two hook calls, which do nothing then."""
    values = prepared.values(tensors)
    compiled = prepared.compiled
    grid_0, grid_1, grid_2 = (*grid, 1, 1)[:3]
    if hooked() if hooks is None else hooks:
        metadata, enter, leave = (compiled.launch_metadata(grid, stream, *values), knobs.runtime.launch_enter_hook,
                                  knobs.runtime.launch_exit_hook)
    else:
        metadata = enter = leave = None
    compiled.run(grid_0, grid_1, grid_2, stream, compiled.function, compiled.packed_metadata, metadata, enter, leave,
                 *values)


def hooked() -> bool:
    """Whether a launch hook is set (a profiler's, a user's): not an empty chain, not None."""
    return _hook_set(knobs.runtime.launch_enter_hook) or _hook_set(knobs.runtime.launch_exit_hook)


def _hook_set(hook) -> bool:
    return hook is not None and not (type(hook) is HookChain and not hook.calls)


def launch_settings() -> tuple:
    """What a launch on CUDA reads besides its arguments: the current device (first) and Triton's per-call
    options (``_replay`` keys its records on them)."""
    return driver.active.get_current_device(), knobs.runtime.debug, knobs.compilation.instrumentation_mode


def clear() -> None:
    """Forget every prepared launch (the next launch of each goes through Triton again)."""
    with _cache_lock:
        _cache.clear()
