"""Per-call choice between our Triton kernels and the published cuDNN formulation ("fallback").

Order of precedence: ``use_backend(...)`` in code, then ``TRITONCONV_BACKEND``, then (``auto``) the
measured winner in the tuning cache for this op, pass, shape, dtype, layout, GPU, triton version and
kernel source; with nothing measured, the Triton kernels with a default tile. Every choice carries a
sentence saying why; ``explain`` returns it without running anything.
"""

from __future__ import annotations

import collections
import contextlib
import contextvars
import functools
import threading
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import torch
import triton

from tritonconv import _launcher, distributed, env, hardware, kernel_helpers, tiles
from tritonconv.tiles import GemmTile
from tritonconv.tuning_cache import CacheKey, CacheWriteError, TuningCache, default_cache, source_hash

PASSES = ("forward", "backward")


class BackendUnavailable(RuntimeError):
    """A forced backend cannot run this call."""


STANDARD_PASSES = {"forward": ("forward",), "backward": ("backward_input", "backward_weight")}


@dataclass(frozen=True, eq=False)  # compared and hashed by identity: one object per operator
class Operator:
    """What the dispatcher and the tuner need to know of one operator."""

    name: str
    kernel_sources: tuple[Path, ...]
    kernels_of_pass: dict  # pass -> tuple of kernel names it launches
    default_tile: Callable  # (spec, kernel name) -> GemmTile
    candidate_tiles: Callable  # (spec, kernel name) -> [GemmTile]: what the tuner measures
    # (spec) -> why our kernels cannot take this valid call, or None. What no backend can compute is
    # refused earlier, as invalid input; this is what only the fallback can.
    triton_unsupported: Callable = lambda spec: None

    @functools.cached_property
    def source(self) -> str:
        """Hash of the kernel source and the launchers with their tile tables (and the shared tile
        code and jit helpers), read once per process: editing any of them invalidates the measurements."""
        return source_hash(*self.kernel_sources, Path(tiles.__file__), Path(kernel_helpers.__file__))

    @classmethod
    def of(cls, name: str, kernels, launch, *more_sources, kernels_of_pass: dict | None = None,
           triton_unsupported: Callable = lambda spec: None) -> Operator:
        """The operator of a folder: its ``kernels`` and ``launch`` modules (and ``more_sources``, modules
        whose kernels it launches too) hashed for the tuning cache, ``launch.default_tile`` and
        ``launch.candidate_tiles`` its tiles; passes by default a forward kernel and the backward's input- and
        weight-gradient kernels."""
        return cls(name, tuple(Path(module.__file__) for module in (kernels, launch, *more_sources)),
                   kernels_of_pass or STANDARD_PASSES, launch.default_tile, launch.candidate_tiles, triton_unsupported)

    def cache_key(self, spec, pass_: str, device: torch.device) -> CacheKey:
        return CacheKey(self.name, pass_, spec.tuning_key(), hardware.device_name_of(device), torch.__version__,
                        triton.__version__, self.source)


@dataclass(frozen=True)
class Decision:
    backend: str  # "triton" or "fallback"
    reason: str
    tiles: dict = field(default_factory=dict)  # kernel name -> GemmTile, for "triton"
    untuned: bool = False  # the cache had no usable entry for this CUDA call: first-call tuning may measure it

    def __str__(self) -> str:
        tiles = ", ".join(f"{k}={t.label()}" for k, t in self.tiles.items())
        return f"{self.backend}" + (f" [{tiles}]" if tiles else "") + f": {self.reason}"


_forced: contextvars.ContextVar[str | None] = contextvars.ContextVar("tritonconv_backend", default=None)


@contextlib.contextmanager
def use_backend(backend: str):
    """Force ``"triton"``, ``"fallback"`` or ``"auto"`` for calls made inside the block (their
    backward passes included, wherever autograd runs them)."""
    if backend not in env.BACKEND_CHOICES:
        raise ValueError(f"backend={backend!r} is not a backend; expected one of {env.BACKEND_CHOICES}")
    token = _forced.set(backend)
    try:
        yield
    finally:
        _forced.reset(token)


