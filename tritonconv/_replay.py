"""Replayed calls: an eager call of one of our operators whose inputs and settings match an earlier call's
runs that call's launches again, without building its spec, deciding, planning or binding arguments.

An operator's body (spec, decision, plan, buffers, launches) is a function of what it reads: its tensors'
sizes, strides, dtypes, devices and 16-byte alignment, which arguments are one tensor, its other
arguments, and a few settings (the forced backend, the tuning cache's generation and mode, the tf32
switch, the launcher's device and options: ``_settings``). The first call of each such key runs the body
while a ``Recorder`` watches:

- every buffer ``_layout.empty`` allocates and every launch ``_launcher.launch`` makes (kernel, grid,
  integer arguments, constexprs, and on CUDA the compiled kernel);
- every other torch operation, through a TorchDispatchMode: views pass, anything else (a copy to
  another layout, the fallback's convolutions, a reduction in torch) makes the key one that is never
  replayed, and its body runs on every call, as it would without this module.

Otherwise the record is kept if every tensor launched or returned is an argument, a buffer, or a view
inside exactly one of them. A call whose decision will change without its key changing (first-call
tuning ran in it, is still to come, or waits on another rank: ``dispatch``) keeps no record at all, and
the tuner's measurement inside it is neither watched nor recorded (``Recorder.suspended``).

A later call of the key allocates the buffers and runs the launches on its own tensors: on CUDA by
calling each compiled kernel with the tensors' addresses (no binder, no kernel-cache key, no pointer
query), elsewhere (the interpreter, CPU tensors, a launch hook set) through ``_launcher.launch``.
Records hold no tensor. ``clear()`` forgets them, as a change of anything outside the key requires (the
perf audit's stand-in hardware, a test's monkeypatching).
"""

from __future__ import annotations

import contextlib
import functools
import threading
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes
from triton.runtime.driver import driver

from tritonconv import _launcher, _layout, dispatch, env

# Read once: a switch for ruling the replays out when a result is in doubt (perf/gpu_session.sh sets it
# when the GPU check of this module fails), not a per-call choice.
_ENABLED = env.replay()
_KEPT = 4096  # keys kept per operator
_ALIGNMENT = 16  # bytes: what the JIT specialises a pointer on (``_launcher._tensor_key``)
_TENSORS = (Tensor, torch.nn.Parameter)
_NOT_REPLAYED = object()
_records: list[dict] = []  # every operator's records, for ``clear``
_records_lock = threading.Lock()


