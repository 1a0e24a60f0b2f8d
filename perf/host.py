"""Host cost of one layer call, ``python -m perf host``: the Python between a user's call of our
functional op and its kernels' launches, next to a plain ``F.conv2d`` of the same shape.

On a CUDA GPU the launches are real: the loop of calls is timed without synchronising (launches are
asynchronous, and the shrunk shapes keep each kernel far shorter than its call's host path), so the
time is what the host spends per call, Triton's launcher and the driver included; the GPU time of the
same loop (CUDA events) is recorded beside it, to show the GPU did not set the pace. Without a GPU the
Triton launches are replaced by a recorder that only appends (``perf.audit.recording``), so the time
is our Python and torch's dispatch only, and the plain conv, which computes on the CPU, is an upper
bound of its host cost; ``binder_us`` then gives the part of the launches' own cost that comes before
the driver's (Triton's argument binder and kernel-cache key, timed on the recorded launches).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable, Iterator

import torch

DEFAULT_CSV = Path(__file__).resolve().parent / "results" / "host.csv"

RECORDED_TIMING = ("CPU tensors of the adapter's small shape, one thread, denormals flushed; Triton launches "
                   "replaced by a recorder that drops them; best of {rounds} rounds of {calls} calls; bwd: "
                   "autograd.grad alone, on one forward's graph (retain_graph), against aten.convolution_backward "
                   "called directly for the plain conv (no autograd engine: it favours the plain conv). Excludes "
                   "the launches' own host cost (Triton's launcher, the CUDA driver) and the tuning-cache lookup "
                   "a CUDA call makes; body_us: the same calls with replays off (paired rounds); binder_us: the "
                   "part of that launcher cost before the driver (Triton's "
                   "argument binder and kernel-cache key, on the pass's recorded launches).")
STAND_IN_TIMING = ("CPU tensors of the adapter's small shape, one thread, denormals flushed; every launch takes the "
                   "CUDA path (a replay's direct call, else the launcher's) into a compiled kernel whose launch does "
                   "nothing; best of {rounds} rounds of {calls} calls; bwd: autograd.grad alone, on one forward's "
                   "graph (retain_graph), against aten.convolution_backward called directly. The GPU path's "
                   "Python without the driver's launch, the tuning cache's generation check or the CUDA device "
                   "query a CUDA call makes; body_us: the same calls with replays off (paired rounds).")
CUDA_TIMING = ("CUDA tensors of the adapter's small shape, real launches; wall time of {calls} calls without "
               "synchronising, best of {rounds} rounds; bwd: autograd.grad alone, on one forward's graph "
               "(retain_graph), against aten.convolution_backward called directly; body_us: the same calls "
               "with replays off (paired rounds); gpu_us: the GPU time of the same calls (CUDA events).")


def call_workload(adapter, spec, names, device: torch.device):
    """(small spec, inputs, output gradient) of the call: the adapter's ``shrink`` of the spec, of its
    dtype and layout (4-D parameters too, in channels_last, as ``model.to(memory_format=...)`` leaves
    them, then in the layout the layer lays them out in again: the adapter's ``parameter_layouts``), the
    differentiated tensors requiring grad. Small, so that on the CPU the side ops cost
    microseconds and on a GPU the kernels are shorter than the host path: the host path is what is timed."""
    small = replace(adapter.shrink(spec), dtype=spec.dtype)
    work = adapter.make_workload(small, device)
    tensors = dict(work.tensors)
    for name in names:
        if tensors.get(name) is not None:
            tensor = tensors[name].detach()
            if spec.channels_last and tensor.dim() == 4:
                tensor = tensor.contiguous(memory_format=torch.channels_last)
            tensor = adapter.parameter_layouts.get(name, lambda t: t)(tensor)
            tensors[name] = tensor.requires_grad_()
    return small, tensors, work


@contextlib.contextmanager
def flushing_denormals() -> Iterator[None]:
    """Buffers the recorded kernels never write hold garbage; denormals in it make the CPU's side ops
    (partial sums) a hundred times slower than on clean data. Flush them for the measurement, on one
    thread (the flag is per thread; a GPU's host path is one thread too)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)
        torch.set_num_threads(threads)


def best_us(fn: Callable[[], object], rounds: int, calls: int, device: torch.device = torch.device("cpu"), *,
            body: bool = False) -> tuple:
    """(host microseconds per call, GPU microseconds per call or None): the best of ``rounds`` loops of
    ``calls`` calls. On CUDA the loop is not synchronised inside, only between rounds. ``body``: a third
    figure, the host microseconds with replays off (every call runs its operators' bodies: ``_replay``),
    each round paired with a replayed one so that both see the same machine."""
    fn()  # first call: imports, caches, compilation
    best, gpu, unreplayed = float("inf"), None, float("inf")
    for _ in range(rounds):
        elapsed, elapsed_gpu = _round_us(fn, calls, device)
        if elapsed < best:
            best, gpu = elapsed, elapsed_gpu
        if body:
            with replays_off():
                unreplayed = min(unreplayed, _round_us(fn, calls, device)[0])
    return (best, gpu, unreplayed) if body else (best, gpu)


def _round_us(fn: Callable[[], object], calls: int, device: torch.device) -> tuple:
    """(host us, GPU us or None) per call of one loop of ``calls`` calls."""
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
    started = time.perf_counter()
    for _ in range(calls):
        fn()
    elapsed = time.perf_counter() - started
    if cuda:
        stop.record()
        torch.cuda.synchronize(device)
    return elapsed * 1e6 / calls, start.elapsed_time(stop) * 1e3 / calls if cuda else None


@contextlib.contextmanager
def replays_off() -> Iterator[None]:
    """Every call runs its operators' bodies (as TRITONCONV_REPLAY=0 does from the start)."""
    from tritonconv import _replay

    saved = _replay._ENABLED
    _replay._ENABLED = False
    try:
        yield
    finally:
        _replay._ENABLED = saved


def pass_us(forward: Callable, wrt: list, grad, rounds: int, calls: int, device: torch.device, *,
            body: bool = False) -> tuple:
    """(``best_us`` of ``forward()``, the same of its backward): the backward timed alone, as
    ``torch.autograd.grad`` on one forward's graph kept (retain_graph), never as a difference of two
    noisy timings. autograd.grad, not .backward(): no AccumulateGrad into .grad, which in a network the
    input never has and parameters (their .grad set to None by zero_grad) take without a copy."""
    fwd = best_us(forward, rounds, calls, device, body=body)
    output = forward()
    return fwd, best_us(lambda: torch.autograd.grad(output, wrt, grad, retain_graph=True), rounds, calls, device,
                        body=body)


@contextlib.contextmanager
def stand_in_launches() -> Iterator[None]:
    """Every launch of a CPU tensor takes the CUDA path (``_launcher``'s direct call, a replay's addresses)
    into a compiled kernel that does nothing: the host Python of the GPU path, measured without one."""
    from triton.runtime.jit import JITFunction

    from tritonconv import _launcher, _replay

    class Compiled:
        function = packed_metadata = 0

        def launch_metadata(self, grid, stream, *values):
            return None

        def run(self, *args):
            pass

    class Driver:
        class active:
            get_current_device = staticmethod(lambda: 0)
            get_current_stream = staticmethod(lambda device: 0)

    compiled = Compiled()
    saved = JITFunction.run, _launcher._direct, _launcher.driver, _replay.driver
    JITFunction.run = lambda self, *args, grid, warmup, **kwargs: compiled
    _launcher._direct = lambda kernel, tensors: type(kernel) is JITFunction
    _launcher.driver = _replay.driver = Driver
    _launcher.clear()
    try:
        yield
    finally:
        JITFunction.run, _launcher._direct, _launcher.driver, _replay.driver = saved
        _launcher.clear()
        _replay.clear()


def measure(case, device: torch.device, *, rounds: int = 5, calls: int = 20, stand_in: bool = False) -> list[dict]:
    """Host microseconds per pass of one training step of the layer's public op (fwd, bwd) and of an
    inference call (``infer``: torch.no_grad), and of the plain conv; ``stand_in``: on the CPU, through
    ``stand_in_launches`` instead of the recorder."""
    from perf.audit import adapters, as_if_on_h100, recording

    adapter = adapters()[case.layer]
    names, call = adapter.call_inputs, adapter.layer_call
    spec, tensors, work = call_workload(adapter, case.spec, names, device)
    wrt = [tensors[name] for name in names if tensors.get(name) is not None]

    cuda = device.type == "cuda"
    with contextlib.ExitStack() as stack:
        if not cuda:
            stack.enter_context(stand_in_launches() if stand_in else recording(keep=False))
            stack.enter_context(as_if_on_h100())
            stack.enter_context(flushing_denormals())
        (fwd, fwd_gpu, fwd_body), (bwd, bwd_gpu, bwd_body) = pass_us(lambda: call(tensors, spec), wrt, work.grad,
                                                                     rounds, calls, device, body=True)
        dense_forward = adapter.dense("forward", work)
        dense_fwd, _ = best_us(dense_forward, rounds, calls, device)
        dense_bwd, _ = best_us(adapter.dense("backward", work), rounds, calls, device)
        with torch.no_grad():
            infer, infer_gpu, infer_body = best_us(lambda: call(tensors, spec), rounds, calls, device, body=True)
            dense_infer, _ = best_us(dense_forward, rounds, calls, device)
    binder = {} if cuda else recorded_binder_us(lambda: call(tensors, spec), wrt, work.grad)
    timing = (CUDA_TIMING if cuda else STAND_IN_TIMING if stand_in else RECORDED_TIMING).format(rounds=rounds,
                                                                                               calls=calls)
    launches = "cuda" if cuda else "stand-in" if stand_in else "recorded"
    rows = []
    for pass_, ours, body, dense, gpu in (("fwd", fwd, fwd_body, dense_fwd, fwd_gpu),
                                          ("bwd", bwd, bwd_body, dense_bwd, bwd_gpu),
                                          ("infer", infer, infer_body, dense_infer, infer_gpu)):
        rows.append({"layer": case.layer, "shape_set": case.shape_set, "label": case.label,
                     "shape": spec.describe(), "dtype": spec.dtype, "channels_last": bool(spec.channels_last),
                     "pass": pass_, "host_us": round(ours, 1), "body_us": round(body, 1), "dense_us": round(dense, 1),
                     "gpu_us": None if gpu is None else round(gpu, 1), "launches": launches,
                     "binder_us": round(binder[pass_], 1) if pass_ in binder else None, "timing": timing})
    return rows


def recorded_binder_us(forward: Callable, wrt: list, grad) -> dict:
    """Per pass (fwd, bwd, infer), the CPU microseconds Triton's binder and cache key take on the pass's
    recorded launches (``perf.audit.binder_us``): the part of a CUDA call's launch cost before the driver."""
    from perf.audit import as_if_on_h100, binder_us, recording

    with recording() as launches, as_if_on_h100(), flushing_denormals():
        output = forward()
        forward_launches = list(launches)
        launches.clear()
        torch.autograd.grad(output, wrt, grad)
        backward_launches = list(launches)
        launches.clear()
        with torch.no_grad():
            forward()
        inference_launches = list(launches)
    return {"fwd": binder_us(forward_launches), "bwd": binder_us(backward_launches),
            "infer": binder_us(inference_launches)}


SCHEMA = {"layer": "string", "shape_set": "string", "label": "string", "shape": "string", "dtype": "string",
          "channels_last": "boolean", "pass": "string", "host_us": "Float64", "body_us": "Float64",
          "dense_us": "Float64",
          "gpu_us": "Float64", "launches": "string", "binder_us": "Float64", "timing": "string", "device": "string",
          "torch": "string",
          "triton": "string", "commit": "string", "timestamp": "string"}
KEY = ("layer", "shape", "dtype", "channels_last", "pass", "device", "launches")


def run(selected: list, device: torch.device, *, rounds: int = 5, calls: int = 20,
        stand_in: bool = False) -> list[dict]:
    """Measure every case; each row with the device, versions and commit."""
    import triton

    from perf import results
    from tritonconv import hardware

    shared = {"device": hardware.device_name_of(device) if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "triton": triton.__version__, "commit": results.git_commit(),
              "timestamp": results.utc_now()}
    return [{**row, **shared} for case in selected
            for row in measure(case, device, rounds=rounds, calls=calls, stand_in=stand_in)]


def write(rows: list[dict], path: Path = DEFAULT_CSV):
    from perf import results
    return results.Table(SCHEMA, KEY).append(rows, path)


def table(rows: list[dict]) -> str:
    lines = [f"{'layer':10s} {'shape':44s} {'pass':4s} {'ours us':>8s} {'body us':>8s} {'F.conv2d us':>11s} "
             f"{'ratio':>6s} {'gpu us':>7s} {'binder us':>9s}"]
    for row in rows:
        ratio = row["host_us"] / row["dense_us"] if row["dense_us"] > 0 else float("nan")
        gpu = "-" if row["gpu_us"] is None else f"{row['gpu_us']:.1f}"
        binder = "-" if row.get("binder_us") is None else f"{row['binder_us']:.1f}"
        lines.append(f"{row['layer']:10s} {row['shape'][:44]:44s} {row['pass']:4s} {row['host_us']:8.1f} "
                     f"{row['body_us']:8.1f} {row['dense_us']:11.1f} {ratio:6.2f} {gpu:>7s} {binder:>9s}")
    return "\n".join(lines)