def forced_backend() -> str:
    """The backend forced right now: the innermost ``use_backend``, else TRITONCONV_BACKEND."""
    return _forced.get() or env.backend_override()


# ---- the forced backend, from a forward to its backward ---------------------------------------------
# Eagerly, setup_context runs with the forward and stores forced_backend() in ctx. Under torch.compile
# it runs once, while tracing, so what it could store would be the backend forced at trace time; it
# stores "" instead, and the forward custom op (which runs at every call) notes the backend forced
# then, keyed on the input it saves for its backward. The backward runs on an autograd worker thread
# that sees no use_backend(), so the note is process-wide; it is bounded, as a backward may never run.
_FORCED_AT_RUN_TIME: collections.OrderedDict = collections.OrderedDict()
_FORCED_NOTES_KEPT = 4096
_notes_lock = threading.Lock()


def _input_key(operator: Operator, x: torch.Tensor) -> tuple:
    return operator.name, x.device, x.data_ptr(), tuple(x.shape), tuple(x.stride()), x._version


# Set while an eager Function runs its forward operator: the Function keeps the forced backend itself,
# so the operator leaves no note (one left behind would be taken by a later compiled backward of the
# same unmodified input).
captured_by_function: contextvars.ContextVar[bool] = contextvars.ContextVar("tritonconv_captured", default=False)


def note_forward(operator: Operator, x: torch.Tensor) -> None:
    """Called by a forward operator that runs in a compiled graph: remember the backend forced around
    this call for its backward (each run replaces the note of the last on the same input, so a
    ``retain_graph`` backward finds it again). An inference tensor (torch.inference_mode) has no
    backward, and no version counter to key the note."""
    if captured_by_function.get() or x.device.type == "meta" or x.is_inference():
        return
    forced = _forced.get()
    if forced is None and not _FORCED_AT_RUN_TIME:
        return
    with _notes_lock:
        key = _input_key(operator, x)
        if forced is None:  # nothing forced now: an earlier run's note must not govern this backward
            _FORCED_AT_RUN_TIME.pop(key, None)
            return
        _FORCED_AT_RUN_TIME[key] = forced
        while len(_FORCED_AT_RUN_TIME) > _FORCED_NOTES_KEPT:
            _FORCED_AT_RUN_TIME.popitem(last=False)


def forced_for_backward() -> str:
    """What setup_context stores for the backward: the backend forced now; "" while torch.compile
    traces (the backward then asks ``backward_forced``)."""
    return "" if torch.compiler.is_compiling() else forced_backend()


def backward_forced(operator: Operator, x: torch.Tensor, stored: str) -> str:
    """The backend forced around the forward of the backward being run."""
    if stored:
        return stored
    with _notes_lock:
        noted = _FORCED_AT_RUN_TIME.get(_input_key(operator, x)) if x.device.type != "meta" else None
    return noted or env.backend_override()


# Triton's interpreter is not thread-safe (two threads launching at once crash it): under it, every
# launch of ours holds this lock. On a GPU nothing is taken.
_interpreter_lock = threading.RLock()


def launch(run: Callable, *args):
    """``run(*args)``, which launches our kernels: serialised under the interpreter. A plain function, not
    a context manager: it runs on every call, and a generator-based one costs about 1.5 us."""
    if env.triton_interpret():
        with _interpreter_lock:
            return run(*args)
    return run(*args)


@dataclass(frozen=True)
class Call:
    """One call ``decide`` was asked about while ``collecting``: what ``tritonconv.tune`` tunes."""

    operator: Operator
    spec: object
    pass_: str
    device: torch.device
    where: str | None  # the module path the collector's ``where()`` gave, if any


# Process-wide, not a context variable: a backward's decide() runs on autograd's worker thread.
_collectors: list = []
_collectors_lock = threading.Lock()


