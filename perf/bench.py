"""Side-by-side timing of every backend of a layer on the specs of a real network's shape set.

For each spec: fresh random inputs, the float64 expectation once, then per backend a closure that is
checked against it before it is timed. A backend whose outputs are wrong, or that raises, is recorded
as failed and not timed. Generic over ``tritonconv.ops.registry.ADAPTERS``.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable, Iterable

import torch

from perf import UsageError, results
from tritonconv import dispatch, env, hardware
from tritonconv.adapter import Workload, max_relative_error, tolerance
from tritonconv.ops.registry import ADAPTERS
from tritonconv.tuning_cache import default_cache

DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
# CLI pass name -> the dispatcher's passes it runs, in order.
PASSES = {"fwd": ("forward",), "bwd": ("backward",), "fwd+bwd": ("forward", "backward")}
# Each backward kernel (grad input: reads dY and W, writes dX; grad weights: reads dY and X, writes dW)
# does the forward's MACs and moves the forward's compulsory bytes, so a pass's work is a multiple of
# spec.cost() (bias terms aside).
PASS_WORK = {"fwd": 1, "bwd": 2, "fwd+bwd": 3}
BACKENDS = ("triton", "fallback", "dense", "compile")
QUANTILES = (0.2, 0.5, 0.8)
# specs_for arguments the suite sets itself; any other keyword is a layer option (--p ...).
_COMMON_ARGS = {"shape_set", "batch", "dtype", "channels_last"}
_NOTE_CHARS = 300  # a failure's message is kept short enough to read in a CSV cell


@dataclass(frozen=True)
class Case:
    layer: str
    shape_set: str
    label: str
    count: int
    spec: object


@dataclass(frozen=True)
class Check:
    ok: bool
    error: float | None  # max relative error against the float64 expectation, None if not compared
    note: str


# ---- what to run ------------------------------------------------------------------------------------
def resolve_layers(layer: str) -> list[str]:
    if layer == "all":
        return list(ADAPTERS)
    if layer not in ADAPTERS:
        raise UsageError(f"--layer {layer!r} is not a registered layer; expected one of {(*ADAPTERS, 'all')}")
    return [layer]


def resolve_dtype(dtype: str) -> str:
    """The short name (bf16, ...) of ``dtype``; long torch names are accepted too."""
    long_to_short = {v: k for k, v in DTYPES.items()}
    if dtype in DTYPES:
        return dtype
    if dtype in long_to_short:
        return long_to_short[dtype]
    raise UsageError(f"--dtype {dtype!r} is not supported; expected one of {tuple(DTYPES)}")


def resolve_pass(pass_: str) -> str:
    if pass_ not in PASSES:
        raise UsageError(f"--pass {pass_!r} is not a pass; expected one of {tuple(PASSES)}")
    return pass_


def resolve_backends(backends: Iterable[str]) -> list[str]:
    backends = list(dict.fromkeys(backends))
    for backend in backends:
        if backend not in BACKENDS:
            raise UsageError(f"--backends {backend!r} is not a backend; expected some of {BACKENDS}")
    return backends


def layer_options(layer: str) -> set[str] | None:
    """Keyword options the layer's specs_for takes beyond the common ones (None: it takes any)."""
    params = inspect.signature(ADAPTERS[layer].specs_for).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)} - _COMMON_ARGS


