"""Static performance audit for Hopper, without a GPU: ``python -m perf audit``.

Every kernel the launchers issue is recorded (``JITFunction.run`` replaced by a recorder), specialised
exactly as the JIT specialises it on a GPU (Triton's own binder: integers equal to 1 become constexpr,
integers divisible by 16 and 16-byte-aligned pointers get divisibility hints), compiled for sm_90a
with ptxas, and read back from its machine code (``perf.sass``). Per launch: registers, spills, shared
memory, resident warps per SM, tensor-core instructions, global loads and stores by width, 64-bit division
calls and instructions per tensor-core instruction (or per FFMA) in the hottest loop. Per layer call:
Triton launches and torch ops launched beside them, and host microseconds.

The same code serves the CI gates (``tests/compile_for_gpu.py``, ``tests/test_gpu_compile.py``).
Run it without TRITON_INTERPRET: the interpreter replaces the kernels being compiled.
"""

from __future__ import annotations

import contextlib
import functools
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import pandas as pd
import torch
import triton
from torch.utils._python_dispatch import TorchDispatchMode
from triton.backends.compiler import GPUTarget
from triton.runtime.jit import JITFunction, create_function_from_signature

from perf import bench, host, sass

TARGET = GPUTarget("cuda", 90, 32)
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "audit"
TARGET_NAME = "cuda sm_90a (H100/H200), warp 32"

# ---- the chip (H100 / H200 SXM, compute capability 9.0) --------------------------------------------
MULTIPROCESSORS = 132           # the launchers size split-K reductions from it
REGISTERS_PER_SM = 65536
REGISTER_UNIT_PER_WARP = 256    # registers are allocated per warp in units of 256
SHARED_PER_SM = 233472          # 228 KB
SHARED_PER_BLOCK = 232448       # 227 KB: the most one block may ask for
SHARED_RESERVED_PER_BLOCK = 1024  # the system's share of each resident block
WARPS_PER_SM = 64
BLOCKS_PER_SM = 32

# ---- the static targets the project tracks (issue 11) -----------------------------------------------
MAX_SPILL_INSTRUCTIONS = 0
MAX_INSTRUCTIONS_PER_TENSOR_CORE = 25
MAX_SCALAR_16BIT_LOADS = 4      # per kernel, bf16 channels_last (masks and tails may need a few)
MAX_DEPTHWISE_INSTRUCTIONS_PER_FFMA = 6
MAX_BACKWARD_LAUNCHES = 3       # Triton launches plus torch ops launched beside them, per backward
DEPTHWISE_KERNEL_MODULE = "tritonconv.ops.depthwise.kernels"


class NotCompilable(RuntimeError):
    """The process cannot compile our kernels for the GPU (e.g. TRITON_INTERPRET is set)."""


# ---- recording launches -------------------------------------------------------------------------------
@dataclass
class Launch:
    kernel: JITFunction
    args: tuple
    kwargs: dict
    grid: tuple


@contextlib.contextmanager
def recording(keep: bool = True) -> Iterator[list[Launch]]:
    """Replace launching by recording for the duration: yields the list the launches land in (``keep``
    False: they are dropped, for timing the host, where a growing list would bring the garbage
    collector into the figures)."""
    from tritonconv import env

    if env.triton_interpret():
        raise NotCompilable("TRITON_INTERPRET is set: the kernels are the interpreter's, not the JIT's; unset it")
    launches: list[Launch] = []
    original = JITFunction.run

    def record(self, *args, grid, warmup, **kwargs):
        if keep:
            launches.append(Launch(self, args, dict(kwargs), grid))

    JITFunction.run = record
    try:
        yield launches
    finally:
        JITFunction.run = original


@contextlib.contextmanager
def as_if_on_h100() -> Iterator[None]:
    """Launchers see the H100's multiprocessor count, and the dispatcher lets Triton run on CPU tensors
    (whose launches are being recorded, not run)."""
    from tritonconv import _replay, hardware, tiles

    saved = tiles.multiprocessor_count, hardware.triton_can_run
    tiles.multiprocessor_count = lambda device: MULTIPROCESSORS
    hardware.triton_can_run = lambda device, dtype: (True, "perf audit: launches are recorded, not run")
    _replay.clear()  # calls recorded on the real hardware must not replay here, nor these after
    try:
        yield
    finally:
        tiles.multiprocessor_count, hardware.triton_can_run = saved
        _replay.clear()


# ---- the JIT's specialisation ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Specialisation:
    signature: dict
    constexprs: dict
    attrs: dict
    options: object  # the backend's parsed options (CUDAOptions)
    key: tuple       # what JITFunction.run keys its kernel cache on, plus the kernel's identity


@functools.cache
def _backend():
    from triton.compiler.compiler import make_backend
    return make_backend(TARGET)


@functools.cache
def _binder(kernel: JITFunction):
    """The JIT's own argument binder for ``kernel`` on the sm_90 backend (it creates one per device)."""
    return create_function_from_signature(kernel.signature, kernel.params, _backend())