@contextlib.contextmanager
def collecting(where: Callable[[], str | None] = lambda: None):
    """Record every call ``decide`` is asked about inside the block (on any thread) into the list it
    yields, as ``Call``s; ``where()`` names the caller (``tritonconv.tune`` gives the module path)."""
    calls: list[Call] = []
    collector = (calls, where)
    with _collectors_lock:
        _collectors.append(collector)
    try:
        yield calls
    finally:
        with _collectors_lock:
            _collectors.remove(collector)


def collecting_calls() -> bool:
    """Whether a ``collecting`` block is open (every call must then reach ``decide``)."""
    return bool(_collectors)


def _record(operator: Operator, spec, pass_: str, device: torch.device) -> None:
    with _collectors_lock:
        for calls, where in _collectors:
            calls.append(Call(operator, spec, pass_, device, where()))


def decide(operator: Operator, spec, pass_: str, device: torch.device, *, forced: str | None = None,
           cache: TuningCache | None = None) -> Decision:
    """Which backend runs this call, with which tiles, and why."""
    if pass_ not in PASSES:
        raise ValueError(f"pass_={pass_!r}; expected one of {PASSES}")
    if _collectors:
        _record(operator, spec, pass_, device)
    forced = forced or forced_backend()
    cache = cache or default_cache()
    generation = cache.generation() if device.type == "cuda" else 0
    can_run = hardware.triton_can_run(device, spec.dtype)
    decision = _decide(operator, spec, pass_, device, forced, can_run, cache, generation)
    if decision.untuned and tuning_mode() == "first-call":
        decision = _first_call(operator, spec, pass_, device, forced, can_run, cache, decision)
    return decision


def decision_settings(cuda: bool) -> tuple:
    """What ``decide`` reads besides the call (``_replay`` keys its records on it): the forced backend,
    the tuning mode and, on CUDA, the tuning cache and its generation."""
    if not cuda:
        return forced_backend(), tuning_mode()
    cache = default_cache()
    return forced_backend(), tuning_mode(), cache, cache.generation()


# ---- first-call tuning: opt-in, never while torch.compile traces or a CUDA graph is captured ------------
_tuning_override: str | None = None
_first_call_tried: set = set()  # cache keys tuned (or failed to) in this process: each is tried once
_peer_tuning: set = set()  # cache keys another rank claimed (distributed.claim) and has not published yet
_first_call_lock = threading.Lock()
_explaining: contextvars.ContextVar[bool] = contextvars.ContextVar("tritonconv_explaining", default=False)


def set_tuning(mode: str | None) -> None:
    """``"first-call"``: a CUDA call whose shape the cache has no entry for is tuned (``tune_pass``, the
    winner stored) before it runs; ``"off"``: never; None: back to TRITONCONV_TUNING (default off).

    Under torch.distributed the first rank to reach a shape tunes it and publishes the winner through
    the process group's store; the other ranks run the fallback until it arrives, then the same tiles
    (``tritonconv.distributed``: no collective, so ranks may call their layers in any order)."""
    global _tuning_override
    if mode is not None and mode not in env.TUNING_CHOICES:
        raise ValueError(f"tuning mode {mode!r}; expected one of {env.TUNING_CHOICES} or None")
    _tuning_override = mode


def tuning_mode() -> str:
    return _tuning_override or env.tuning_mode()


@contextlib.contextmanager
def explaining():
    """``decide`` inside the block says what first-call tuning would do instead of doing it."""
    token = _explaining.set(True)
    try:
        yield
    finally:
        _explaining.reset(token)


def explain(operator: Operator, spec, pass_: str, device: torch.device) -> Decision:
    """What ``decide`` answers for this call, running and tuning nothing: every ``explain()`` of the
    library asks this (layers' own ``explain`` methods included, not only ``tritonconv.explain``)."""
    with explaining():
        return decide(operator, spec, pass_, device)


def _capturing() -> bool:
    try:
        return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()
    except RuntimeError:
        return False