def cases(layer: str, shape_sets: list[str] | None, *, batch: int, dtype: str, channels_last: bool = False,
          options: dict | None = None) -> list[Case]:
    """Every distinct spec to measure.

    ``layer`` may be "all"; ``shape_sets`` None means each layer's own shape sets; ``options`` maps a
    layer option to the values to sweep (``{"p": [2, 4, 8]}``). A shape set or option that a layer does
    not know is skipped for that layer, and is an error when no chosen layer knows it."""
    if batch < 1:
        raise UsageError(f"--batch {batch} must be a positive integer")
    layers, short = resolve_layers(layer), resolve_dtype(dtype)
    options = {k: list(v) for k, v in (options or {}).items() if v is not None}
    _check_known(layers, shape_sets, options)
    found: dict[object, Case] = {}
    for name in layers:
        adapter = ADAPTERS[name]
        sets = [s for s in (shape_sets or adapter.shape_sets) if s in adapter.shape_sets]
        accepted = layer_options(name)
        mine = {k: v for k, v in options.items() if accepted is None or k in accepted}
        for combo in _sweep(mine):
            for shape_set in sets:
                try:
                    specs = adapter.specs_for(shape_set, batch=batch, dtype=DTYPES[short],
                                              channels_last=channels_last, **combo)
                except (ValueError, TypeError, ZeroDivisionError) as error:
                    flags = " ".join(f"{option_flag(k)} {v}" for k, v in combo.items())
                    raise UsageError(f"layer {name!r} rejects {flags or 'its defaults'} on --shapes "
                                     f"{shape_set}: {type(error).__name__}: {error}") from error
                for label, count, spec in specs:
                    # vgg16 holds vgg16_cifar's shapes: measure each spec once, under its first label.
                    found.setdefault((name, spec), Case(name, shape_set, label, count, spec))
    if not found:
        flags = " ".join(f"{option_flag(k)} {' '.join(map(str, v))}" for k, v in options.items())
        raise UsageError(f"no spec to run: --layer {layer} --shapes {' '.join(shape_sets or ['(defaults)'])} "
                         f"{flags}: the layers' specs_for keep none of those convolutions")
    return list(found.values())


def _check_known(layers: list[str], shape_sets: list[str] | None, options: dict) -> None:
    for shape_set in shape_sets or []:
        if not any(shape_set in ADAPTERS[name].shape_sets for name in layers):
            known = sorted({s for name in layers for s in ADAPTERS[name].shape_sets})
            raise UsageError(f"--shapes {shape_set!r} is not a shape set of {', '.join(layers)}; "
                             f"expected one of {known}")
    for option in options:
        if not any(layer_options(name) is None or option in layer_options(name) for name in layers):
            known = sorted({option_flag(o) for name in layers for o in layer_options(name) or ()})
            raise UsageError(f"{option_flag(option)} is not an option of {', '.join(layers)}; "
                             f"expected one of {known or 'no options'}")


def option_flag(option: str) -> str:
    """How the command line spells a layer option: --p has its own flag, the others go through --option."""
    return "--p" if option == "p" else f"--option {option}"


def _sweep(options: dict) -> list[dict]:
    combos = [{}]
    for name, values in options.items():
        combos = [{**c, name: v} for c in combos for v in values]
    return combos


# ---- the work a pass does ----------------------------------------------------------------------------
def work_of(spec, pass_: str) -> tuple[int, int]:
    """(FLOPs, compulsory bytes) of ``pass_`` on ``spec``, from ``spec.cost()``."""
    cost = spec.cost()
    return PASS_WORK[pass_] * cost.flops, PASS_WORK[pass_] * cost.bytes


def unfused_bytes_of(spec, pass_: str) -> int | None:
    """Bytes the unfused formulation of the layer moves for ``pass_`` (``spec.unfused_cost()``: it writes
    and re-reads the intermediates our kernels keep on chip), scaled as ``work_of``; None where the layer
    fuses nothing."""
    unfused = getattr(spec, "unfused_cost", None)
    cost = unfused() if unfused else None
    return PASS_WORK[pass_] * cost.bytes if cost else None


def dense_flops_of(spec, pass_: str) -> int | None:
    """FLOPs of the ordinary conv the layer replaces, where the spec can say (``dense_cost``)."""
    dense_cost = getattr(spec, "dense_cost", None)
    return PASS_WORK[pass_] * dense_cost().flops if dense_cost else None


# ---- closures ----------------------------------------------------------------------------------------
def _chain(fns: list[Callable[[], tuple]]) -> Callable[[], tuple]:
    """One closure running ``fns`` in order; fwd+bwd is timed as one call."""
    def run():
        outputs = []
        for fn in fns:
            outputs.extend(fn())
        return tuple(outputs)
    return run