@dataclass(frozen=True)
class _Operand:
    """A launched or returned tensor: ``source`` indexes the call's arguments, then its buffers;
    ``view`` (sizes, strides) is a view taken ``offset`` bytes from the source's first element."""

    source: int
    offset: int = 0
    view: tuple | None = None

    def tensor(self, sources: tuple) -> Tensor:
        tensor = sources[self.source]
        if self.view is None:
            return tensor
        shape, strides = self.view
        return tensor.as_strided(shape, strides, tensor.storage_offset() + self.offset // tensor.element_size())


@dataclass(frozen=True)
class _Step:
    """One launch as ``_launcher.launch`` took it; ``prepared``: its compiled kernel and argument template
    (CUDA, direct launches on), else None."""

    kernel: object
    grid: tuple
    operands: tuple  # an _Operand or None per tensor argument
    integers: tuple
    constexprs: dict
    positions: tuple | None
    prepared: object | None

    def launch(self, sources: tuple) -> None:
        """Through ``_launcher.launch``, on the call's tensors (views rebuilt)."""
        tensors = tuple([None if operand is None else operand.tensor(sources) for operand in self.operands])
        _launcher.launch(self.kernel, self.grid, tensors, self.integers, self.constexprs, self.positions)

    @functools.cached_property
    def places(self) -> tuple:
        """(source, offset) of each tensor argument, or None: its address is the source's plus the offset."""
        return tuple(None if operand is None else (operand.source, operand.offset) for operand in self.operands)


@dataclass(frozen=True)
class Replay:
    buffers: tuple  # (shape, strides, dtype, device) of each buffer, in allocation order
    steps: tuple
    result: tuple  # an _Operand per returned tensor
    single: bool  # the body returned one tensor, not a tuple

    def run(self, args: tuple, device: int | None = None):
        """The record on this call's ``args``; ``device``: the current CUDA device (the key's)."""
        sources = args
        for shape, strides, dtype, place in self.buffers:
            sources += (_layout.allocate(shape, strides, device=place, dtype=dtype),)
        if self.direct and not _launcher.hooked():
            stream = driver.active.get_current_stream(device)
            for step in self.steps:
                if step.kernel.pre_run_hooks:  # added since the record: Triton's launch runs them
                    step.launch(sources)
                    continue
                addresses = tuple([None if place is None else sources[place[0]].data_ptr() + place[1]
                                   for place in step.places])
                _launcher.run_prepared(step.prepared, step.grid, addresses, stream, hooks=False)
        elif self.steps:
            dispatch.launch(self._launch, sources)  # under the interpreter, its lock
        if self.single:
            return self.result[0].tensor(sources)
        return tuple([operand.tensor(sources) for operand in self.result])

    @functools.cached_property
    def direct(self) -> bool:
        """There are launches, and each calls its compiled kernel itself (CUDA, direct launches on)."""
        return bool(self.steps) and all(step.prepared is not None for step in self.steps)

    def _launch(self, sources: tuple) -> None:
        for step in self.steps:
            step.launch(sources)


class Recorder(TorchDispatchMode):
    """Watches one call of an operator's body (see the module's docstring); ``replay(result)`` is the
    record, or None with ``refused`` saying why not."""

    def __init__(self, args: tuple):
        super().__init__()
        self.args = args
        self.buffers: list[Tensor] = []
        self.steps: list[_Step] = []
        self.refused: str | None = None
        self.transient = False  # refused for a reason of this call only: store nothing, record the next call
        self._inside = 0  # > 0 while an allocation or a launch runs: its own torch operations are its own

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not self._inside and self.refused is None and (not func.is_view or torch.Tag.inplace_view in func.tags):
            self.refuse(f"it runs {func}")
        return func(*args, **(kwargs or {}))

    def refuse(self, reason: str, *, transient: bool = False) -> None:
        """Keep no record of this call; ``transient``: nor a refusal (the next call of the key is recorded)."""
        self.refused = self.refused or reason
        self.transient = self.transient or transient

    @contextlib.contextmanager
    def suspended(self, reason: str) -> Iterator[None]:
        """Inside the block nothing is recorded or watched (first-call tuning's measurement: its buffers are
        not kept alive, its torch ops are not slowed down by the dispatch mode), and the call is not kept."""
        self.refuse(reason, transient=True)
        _launcher.watching.recorder = None
        try:
            with _disable_current_modes():  # a recorded call runs under no other mode (``_plain_eager``)
                yield
        finally:
            _launcher.watching.recorder = self

    def allocating(self, allocate: Callable, *args, **kwargs) -> Tensor:
        self._inside += 1
        try:
            buffer = allocate(*args, **kwargs)
        finally:
            self._inside -= 1
        self.buffers.append(buffer)
        return buffer

    def launching(self, launch: Callable, kernel, grid, tensors, integers, constexprs, positions):
        """``launch(...)`` (``_launcher._launch``), recorded; returns its compiled kernel."""
        self._inside += 1
        try:
            compiled, prepared = launch(kernel, grid, tensors, integers, constexprs, positions)
        finally:
            self._inside -= 1
        if type(grid) is not tuple or any(isinstance(value, Tensor) for value in constexprs.values()):
            self.refuse("a launch's grid is a function or a constexpr a tensor")
        elif self.refused is None:
            operands = tuple(self._operand(tensor) for tensor in tensors)
            self.steps.append(_Step(kernel, grid, operands, integers, dict(constexprs), positions,
                                    prepared if not getattr(kernel, "used_global_vals", None) else None))
        return compiled

    def _operand(self, tensor: Tensor | None) -> _Operand | None:
        if tensor is None:
            return None
        sources = (*self.args, *self.buffers)
        for index, source in enumerate(sources):
            if source is tensor:
                return _Operand(index)
        storage = tensor.untyped_storage().data_ptr()
        # the call's tensors in this storage whose elements span the view's (weight and bias may share
        # one flat buffer, as FSDP's or apex's contiguous parameters do)
        low, high = _span(tensor)
        holding = [index for index, source in enumerate(sources)
                   if type(source) in _TENSORS and source.untyped_storage().data_ptr() == storage
                   and _span(source)[0] <= low and high <= _span(source)[1]]
        if len(holding) != 1:
            self.refuse(f"a launched or returned tensor is a view inside {len(holding)} of the call's tensors")
            return None
        source = sources[holding[0]]
        offset = tensor.data_ptr() - source.data_ptr()
        if source.dtype != tensor.dtype or offset % tensor.element_size():
            self.refuse("a launched or returned tensor views the call's tensors as another dtype")
            return None
        return _Operand(holding[0], offset, (tuple(tensor.shape), tensor.stride()))

    def replay(self, result) -> Replay | None:
        single = isinstance(result, Tensor)
        returned = (result,) if single else result
        if not (isinstance(returned, tuple) and all(type(t) in _TENSORS for t in returned)):
            self.refuse("it returns something other than tensors")
        operands = tuple(self._operand(tensor) for tensor in returned) if self.refused is None else ()
        if self.refused is not None:
            return None
        buffers = tuple((tuple(b.shape), b.stride(), b.dtype, b.device) for b in self.buffers)
        return Replay(buffers, tuple(self.steps), operands, single)


def _span(tensor: Tensor) -> tuple[int, int]:
    """The bytes from the lowest to past the highest element ``tensor`` addresses (an empty one: none)."""
    if tensor.numel() == 0:
        return tensor.data_ptr(), tensor.data_ptr()
    start = tensor.data_ptr() + sum(min(s, 0) * (n - 1) for n, s in zip(tensor.shape, tensor.stride())) \
        * tensor.element_size()
    extent = sum(abs(s) * (n - 1) for n, s in zip(tensor.shape, tensor.stride())) + 1
    return start, start + extent * tensor.element_size()


def _settings(cuda: bool) -> tuple:
    """What a call's body reads besides its arguments; the current CUDA device last (None off CUDA)."""
    launching = _launcher.launch_settings() if cuda else None
    return (dispatch.decision_settings(cuda), torch._C._get_cudnn_allow_tf32(),  # torch.backends.cudnn.allow_tf32
            launching, launching[0] if cuda else None)


def _key(args: tuple) -> tuple:
    key, lead, seen = [], None, []
    for value in args:
        kind = type(value)
        if kind in _TENSORS:
            identity = id(value)  # the arguments are alive: equal ids are one tensor
            if lead is None:
                lead = value
            elif identity in seen:  # one tensor in two slots: the record says which slot it took
                key.append(("same as", seen.index(identity)))
                continue
            seen.append(identity)
            key.append((value.shape, value.stride(), value.dtype, value.device, value.data_ptr() % _ALIGNMENT))
        elif kind is list:
            key.append((kind, tuple(value)))
        else:
            key.append((kind, value))
    key.append(_settings(lead is not None and lead.is_cuda))
    return tuple(key)


def replaying(body: Callable) -> Callable:
    """``body`` (an operator's eager body), replayed from the second call of each key on (see the module's
    docstring). A call that raises records nothing, so it raises again next time."""
    records: dict = {}
    with _records_lock:
        _records.append(records)

    def run(*args):
        # a collector sees every call; a call nested in a recorded one runs its body, so its launches are seen
        if not _ENABLED or dispatch.collecting_calls() or _launcher.recorder() is not None:
            return body(*args)
        key = _key(args)
        replay = records.get(key)
        if replay is None:
            return _record(body, args, key, records)
        if replay is _NOT_REPLAYED:
            return body(*args)
        return replay.run(args, key[-1][-1])

    run.__wrapped__ = body
    return run


def _record(body: Callable, args: tuple, key: tuple, records: dict):
    watcher = Recorder(args)
    _launcher.watching.recorder = watcher
    try:
        with watcher:
            result = body(*args)
    finally:
        _launcher.watching.recorder = None
    replay = watcher.replay(result)
    if watcher.transient:
        return result
    with _records_lock:
        if len(records) >= _KEPT:
            records.clear()
        records[key] = replay if replay is not None else _NOT_REPLAYED
    return result


def clear() -> None:
    """Forget every record (the next call of each key runs its body, recorded, again)."""
    with _records_lock:
        for records in _records:
            records.clear()