def _tune_first_call(operator: Operator, spec, pass_: str, device: torch.device, cache: TuningCache) -> dict | None:
    """Measure this call's pass and store the winner (the tuner, imported on first use: it imports us);
    the measured cache entry (also when it could not be written here)."""
    from tritonconv import tuner
    adapter = tuner.adapters_by_operator().get(operator.name)
    if adapter is None:
        raise LookupError(f"no tuning adapter for {operator.name}")
    with torch.no_grad():  # the measurement's own tensors are no part of the user's graph
        return tuner.tune_pass(adapter, spec, pass_, device, cache).entry


def _first_call(operator, spec, pass_, device, forced, can_run, cache, decision: Decision) -> Decision:
    if forced != "auto":
        return decision
    if torch.compiler.is_compiling():
        return replace(decision, reason=f"{decision.reason}; first-call tuning is not done while torch.compile "
                                        "traces (the call is tuned the first time it runs eagerly)")
    if _capturing():
        _not_replayed("first-call tuning waits for a call outside CUDA graph capture")
        return replace(decision, reason=f"{decision.reason}; first-call tuning is not done during CUDA graph "
                                        "capture")
    key = str(operator.cache_key(spec, pass_, device))
    if _explaining.get() and key in _peer_tuning:
        return _waiting(decision)
    if _explaining.get():
        return replace(decision, reason=f"{decision.reason}; first-call tuning (set_tuning / TRITONCONV_TUNING) "
                                        "will measure it when it first runs")
    with _first_call_lock:
        if key in _first_call_tried:
            return decision
        if key not in _peer_tuning and not distributed.claim(key):
            _peer_tuning.add(key)
        if key in _peer_tuning:
            return _from_peer(operator, spec, pass_, device, forced, can_run, cache, decision)
        _first_call_tried.add(key)
        entry, failure = None, "the tuning rank stopped before it finished"
        watcher = _launcher.recorder()  # a call being recorded (_replay): its measurement is not
        try:
            with watcher.suspended("first-call tuning ran in it") if watcher else contextlib.nullcontext():
                entry = _tune_first_call(operator, spec, pass_, device, cache)
            failure = None if entry else "no winner was measured"
        except Exception as error:  # a failed measurement must not fail the user's call
            failure = str(error)
            warnings.warn(f"first-call tuning of {operator.name} {pass_} ({spec.describe()}) failed: {error}; "
                          "running untuned", RuntimeWarning, stacklevel=4)
            return replace(decision, reason=f"{decision.reason}; first-call tuning failed: {error}")
        finally:  # whatever happened (an interrupt too), the ranks waiting for this key hear of it
            distributed.publish(key, entry, failure)
    tuned = _decide(operator, spec, pass_, device, forced, can_run, cache, cache.generation())
    return replace(tuned, reason=f"{tuned.reason} (tuned at its first call)")


def _not_replayed(reason: str) -> None:
    """The call being recorded, if any (``_replay``), keeps no record: its decision will change without
    its key changing (a first-call tuning still to come)."""
    watcher = _launcher.recorder()
    if watcher is not None:
        watcher.refuse(reason, transient=True)


def _waiting(decision: Decision) -> Decision:
    _not_replayed("another rank is tuning it")
    return Decision("fallback", f"{decision.reason}; another rank is tuning it at its first call: the fallback "
                                "runs until its winner arrives")


def _from_peer(operator, spec, pass_, device, forced, can_run, cache, decision: Decision) -> Decision:
    """A shape another rank claimed: the fallback until its entry is published, then that entry
    (stored here too, so this rank's cache agrees). The caller holds ``_first_call_lock``."""
    cache_key = operator.cache_key(spec, pass_, device)
    key = str(cache_key)
    news = distributed.arrived(key)
    if news is None:
        return _waiting(decision)
    _peer_tuning.discard(key)
    _first_call_tried.add(key)
    if news["entry"] is None:
        return replace(decision, reason=f"{decision.reason}; first-call tuning on rank {news['rank']} failed: "
                                        f"{news['failure']}")
    if cache.lookup(cache_key, operator.kernels_of_pass[pass_]) != news["entry"]:
        try:
            cache.store(cache_key, news["entry"])
        except CacheWriteError as error:
            _not_replayed("the winner another rank tuned could not be saved")
            warnings.warn(f"{error}; the winner rank {news['rank']} tuned for {operator.name} {pass_} "
                          f"({spec.describe()}) is not saved here: running untuned", RuntimeWarning, stacklevel=5)
            return replace(decision, reason=f"{decision.reason}; the winner rank {news['rank']} tuned could not be "
                                            f"saved here: {error}")
    tuned = _decide(operator, spec, pass_, device, forced, can_run, cache, cache.generation())
    return replace(tuned, reason=f"{tuned.reason} (tuned at its first call by rank {news['rank']})")