def triton_closure(adapter, work: Workload, pass_: str, device: torch.device) -> tuple[Callable, str, bool]:
    """The layer's Triton passes (``Adapter.triton_pass``) with the tiles the dispatcher picks (tuned ones
    if cached).

    Returns (closure, tile labels, whether every pass had a tuning-cache entry)."""
    fns, labels, tuned = [], [], True
    for p in PASSES[pass_]:
        # forced="triton": the tuned tiles even where the cache says cuDNN wins this shape.
        decision = dispatch.decide(adapter.operator, work.spec, p, device, forced="triton")
        fns.append(adapter.triton_pass(p, work, decision.tiles))
        labels += [f"{kernel}={decision.tiles[kernel].label()}" for kernel in adapter.operator.kernels_of_pass[p]]
        if device.type != "cuda" or default_cache().lookup(adapter.operator.cache_key(work.spec, p, device)) is None:
            tuned = False
    return _chain(fns), " ".join(labels), tuned


def backend_closure(adapter, backend: str, work: Workload, pass_: str) -> Callable:
    """The closure a baseline backend times (fallback, dense, compile; triton: ``triton_closure``)."""
    if backend in ("fallback", "compile"):
        fn = _chain([adapter.fallback(p, work) for p in PASSES[pass_]])
        # Static shapes: each spec gets its own graph, as a user's fixed-shape model would.
        return torch.compile(fn, dynamic=False) if backend == "compile" else fn
    if backend == "dense":
        return _chain([adapter.dense(p, work) for p in PASSES[pass_]])
    raise UsageError(f"backend {backend!r} is not a baseline backend; expected one of fallback, dense, compile")


def expectations(adapter, work: Workload, pass_: str, backends: list[str]) -> dict:
    """Backend -> the float64 outputs it is checked against (dense: nothing, see ``check_finite``)."""
    if not {"triton", "fallback", "compile"} & set(backends):
        return {}
    expected = tuple(out for p in PASSES[pass_] for out in adapter.expected_pass(p, work))
    return {backend: expected for backend in ("triton", "fallback", "compile")}


# ---- verification ------------------------------------------------------------------------------------
def verify(actual: tuple, expected: tuple, dtype: torch.dtype) -> Check:
    """Whether ``actual`` matches the float64 ``expected`` within ``tolerance(dtype)``."""
    if len(actual) != len(expected):
        return Check(False, None, f"{len(actual)} outputs, expected {len(expected)}")
    for i, (a, e) in enumerate(zip(actual, expected)):
        if tuple(a.shape) != tuple(e.shape):
            return Check(False, None, f"output {i} has shape {tuple(a.shape)}, expected {tuple(e.shape)}")
    error = max_relative_error(actual, expected)
    limit = tolerance(dtype)
    if not error <= limit:  # NaN and inf fail too
        return Check(False, error, f"max relative error {error:.3g} > tolerance {limit:.3g} for {dtype}")
    return Check(True, error, f"max relative error {error:.3g} <= {limit:.3g}")


def check_finite(actual: tuple) -> Check:
    """The dense conv computes a different function (its own weights): only check it wrote numbers."""
    for i, a in enumerate(actual):
        if not torch.isfinite(a).all():
            return Check(False, None, f"output {i} has NaN or inf")
    return Check(True, None, "finite outputs only: the dense conv computes a different function")


def check_backend(backend: str, fn: Callable, work: Workload, expected: dict) -> Check:
    """Run ``fn`` once and check its outputs; ``expected`` is ``expectations(...)``."""
    actual = fn()
    if backend == "dense":
        return check_finite(actual)
    return verify(actual, expected[backend], work.spec.torch_dtype)


# ---- the run -----------------------------------------------------------------------------------------
def gpu_missing_reason() -> str | None:
    """Why timings cannot be taken here, or None when they can."""
    if not torch.cuda.is_available():
        return "torch.cuda.is_available() is False on this machine"
    if env.triton_interpret():
        return "TRITON_INTERPRET=1 is set: timings would measure Triton's CPU interpreter; unset it"
    return None


def environment(device: torch.device) -> dict:
    """The columns every row of one run shares: where, with what, at which commit."""
    return {"gpu": hardware.device_name_of(device), **hardware.versions(), "commit": results.git_commit(),
            "tf32": bool(torch.backends.cudnn.allow_tf32)}