def _run_kwargs(launch: Launch) -> dict:
    """The launch's keyword arguments with the options ``JITFunction.run`` adds before binding them (triton
    3.6: debug, instrumentation_mode)."""
    from triton import knobs

    return {**launch.kwargs, "debug": launch.kwargs.get("debug", launch.kernel.debug) or knobs.runtime.debug,
            "instrumentation_mode": knobs.compilation.instrumentation_mode}


def specialise(launch: Launch) -> Specialisation:
    """What ``JITFunction.run`` computes for this launch on an sm_90 device, step for step (triton 3.6
    ``jit.py``: the debug and instrumentation options it adds, its binder, ``_pack_args``)."""
    kernel, kwargs = launch.kernel, _run_kwargs(launch)
    bound_args, specialization, options = _binder(kernel)(*launch.args, **kwargs)
    parsed, signature, constexprs, attrs = kernel._pack_args(_backend(), kwargs, bound_args, specialization, options)
    key = (kernel.fn.__module__, kernel.fn.__qualname__, kernel.cache_key, str(specialization), str(parsed))
    return Specialisation(signature, constexprs, attrs, parsed, key)


def binder_us(launches: list[Launch], rounds: int = 5, calls: int = 50) -> float:
    """CPU microseconds triton 3.6's ``JITFunction.run`` spends on these launches before the driver's:
    its argument binder and the kernel cache's key (``compute_cache_key``, its memo warm), best of
    ``rounds``. What a CUDA call adds to the host path that a recorded launch skips."""
    from triton.runtime.jit import compute_cache_key

    total = 0.0
    for launch in launches:
        binder, key_cache, kwargs = _binder(launch.kernel), {}, _run_kwargs(launch)
        best = float("inf")
        for _ in range(rounds):
            start = time.perf_counter()
            for _ in range(calls):
                _, specialization, options = binder(*launch.args, **kwargs)
                compute_cache_key(key_cache, specialization, options)
            best = min(best, (time.perf_counter() - start) / calls)
        total += best * 1e6
    return total


def describe_specialisation(launch: Launch, spec: Specialisation) -> dict:
    """Readable columns: the declared constexprs, the integers that became 1, those hinted divisible."""
    declared, ones, aligned = [], [], []
    for index, param in enumerate(launch.kernel.params):
        value = spec.constexprs.get((index,))
        if param.is_constexpr:
            shown = getattr(value, "name", value)
            declared.append(f"{param.name}={shown}")
        elif (index,) in spec.constexprs:
            ones.append(param.name)
        elif any(attr[0] == "tt.divisibility" for attr in spec.attrs.get((index,), [])):
            aligned.append(param.name)
    return {"constexprs": " ".join(declared), "specialised_to_1": " ".join(ones),
            "divisible_by_16": " ".join(aligned)}


# ---- compiling and reading one launch ------------------------------------------------------------------
@dataclass
class KernelReport:
    name: str
    num_warps: int
    num_stages: int
    compile_s: float
    error: str | None = None
    figures: dict = field(default_factory=dict)


class Compiler:
    """Compiles recorded launches for sm_90a, once per distinct specialisation (in-process cache)."""

    def __init__(self):
        self._reports: dict[tuple, KernelReport] = {}
        self.compiled = 0

    def report(self, launch: Launch) -> tuple[KernelReport, Specialisation]:
        spec = specialise(launch)
        if spec.key not in self._reports:
            self._reports[spec.key] = self._compile(launch, spec)
            self.compiled += 1
        return self._reports[spec.key], spec

    def _compile(self, launch: Launch, spec: Specialisation) -> KernelReport:
        from triton import knobs
        from triton.compiler import ASTSource

        name = launch.kernel.__name__
        options = spec.options
        started = time.perf_counter()
        try:
            compiled = triton.compile(ASTSource(launch.kernel, spec.signature, spec.constexprs, spec.attrs),
                                      target=TARGET, options=options.__dict__)
        except Exception as error:  # the compiler's own message is the report
            return KernelReport(name, options.num_warps, options.num_stages, time.perf_counter() - started,
                                error=_root_message(error))
        elapsed = time.perf_counter() - started
        cubin = compiled.asm["cubin"]
        listing = sass.parse(sass.disassemble(cubin, knobs.nvidia.nvdisasm.path), compiled.metadata.name)
        figures = sass.counts(listing)
        figures.update(sass.resource_usage(_cuobjdump_resources(cubin, knobs.nvidia.cuobjdump.path),
                                           compiled.metadata.name))
        figures["shared_bytes"] = compiled.metadata.shared
        figures["dots"] = _dot_count(compiled.asm["ttir"])
        figures.update(occupancy(figures["registers"], figures["shared_bytes"], options.num_warps))
        return KernelReport(name, options.num_warps, options.num_stages, elapsed, figures=figures)


def _root_message(error: Exception) -> str:
    cause = error
    while cause.__cause__ is not None:
        cause = cause.__cause__
    lines = str(cause).strip().splitlines() or [""]
    return f"{type(cause).__name__}: {lines[-1][:300]}"


def _cuobjdump_resources(cubin: bytes, cuobjdump: str) -> str:
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "kernel.cubin"
        path.write_bytes(cubin)
        return subprocess.run([cuobjdump, "-res-usage", str(path)], capture_output=True, text=True,
                              check=True).stdout