@functools.lru_cache(maxsize=4096)
def _decide(operator: Operator, spec, pass_: str, device: torch.device, forced: str, can_run: tuple,
            cache: TuningCache, generation: int) -> Decision:
    """Memoized on everything the decision depends on; ``generation`` changes when the cache file does."""
    runnable, why_not = can_run
    if forced == "fallback":
        return Decision("fallback", "forced (use_backend or TRITONCONV_BACKEND=fallback)")
    unsupported = operator.triton_unsupported(spec)
    if unsupported and forced == "triton":
        raise BackendUnavailable(f"backend 'triton' was forced for {operator.name} ({spec.describe()}), "
                                 f"but our kernels cannot take it: {unsupported}")
    if unsupported:
        return Decision("fallback", f"our kernels cannot take it ({unsupported}): the fallback computes it")
    if forced == "triton" and not runnable:
        raise BackendUnavailable(f"backend 'triton' was forced for {operator.name} ({spec.describe()}), "
                                 f"but it cannot run here: {why_not}")
    entry, rejected = (cache.lookup_checked(operator.cache_key(spec, pass_, device), operator.kernels_of_pass[pass_])
                       if device.type == "cuda" else (None, None))
    tiles = _tiles(operator, spec, pass_, entry)
    if forced == "triton":
        return Decision("triton", "forced (use_backend or TRITONCONV_BACKEND=triton)"
                                  + (f"; {rejected}: default tiles" if rejected else ""), tiles)
    if not runnable:
        return Decision("fallback", why_not)
    if device.type != "cuda":
        return Decision("triton", "CPU tensors under TRITON_INTERPRET=1 run the Triton kernels", tiles)
    if rejected:
        return Decision("triton", f"{rejected}: Triton with default tiles", tiles, untuned=True)
    if entry is None:
        return Decision("triton", f"not tuned for this shape on {hardware.device_name_of(device)}: Triton "
                                  "with default tiles (run `python -m autotune` to measure)", tiles, untuned=True)
    timings = entry.get("timings_ms", {})
    pass_failed = pass_failure_key(pass_) in entry.get("failed", {})
    no_triton = "the pass failed at its tuned tiles" if pass_failed else "no working tile"
    measured = (f"measured triton {_ms(timings.get('triton'), no_triton)} vs fallback "
                f"{_ms(timings.get('fallback'), 'not measured')} on {entry.get('device', '?')}")
    if entry["winner"] == "fallback":
        return Decision("fallback", measured)
    return Decision("triton", measured, tiles)


def pass_failure_key(pass_: str) -> str:
    """The ``failed`` entry the tuner writes for a pass whose kernels each passed but whose whole pass, at
    their chosen tiles, did not (``tuner.tune_pass``)."""
    return f"{pass_} pass"


def _ms(value, missing: str) -> str:
    return missing if value is None else f"{value:.4g} ms"


def _tiles(operator: Operator, spec, pass_: str, entry: dict | None) -> dict:
    """The entry's tiles (``lookup_checked`` checked them) and the default tile for kernels it has none for."""
    stored = (entry or {}).get("tiles", {})
    return {kernel: GemmTile.from_dict(stored[kernel]) if kernel in stored else operator.default_tile(spec, kernel)
            for kernel in operator.kernels_of_pass[pass_]}