def measure(cases: list[Case], *, dtype: str, pass_: str, backends: Iterable[str] = BACKENDS,
            device: torch.device, timer: Callable | None = None, progress: bool = True,
            sink: Callable[[list[dict]], None] | None = None) -> list[dict]:
    """Verify then time every backend on every case; one CSV row per (case, backend).

    ``timer(fn, quantiles=...)`` returns the quantiles in ms (``triton.testing.do_bench`` by default);
    ``sink`` receives each case's rows as soon as they are measured, so an interrupted run keeps them."""
    from tqdm import tqdm

    if timer is None:
        from triton.testing import do_bench as timer
    dtype, pass_, backends = resolve_dtype(dtype), resolve_pass(pass_), resolve_backends(backends)
    torch.backends.cudnn.benchmark = True  # cuDNN picks its best algorithm per shape, as a tuned baseline would
    shared = environment(device)
    rows = []
    with tqdm(total=len(cases) * len(backends), desc=f"perf {dtype} {pass_}", unit="bench",
              disable=not progress) as bar:
        for case in cases:
            adapter = ADAPTERS[case.layer]
            flops, bytes_ = work_of(case.spec, pass_)
            base = {"layer": case.layer, "shape": case.spec.describe(), "label": case.label,
                    "shape_set": case.shape_set, "count": case.count, "dtype": dtype, "pass": pass_,
                    "batch": case.spec.batch, "channels_last": case.spec.channels_last, "flops": flops,
                    "bytes": bytes_, "unfused_bytes": unfused_bytes_of(case.spec, pass_),
                    "dense_flops": dense_flops_of(case.spec, pass_), "tiles": None, "tuned": None,
                    **shared}
            try:
                work = adapter.make_workload(case.spec, device)
                expected = expectations(adapter, work, pass_, backends)
            except Exception as error:  # e.g. out of memory at a large batch: the other specs still run
                note = _short(f"inputs or float64 expectation: {type(error).__name__}: {error}")
                case_rows = [{**base, "backend": backend, **_FAILED, "max_rel_error": None, "note": note,
                              "timestamp": results.utc_now()} for backend in backends]
                bar.update(len(backends))
                _release(device)
                rows.extend(case_rows)
                if sink:
                    sink(case_rows)
                continue
            case_rows = []
            for backend in backends:
                bar.set_postfix_str(f"{case.layer} {case.label} {backend}")
                row = {**base, "backend": backend}
                row.update(_measure_backend(adapter, backend, work, pass_, expected, device, timer))
                row["timestamp"] = results.utc_now()
                case_rows.append(row)
                bar.update()
            del work, expected
            if "compile" in backends:
                torch._dynamo.reset()  # drop this spec's graphs: no recompile limit reached across specs
            _release(device)
            rows.extend(case_rows)
            if sink:
                sink(case_rows)
    return rows


def _measure_backend(adapter, backend: str, work: Workload, pass_: str, expected: dict, device: torch.device,
                     timer: Callable) -> dict:
    extra = {}  # the triton row's tiles, kept when it fails too
    try:
        if backend == "triton":
            fn, tiles, tuned = triton_closure(adapter, work, pass_, device)
            extra = {"tiles": tiles, "tuned": tuned}
        else:
            fn = backend_closure(adapter, backend, work, pass_)
        check = check_backend(backend, fn, work, expected)
        if not check.ok:
            return {**_FAILED, **extra, "max_rel_error": check.error, "note": check.note}
        ms = timer(fn, quantiles=list(QUANTILES))
    except Exception as error:  # a backend that cannot run this shape is a result, not a crash
        _release(device)
        return {**_FAILED, **extra, "max_rel_error": None, "note": _short(f"{type(error).__name__}: {error}")}
    return {"status": "ok", **extra, "max_rel_error": check.error, "note": check.note,
            "ms_p20": ms[0], "ms_p50": ms[1], "ms_p80": ms[2]}


_FAILED = {"status": "failed", "ms_p20": None, "ms_p50": None, "ms_p80": None}


def _release(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _NOTE_CHARS else text[:_NOTE_CHARS - 3] + "..."