def _dot_count(ttir: str) -> int:
    """``tt.dot`` operations in the kernel's Triton IR: where a tensor-core instruction should be."""
    import re
    return len(re.findall(r"\btt\.dot\b(?!_)", ttir))


def occupancy(registers: int, shared: int, num_warps: int) -> dict:
    """Resident blocks and warps per SM from registers, shared memory and warps, with the H100's limits,
    and which of them binds."""
    per_warp = -(-max(registers, 1) * 32 // REGISTER_UNIT_PER_WARP) * REGISTER_UNIT_PER_WARP
    limits = {"registers": (REGISTERS_PER_SM // per_warp) // num_warps,
              "shared": SHARED_PER_SM // (shared + SHARED_RESERVED_PER_BLOCK) if shared <= SHARED_PER_BLOCK else 0,
              "warps": WARPS_PER_SM // num_warps, "blocks": BLOCKS_PER_SM}
    limiter = min(limits, key=limits.get)
    return {"blocks_per_sm": limits[limiter], "resident_warps": limits[limiter] * num_warps,
            "occupancy_limit": limiter}


# ---- what to compile: every launch of every kernel of a layer on a shape set --------------------------
def adapters() -> dict:
    """Every layer the audit knows: the registry's."""
    from tritonconv.ops.registry import ADAPTERS
    return dict(ADAPTERS)


@dataclass(frozen=True)
class Case:
    layer: str
    shape_set: str
    label: str
    spec: object


def resolve_layers(names: list[str]) -> list[str]:
    from perf import UsageError

    known = adapters()
    if "all" in names:
        return list(known)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise UsageError(f"--layer {' '.join(unknown)}: not a layer the audit knows; expected some of "
                         f"{(*known, 'all')}")
    return list(dict.fromkeys(names))


def select(layers: list[str], shape_sets: list[str] | None, *, batch: int, dtype: str, channels_last: bool,
           options: dict | None = None, first_only: bool = False) -> list[Case]:
    """The cases of several layers: each layer's first shape set, or those of ``shape_sets`` it has.
    ``options`` go to the layers whose ``specs_for`` takes them (``p``: HetConv)."""
    import inspect

    from perf import UsageError

    if batch < 1:
        raise UsageError(f"--batch {batch} must be a positive integer")
    selected = []
    for layer in layers:
        adapter = adapters()[layer]
        sets = [s for s in shape_sets if s in adapter.shape_sets] if shape_sets else None
        if sets == []:
            continue
        accepted = inspect.signature(adapter.specs_for).parameters
        mine = {k: v for k, v in (options or {}).items() if k in accepted}
        selected += cases(layer, sets, batch=batch, dtype=dtype, channels_last=channels_last, options=mine,
                          first_only=first_only)
    if not selected:
        known = sorted({s for layer in layers for s in adapters()[layer].shape_sets})
        raise UsageError(f"--shapes {' '.join(shape_sets or [])}: no shape set of {', '.join(layers)}; "
                         f"expected some of {known}")
    return selected


def cases(layer: str, shape_sets: list[str] | None, *, batch: int, dtype: str, channels_last: bool,
          options: dict | None = None, first_only: bool = False) -> list[Case]:
    """The specs of one layer to audit; ``shape_sets`` None means the layer's first (its headline
    network); ``first_only`` keeps the first spec of each set."""
    adapter = adapters()[layer]
    found = {}
    for shape_set in shape_sets or adapter.shape_sets[:1]:
        specs = adapter.specs_for(shape_set, batch=batch, dtype=dtype, channels_last=channels_last, **(options or {}))
        for label, _, spec in specs[:1] if first_only else specs:
            found.setdefault(spec, Case(layer, shape_set, label, spec))
    return list(found.values())


def kernel_passes(operator) -> list[tuple[str, str]]:
    """(pass, kernel) for every kernel the operator's passes launch, in order."""
    return [(pass_, kernel) for pass_, kernels in operator.kernels_of_pass.items() for kernel in kernels]


def launches_of(adapter, case: Case, kernel: str, tile) -> list[Launch]:
    """The launches one adapter kernel issues with ``tile`` on the case's spec (meta tensors: nothing is
    allocated; their addresses keep the views' offsets, so alignment is specialised as on a GPU)."""
    work = adapter.make_workload(case.spec, torch.device("meta"))
    with recording() as launches, as_if_on_h100():
        adapter.triton(kernel, work, tile)()
    return launches


def pass_launches_of(adapter, case: Case, pass_: str) -> list[Launch]:
    """The launches of the whole pass as a layer call runs it (``Adapter.triton_pass``) at the default
    tiles: where the pass launches something its kernels alone do not (depthwise's fused backward, whose
    weight gradient writes dz for the grad input), the audit compiles that too."""
    work = adapter.make_workload(case.spec, torch.device("meta"))
    tiles = {kernel: adapter.operator.default_tile(case.spec, kernel)
             for kernel in adapter.operator.kernels_of_pass[pass_]}
    with recording() as launches, as_if_on_h100():
        adapter.triton_pass(pass_, work, tiles)()
    return launches


def tiles_of(adapter, spec, kernel: str, all_tiles: bool) -> list:
    default = adapter.operator.default_tile(spec, kernel)
    if not all_tiles:
        return [default]
    return list(dict.fromkeys([default, *adapter.candidate_tiles(spec, kernel)]))


def audit_case(case: Case, compiler: Compiler, *, all_tiles: bool = False,
               kernels: tuple[str, ...] | None = None) -> list[dict]:
    """One row per (kernel, tile, launch) of the case: its specialisation and compiled figures."""
    adapter = adapters()[case.layer]
    rows, seen = [], set()

    def row(pass_, kernel, index, launch, tile_label, default_tile):
        report, spec = compiler.report(launch)
        seen.add(spec.key)
        return {"layer": case.layer, "shape_set": case.shape_set, "label": case.label,
                "shape": case.spec.describe(), "dtype": _short_dtype(case.spec.dtype),
                "channels_last": bool(case.spec.channels_last), "batch": case.spec.batch,
                "pass": pass_, "kernel": kernel, "launch": index, "triton_kernel": report.name,
                "tile": tile_label, "default_tile": default_tile,
                "num_warps": report.num_warps, "num_stages": report.num_stages,
                "grid": "x".join(str(g) for g in launch.grid) if isinstance(launch.grid, tuple) else "",
                "depthwise": launch.kernel.fn.__module__ == DEPTHWISE_KERNEL_MODULE,
                "status": "failed" if report.error else "ok", "error": report.error or "",
                "compile_s": round(report.compile_s, 3), **describe_specialisation(launch, spec), **report.figures}

    for pass_, kernel in kernel_passes(adapter.operator):
        if kernels is not None and kernel not in kernels:
            continue
        default = adapter.operator.default_tile(case.spec, kernel)
        for tile in tiles_of(adapter, case.spec, kernel, all_tiles):
            for index, launch in enumerate(launches_of(adapter, case, kernel, tile)):
                rows.append(row(pass_, kernel, index, launch, tile.label(), tile == default))
    if kernels is None:
        for pass_ in adapter.operator.kernels_of_pass:
            for index, launch in enumerate(pass_launches_of(adapter, case, pass_)):
                if specialise(launch).key not in seen:  # what only the whole pass launches
                    rows.append(row(pass_, f"{pass_} pass", index, launch, "default", True))
    return rows


def _short_dtype(dtype: str) -> str:
    return {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32", "float64": "fp64"}.get(dtype, dtype)


# ---- gates: the targets as predicates on one row -------------------------------------------------------
def _tensor_core_ok(row: dict) -> bool:
    return not row["dots"] or (row["hgmma"] > 0 and row["hmma"] == 0)


# gate -> (what it demands, the check on one compiled launch, whether it applies to the row)
GATES: dict[str, tuple[str, Callable[[dict], bool], Callable[[dict], bool]]] = {
    "compiles": ("compiles for sm_90a", lambda r: r["status"] == "ok", lambda r: True),
    "spills": ("no register spills (no LDL/STL)",
               lambda r: r["spill_stores"] + r["spill_loads"] <= MAX_SPILL_INSTRUCTIONS, lambda r: True),
    "hgmma": ("every tl.dot on HGMMA (no HMMA/mma.sync, no FMA fallback)", _tensor_core_ok, lambda r: True),
    "scalar16": (f"at most {MAX_SCALAR_16BIT_LOADS} scalar 8/16-bit global loads (bf16 channels_last)",
                 lambda r: r["ldg_8"] + r["ldg_16"] <= MAX_SCALAR_16BIT_LOADS,
                 lambda r: r["dtype"] in ("bf16", "fp16") and r["channels_last"]),
    "div64_loop": ("no 64-bit division or modulo inside a loop", lambda r: r["div64_in_loops"] == 0, lambda r: True),
    "shared": (f"shared memory within the H100's {SHARED_PER_BLOCK} bytes per block",
               lambda r: r["shared_bytes"] <= SHARED_PER_BLOCK, lambda r: True),
}
# Targets tracked in SUMMARY.md beyond the CI gates (not gated: they are the rewrites' goals).
TARGETS = {
    "instructions_per_tc": (f"at most {MAX_INSTRUCTIONS_PER_TENSOR_CORE} SASS instructions per tensor-core "
                            "instruction in the main loop",
                            lambda r: r["instructions_per_tensor_core"] is not None
                            and r["instructions_per_tensor_core"] <= MAX_INSTRUCTIONS_PER_TENSOR_CORE,
                            lambda r: bool(r["dots"])),
    "depthwise_ffma": (f"depthwise main loop at most {MAX_DEPTHWISE_INSTRUCTIONS_PER_FFMA} SASS instructions per FFMA",
                       lambda r: r["instructions_per_ffma"] is not None
                       and r["instructions_per_ffma"] <= MAX_DEPTHWISE_INSTRUCTIONS_PER_FFMA,
                       # kernels of the depthwise module that multiply-add (not the mask or the reduction)
                       lambda r: bool(r["depthwise"]) and not r["dots"] and bool(r["ffma"])),
}


def gate_failures(row: dict, gates: dict = GATES) -> list[str]:
    """Names of the gates (or targets) this compiled launch applies to and fails."""
    if row["status"] != "ok":
        return ["compiles"]
    return [name for name, (_, check, applies) in gates.items() if applies(row) and not check(row)]


# ---- the CI gates ------------------------------------------------------------------------------------------
# What each dtype is gated on: bf16 (the precision the targets are about) on everything, fp32 on what
# only it can break (its tiles need twice the shared memory).
GATE_DTYPES = {"bfloat16": tuple(GATES), "float32": ("compiles", "shared")}
GATE_BATCH = 128  # meta tensors: the batch costs nothing; 128 is the tuner's and the perf suite's


def gate_results(layer: str, compiler: Compiler | None = None) -> list[dict]:
    """The CI gates on every kernel's default tile, on the first conv of the layer's first shape set in
    channels_last: one entry per (dtype, kernel, launch) with the gates it fails and its figures."""
    compiler = compiler or Compiler()
    found = []
    for dtype, gates in GATE_DTYPES.items():
        case = cases(layer, None, batch=GATE_BATCH, dtype=dtype, channels_last=True, first_only=True)[0]
        for row in audit_case(case, compiler):
            failed = [g for g in gate_failures(row) if g in gates]
            found.append({"layer": layer, "kernel": row["kernel"], "launch": row["launch"], "dtype": row["dtype"],
                          "triton_kernel": row["triton_kernel"], "shape": row["shape"], "tile": row["tile"],
                          "failed": failed, "figures": gate_figures(row)})
    return found


def gate_figures(row: dict) -> str:
    """The numbers behind the gates, for a failure message."""
    if row["status"] != "ok":
        return row["error"]
    return (f"{row['registers']} regs, {row['spill_loads']}+{row['spill_stores']} LDL+STL, {row['shared_bytes']} B "
            f"shared, {row['dots']} dots on {row['tensor_core']} ({row['hgmma']} HGMMA, {row['hmma']} HMMA), "
            f"{row['ldg_8'] + row['ldg_16']} scalar 8/16-bit LDG, {row['div64_calls']} div64 calls "
            f"({row['div64_in_loops']} in loops)")


# ---- launches and host time per layer call ----------------------------------------------------------------
# Allocations launch nothing on a GPU; in-place and out= ops do even though they return an alias.
_ALLOCATIONS = {"empty", "empty_strided", "empty_like", "new_empty", "new_empty_strided", "new_empty_like"}


class TorchOpCounter(TorchDispatchMode):
    """Records the aten ops that would launch a GPU kernel: not views, not allocations, not ops that
    return their input unchanged (``.to`` of the same dtype, ``.contiguous`` of a contiguous tensor).
    Our custom ops are entered, so the ops inside their launch path are seen."""

    def __init__(self):
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.namespace == "tritonconv":
            with self:  # the custom op's own implementation, with this mode active inside it
                return func.redispatch(torch._C.DispatchKeySet(torch._C.DispatchKey.CPU), *args, **kwargs)
        out = func(*args, **kwargs)
        if func._schema.is_mutable or (func.overloadpacket.__name__ not in _ALLOCATIONS
                                       and not _aliases_an_input(out, args, kwargs)):
            self.ops.append(func.overloadpacket.__name__)
        return out


def _tensors(value) -> list:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensors(v)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _tensors(v)]
    return []


def _aliases_an_input(out, args, kwargs) -> bool:
    storages = {t.untyped_storage().data_ptr() for t in _tensors((args, kwargs)) if t.numel()}
    return any(t.numel() and t.untyped_storage().data_ptr() in storages for t in _tensors(out))


HOST_TIMING = host.RECORDED_TIMING.format(rounds=5, calls=20)


def measure_call(case: Case, *, rounds: int = 5, calls: int = 20) -> list[dict]:
    """Launches per pass of one training step of the layer's public op (forward with autograd, then its
    backward), the torch ops launched beside them, and host microseconds per pass (see HOST_TIMING)."""
    adapter = adapters()[case.layer]
    names, call = adapter.call_inputs, adapter.layer_call
    spec, tensors, work = host.call_workload(adapter, case.spec, names, torch.device("cpu"))
    wrt = [tensors[name] for name in names if tensors.get(name) is not None]
    with recording() as launches, as_if_on_h100(), host.flushing_denormals():
        counted = {}
        for pass_ in ("fwd", "bwd"):
            launches.clear()
            with TorchOpCounter() as counter:
                if pass_ == "fwd":
                    out = call(tensors, spec)
                else:
                    torch.autograd.grad(out, wrt, work.grad)
            counted[pass_] = ([launch.kernel.__name__ for launch in launches], counter.ops)
    with recording(keep=False), as_if_on_h100(), host.flushing_denormals():
        (fwd_us, _), (bwd_us, _) = host.pass_us(lambda: call(tensors, spec), wrt, work.grad, rounds, calls,
                                                torch.device("cpu"))
    rows = []
    for pass_, host_us in (("fwd", fwd_us), ("bwd", bwd_us)):
        kernels, ops = counted[pass_]
        _, bytes_ = bench.work_of(case.spec, pass_)
        rows.append({"layer": case.layer, "shape_set": case.shape_set, "label": case.label,
                     "shape": case.spec.describe(), "dtype": _short_dtype(case.spec.dtype),
                     "channels_last": bool(case.spec.channels_last), "pass": pass_,
                     "triton_launches": len(kernels), "torch_ops": len(ops), "launches": len(kernels) + len(ops),
                     "triton_kernels": " ".join(kernels), "torch_op_names": " ".join(ops),
                     "host_us": round(host_us, 1), "host_timing": HOST_TIMING, "bytes": bytes_,
                     "unfused_bytes": bench.unfused_bytes_of(case.spec, pass_)})
    return rows


# ---- the tables ----------------------------------------------------------------------------------------
_CASE_COLUMNS = {"layer": "string", "shape_set": "string", "label": "string", "shape": "string", "dtype": "string",
                 "channels_last": "boolean"}
_RUN_COLUMNS = {"triton": "string", "torch": "string", "commit": "string", "target": "string", "timestamp": "string"}
KERNEL_SCHEMA = {
    **_CASE_COLUMNS, "batch": "Int64", "pass": "string",
    "kernel": "string",          # the adapter's kernel name (what the tuner tunes)
    "launch": "Int64",           # which of the kernel's launches (hetconv's weight grad launches twice)
    "triton_kernel": "string", "tile": "string", "default_tile": "boolean", "num_warps": "Int64",
    "num_stages": "Int64", "grid": "string", "depthwise": "boolean", "status": "string", "error": "string",
    "gates_failed": "string",    # the GATES and TARGETS this launch fails, space-separated
    "registers": "Int64", "stack_bytes": "Int64", "local_bytes": "Int64",
    "spill_stores": "Int64", "spill_loads": "Int64", "spill_store_bytes": "Int64", "spill_load_bytes": "Int64",
    "shared_bytes": "Int64", "blocks_per_sm": "Int64", "resident_warps": "Int64", "occupancy_limit": "string",
    "dots": "Int64", "tensor_core": "string", "hgmma": "Int64", "hmma": "Int64", "ffma": "Int64",
    "ldg_8": "Int64", "ldg_16": "Int64", "ldg_32": "Int64", "ldg_64": "Int64", "ldg_128": "Int64",
    "stg_16": "Int64", "stg_128": "Int64",  # 8/16-bit and 128-bit global stores
    "ldgsts": "Int64", "ldgsts_128": "Int64", "utmaldg": "Int64", "div64_calls": "Int64", "div64_in_loops": "Int64",
    "sass_instructions": "Int64", "loops": "Int64", "hot_loop": "string", "hot_loop_instructions": "Int64",
    "hot_loop_tensor_core": "Int64", "hot_loop_ffma": "Int64", "instructions_per_tensor_core": "Float64",
    "instructions_per_ffma": "Float64", "work_loops": "string",
    "constexprs": "string", "specialised_to_1": "string", "divisible_by_16": "string", "compile_s": "Float64",
    **_RUN_COLUMNS,
}
CALL_SCHEMA = {
    **_CASE_COLUMNS, "pass": "string", "triton_launches": "Int64", "torch_ops": "Int64", "launches": "Int64",
    "triton_kernels": "string", "torch_op_names": "string", "host_us": "Float64", "host_timing": "string",
    "bytes": "Int64",            # the pass's compulsory traffic at the full shape (perf.bench.work_of)
    "unfused_bytes": "Int64",    # what the unfused formulation moves (perf.bench.unfused_bytes_of), if any
    **_RUN_COLUMNS,
}


def _tables():
    from perf import results
    return (results.Table(KERNEL_SCHEMA, ("layer", "shape", "dtype", "channels_last", "kernel", "launch", "tile")),
            results.Table(CALL_SCHEMA, ("layer", "shape", "dtype", "channels_last", "pass")))


def environment() -> dict:
    from perf import results
    return {"triton": triton.__version__, "torch": torch.__version__, "commit": results.git_commit(),
            "target": TARGET_NAME, "timestamp": results.utc_now()}


def run(selected: list[Case], *, all_tiles: bool = False, calls: bool = True,
        progress: Callable[[str], None] = print) -> tuple[list[dict], list[dict]]:
    """Audit every case: (kernel rows, call rows)."""
    compiler, shared = Compiler(), environment()
    kernel_rows, call_rows = [], []
    for number, case in enumerate(selected, start=1):
        started = time.perf_counter()
        rows = audit_case(case, compiler, all_tiles=all_tiles)
        for row in rows:
            row["gates_failed"] = " ".join(gate_failures(row, {**GATES, **TARGETS}))
            row.update(shared)
        kernel_rows += rows
        if calls:
            call_rows += [{**row, **shared} for row in measure_call(case)]
        progress(f"[{number}/{len(selected)}] {case.layer} {case.label} {case.spec.describe()}: {len(rows)} launches, "
                 f"{compiler.compiled} compiled so far, {time.perf_counter() - started:.1f} s")
    return kernel_rows, call_rows


def write(kernel_rows: list[dict], call_rows: list[dict], out_dir) -> list:
    """Merge the rows into ``out_dir``/kernels.csv and calls.csv (a re-audit of the same kernel, tile,
    shape and dtype replaces its row) and rewrite SUMMARY.md from them."""
    out_dir = Path(out_dir)
    kernels_table, calls_table = _tables()
    kernels = kernels_table.append(kernel_rows, out_dir / "kernels.csv")
    calls_csv = out_dir / "calls.csv"
    calls = calls_table.append(call_rows, calls_csv) if call_rows else calls_table.read(calls_csv)
    (out_dir / "SUMMARY.md").write_text(summary(kernels, calls))
    return [path for path in (out_dir / "kernels.csv", calls_csv, out_dir / "SUMMARY.md") if path.exists()]


# ---- SUMMARY.md ------------------------------------------------------------------------------------------
def _records(df) -> list[dict]:
    return df.astype(object).where(df.notna(), None).to_dict("records")


def _verdicts(rows: list[dict]) -> dict:
    """Target -> "met" / "NOT met" / "n/a" over a kernel's rows (NOT met if any row fails)."""
    verdicts = {}
    for name, (_, _, applies) in {**GATES, **TARGETS}.items():
        relevant = [r for r in rows if r["status"] != "ok" or applies(r)]
        failed = any(name in (r["gates_failed"] or "").split() for r in relevant)
        verdicts[name] = "n/a" if not relevant else "NOT met" if failed else "met"
    return verdicts


def _worst(rows: list[dict], value, pick=max, fmt="{}") -> str:
    """``pick`` over the rows of ``value`` (a column, or a function of a row), formatted; "-" if none."""
    values = [value(r) if callable(value) else r[value] for r in rows]
    values = [v for v in values if v is not None]
    return fmt.format(pick(values)) if values else "-"


# (heading, the worst over a kernel's compiled rows): what SUMMARY.md and the console table show.
FIGURES = (
    ("regs", lambda ok: _worst(ok, "registers")),
    ("spills (LDL+STL)", lambda ok: _worst(ok, lambda r: r["spill_loads"] + r["spill_stores"])),
    ("smem KB", lambda ok: _worst(ok, lambda r: r["shared_bytes"] / 1024, fmt="{:.1f}")),
    ("warps/SM", lambda ok: _worst(ok, "resident_warps", pick=min)),
    ("tensor core", lambda ok: "/".join(sorted({r["tensor_core"] for r in ok})) or "-"),
    ("LDG 8/16-bit", lambda ok: _worst(ok, lambda r: r["ldg_8"] + r["ldg_16"])),
    ("LDG.128 / LDGSTS.128", lambda ok: f"{_worst(ok, 'ldg_128', pick=min)} / {_worst(ok, 'ldgsts_128', pick=min)}"),
    ("STG 8/16-bit", lambda ok: _worst(ok, "stg_16")),
    ("div64 (in loops)", lambda ok: f"{_worst(ok, 'div64_calls')} ({_worst(ok, 'div64_in_loops')})"),
    ("instr/TC", lambda ok: _worst(ok, "instructions_per_tensor_core", fmt="{:.1f}")),
    ("instr/FFMA", lambda ok: _worst(ok, "instructions_per_ffma", fmt="{:.1f}")),
)


def _figure_cells(rows: list[dict]) -> list[str]:
    ok = [r for r in rows if r["status"] == "ok"]
    failed = len(rows) - len(ok)
    return [f"{len(rows)}" + (f", {failed} failed" if failed else ""), *(figure(ok) for _, figure in FIGURES)]


_SUMMARY_TARGETS = ("spills", "hgmma", "instructions_per_tc", "scalar16", "div64_loop", "depthwise_ffma", "shared")


def _latest_per_layer(rows: list[dict]) -> list[dict]:
    """The CSVs keep every commit's rows (history); the summary speaks of each layer's newest audit."""
    newest: dict = {}
    for row in rows:
        if row["layer"] not in newest or row["timestamp"] > newest[row["layer"]]["timestamp"]:
            newest[row["layer"]] = row
    return [r for r in rows if r["commit"] == newest[r["layer"]]["commit"]]


def summary(kernels, calls) -> str:
    """Markdown: per layer and kernel the worst figures over the audited shapes and tiles, and which
    targets each kernel meets; launches and host time per layer call."""
    krows, crows = _latest_per_layer(_records(kernels)), _latest_per_layer(_records(calls))
    commits = sorted({r["commit"] for r in krows})
    lines = [
        "# Static audit for Hopper (sm_90a), compiled on the CPU",
        "",
        f"Written by `python -m perf audit` from `kernels.csv` ({len(krows)} compiled launches) and `calls.csv`. "
        f"Commit(s) {', '.join(commits) or '-'}; triton {', '.join(sorted({r['triton'] for r in krows})) or '-'}; "
        f"target {TARGET_NAME}; audited {min((r['timestamp'] for r in krows), default='-')} to "
        f"{max((r['timestamp'] for r in krows), default='-')}.",
        "",
        "Each kernel is compiled as the launchers issue it, with the JIT's own specialisation (integers equal to 1 "
        "constexpr, divisibility-by-16 hints). Figures are per kernel the worst over the rows audited (shapes, "
        "tiles, launches): most registers and spills, least resident warps, most scalar 8/16-bit loads, most "
        "instructions per tensor-core instruction (per FFMA without tensor cores) in the hottest loop. These are "
        "proxies read from machine code: the GPU benchmark is the judge.",
        "",
        "Targets (met / NOT met per kernel; n/a where it does not apply):",
        "",
    ]
    for name in _SUMMARY_TARGETS:
        lines.append(f"- `{name}`: {({**GATES, **TARGETS})[name][0]}")
    lines.append(f"- `bwd_launches`: backward of a training step in at most {MAX_BACKWARD_LAUNCHES} launches "
                 "(Triton launches plus torch ops launched beside them)")
    lines.append("")
    header = "| " + " | ".join(["kernel", "rows", *(h for h, _ in FIGURES), *_SUMMARY_TARGETS]) + " |"
    for layer in dict.fromkeys(r["layer"] for r in krows):
        mine = [r for r in krows if r["layer"] == layer]
        shapes = len({r["shape"] for r in mine})
        dtypes = ", ".join(sorted({f"{r['dtype']} {'NHWC' if r['channels_last'] else 'NCHW'}" for r in mine}))
        lines += [f"## {layer}", "", f"{shapes} shapes ({dtypes}); {len(mine)} compiled launches.", "",
                  header, "|" + "---|" * (2 + len(FIGURES) + len(_SUMMARY_TARGETS))]
        for kernel in dict.fromkeys((r["kernel"], r["triton_kernel"]) for r in mine):
            rows = [r for r in mine if (r["kernel"], r["triton_kernel"]) == kernel]
            verdicts = _verdicts(rows)
            cells = [f"{kernel[0]} (`{kernel[1]}`)", *_figure_cells(rows), *(verdicts[n] for n in _SUMMARY_TARGETS)]
            lines.append("| " + " | ".join(cells) + " |")
        lines += ["", *_call_lines([r for r in crows if r["layer"] == layer]), ""]
    return "\n".join(lines) + "\n"


def _call_lines(rows: list[dict]) -> list[str]:
    if not rows:
        return ["(launches per call not measured)"]
    lines = ["| pass | Triton launches | torch ops beside them | launches | host us (see note) | MB moved, all shapes: "
             "ours / unfused | target |",
             "|---|---|---|---|---|---|---|"]
    for pass_ in ("fwd", "bwd"):
        mine = [r for r in rows if r["pass"] == pass_]
        if not mine:
            continue
        worst = max(mine, key=lambda r: r["launches"])
        target = ("met" if worst["launches"] <= MAX_BACKWARD_LAUNCHES else "NOT met") if pass_ == "bwd" else ""
        ops = f"{worst['torch_ops']} ({worst['torch_op_names']})" if worst["torch_ops"] else "0"
        lines.append(f"| {pass_} | {worst['triton_launches']} ({worst['triton_kernels']}) | {ops} | "
                     f"{worst['launches']} | {_worst(mine, 'host_us', fmt='{:.0f}')} | {_bytes_moved(mine)} | "
                     + (f"bwd_launches: {target}" if target else "") + " |")
    lines += ["", f"Host time: {rows[0]['host_timing']}"]
    return lines


def _bytes_moved(rows: list[dict]) -> str:
    """Compulsory MB summed over the rows, and the unfused formulation's where every row has it."""
    known = [r for r in rows if not pd.isna(r.get("bytes"))]
    if not known:
        return "-"
    ours = sum(r["bytes"] for r in known) / 1e6
    unfused = [r.get("unfused_bytes") for r in known]
    if any(pd.isna(u) for u in unfused):
        return f"{ours:.0f}"
    theirs = sum(unfused) / 1e6
    return f"{ours:.0f} / {theirs:.0f} ({ours / theirs:.2f}x)"


def console_table(kernel_rows: list[dict], call_rows: list[dict]) -> str:
    """This run's worst figures per layer and kernel, and its launches per call, for the terminal."""
    kernels = [["layer", "kernel", "rows", *(h for h, _ in FIGURES), "fails"]]
    for layer, kernel in dict.fromkeys((r["layer"], r["kernel"]) for r in kernel_rows):
        rows = [r for r in kernel_rows if (r["layer"], r["kernel"]) == (layer, kernel)]
        fails = sorted({g for r in rows for g in (r["gates_failed"] or "").split()})
        kernels.append([layer, kernel, *_figure_cells(rows), " ".join(fails)])
    lines = _aligned(kernels)
    if call_rows:
        calls = [["layer", "pass", "triton", "torch ops", "launches", "host us"]]
        for layer, pass_ in dict.fromkeys((r["layer"], r["pass"]) for r in call_rows):
            rows = [r for r in call_rows if (r["layer"], r["pass"]) == (layer, pass_)]
            worst = max(rows, key=lambda r: r["launches"])
            calls.append([layer, pass_, str(worst["triton_launches"]), str(worst["torch_ops"]),
                          str(worst["launches"]), _worst(rows, "host_us", fmt="{:.0f}")])
        lines += ["", *_aligned(calls), f"(host us: {HOST_TIMING})"]
    return "\n".join(lines)


def _aligned(table: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in table]
