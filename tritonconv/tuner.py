"""Per-shape tuning: time every candidate tile of every kernel of a pass, then the pass at the chosen
tiles as a layer call runs it (where it has several kernels), and the fallback; keep the winner in the
persistent cache; or, without a GPU, check every candidate under the interpreter.

Winners are deterministic: a candidate within ``NOISE_BAND`` of the fastest is as good as the fastest,
so among those the fallback wins over the Triton kernels, and the smallest tile over larger ones;
re-tuning the same shape on the same GPU then picks the same winner although the clock is noisy.
"""

from __future__ import annotations

import datetime
import functools
import warnings
from dataclasses import dataclass, field, replace
from typing import Callable, NamedTuple

import pandas as pd
import torch
from tqdm import tqdm

from tritonconv import dispatch, distributed, env, hardware
from tritonconv.adapter import Adapter, max_relative_error, tolerance
from tritonconv.dispatch import PASSES
from tritonconv.tiles import GemmTile
from tritonconv.tuning_cache import CacheKey, CacheWriteError, TuningCache, default_cache


@dataclass
class PassResult:
    """The outcome of tuning one pass of one spec (a cache hit or a new measurement)."""

    pass_: str
    winner: str
    tiles: dict  # kernel -> tile dict
    triton_ms: float | None
    fallback_ms: float | None
    cache_hit: bool
    failed: dict = field(default_factory=dict)  # "kernel:tile" (or "<pass> pass") -> why it was skipped
    not_saved: str | None = None  # why a new measurement could not be written to the cache
    entry: dict | None = field(default=None, repr=False)  # what the cache holds (or would) for it

    @property
    def speedup(self) -> float | None:
        if self.triton_ms and self.fallback_ms:
            return self.fallback_ms / self.triton_ms
        return None


def _describe_failure(error: BaseException) -> str:
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[-1] if lines else ''}"[:300]


# Two timings whose medians differ by less than this fraction are a tie: run-to-run noise of
# do_bench on one GPU is 1-2 %, so 3 % keeps re-tuning from flipping between near-equal candidates.
NOISE_BAND = 0.03


class Timing(NamedTuple):
    """Milliseconds of one candidate: the 20th, 50th and 80th percentile of its runs."""

    p20: float
    p50: float
    p80: float


def time_ms(fn) -> Timing:
    """p20/p50/p80 milliseconds of ``fn`` with CUDA events, L2 flushed between runs (needs a GPU)."""
    import triton.testing
    p20, p50, p80 = triton.testing.do_bench(fn, warmup=25, rep=100, quantiles=[0.2, 0.5, 0.8])
    return Timing(float(p20), float(p50), float(p80))


def _measure(timer: Callable, fn) -> Timing:
    """The timer's answer as a Timing (a timer may return a single number: its spread is then 0)."""
    result = timer(fn)
    if isinstance(result, (int, float)):
        return Timing(float(result), float(result), float(result))
    return Timing(*(float(v) for v in result))


def within_noise(ms: float, best: float, band: float = NOISE_BAND) -> bool:
    """Whether ``ms`` is as good as ``best`` up to the noise band."""
    return ms <= best * (1 + band)


def tile_size_key(tile) -> tuple:
    """Order of preference among tied tiles: the smallest block first, then fewer warps and stages
    (a total order, so the choice never depends on the order the candidates were timed in)."""
    return (tile.block_rows * tile.block_cols * tile.block_reduce, tile.num_warps, tile.num_stages,
            tile.splits, tile.label())


def pick_tile(timed: list, band: float = NOISE_BAND):
    """(tile, ms) of the smallest tile among those within ``band`` of the fastest; ``timed``: [(tile, ms)]."""
    fastest = min(ms for _, ms in timed)
    return min(((tile, ms) for tile, ms in timed if within_noise(ms, fastest, band)),
               key=lambda pair: tile_size_key(pair[0]))


def pick_winner(triton_ms: float | None, fallback_ms: float, band: float = NOISE_BAND) -> str:
    """"triton" only when it beats the fallback by more than the noise band."""
    if triton_ms is None or within_noise(fallback_ms, triton_ms, band):
        return "fallback"
    return "triton"


def check_run(run: Callable[[], tuple], expected: tuple, dtype: torch.dtype) -> str | None:
    """None if ``run`` compiles, runs and matches the float64 ``expected``; otherwise why not."""
    try:
        error = max_relative_error(run(), expected)
    except Exception as exc:  # compile errors, out of shared memory, launch failures: recorded, skipped
        return _describe_failure(exc)
    limit = tolerance(dtype)
    if error > limit:
        return f"wrong result: relative error {error:.3g} > {limit:.3g}"
    return None


def check_tile(adapter: Adapter, kernel: str, work, tile, expected) -> str | None:
    """None if the tile compiles, runs and matches the float64 fallback; otherwise why not."""
    return check_run(adapter.triton(kernel, work, tile), expected, work.spec.torch_dtype)


def tune_pass(adapter: Adapter, spec, pass_: str, device: torch.device, cache: TuningCache, *,
              force: bool = False, max_tiles: int | None = None, timer: Callable | None = None) -> PassResult:
    """Measure ``pass_`` of ``spec`` on the GPU and store the winner, unless the cache has it already.

    Each kernel's candidates are checked against the float64 fallback and timed alone; the fastest of
    each (ties to the smallest) are then, where the pass has several kernels, checked and timed together
    as the layer runs them (``Adapter.triton_pass``: dwsep's depthwise kernels share one launch,
    depthwise's fused backward writes dz for its grad input), and that is the Triton time set against
    the fallback's. A pass that fails at those tiles is recorded (``dispatch.pass_failure_key``) and stored
    without tiles: the fallback wins.

    ``timer(fn)`` returns a ``Timing`` (or milliseconds) of the closure ``fn``; default ``time_ms``
    (a GPU clock). Each timing is stored with its p20/p80 spread.

    A malformed cached entry is measured again; a cache that cannot be written is reported (a warning
    and ``not_saved``) and the measurement still returned.
    """
    operator = adapter.operator
    key = operator.cache_key(spec, pass_, device)
    entry = None if force else cache.lookup(key, operator.kernels_of_pass[pass_])
    if entry is not None:
        timings = entry.get("timings_ms", {})
        return PassResult(pass_, entry["winner"], entry.get("tiles", {}), timings.get("triton"),
                          timings.get("fallback"), cache_hit=True, failed=entry.get("failed", {}), entry=entry)

    timer = timer or time_ms
    work = adapter.make_workload(spec, device)
    candidates_ms, spread_ms, failed, best = {}, {}, {}, {}
    for kernel in operator.kernels_of_pass[pass_]:
        expected = adapter.expected(kernel, work)
        timed = []
        for tile in adapter.candidate_tiles(spec, kernel)[:max_tiles]:
            name = f"{kernel}:{tile.label()}"
            problem = check_tile(adapter, kernel, work, tile, expected)
            if problem is None:
                try:
                    timing = _measure(timer, adapter.triton(kernel, work, tile))
                except Exception as exc:
                    problem = _describe_failure(exc)
            if problem is not None:
                failed[name] = problem
                continue
            candidates_ms[name], spread_ms[name] = timing.p50, [timing.p20, timing.p80]
            timed.append((tile, timing.p50))
        if timed:
            best[kernel] = pick_tile(timed)
        del expected
    fallback = _measure(timer, adapter.fallback(pass_, work))
    fallback_ms, spread_ms["fallback"] = fallback.p50, [fallback.p20, fallback.p80]
    kernels = operator.kernels_of_pass[pass_]
    triton_ms = None
    tiles = {kernel: tile.to_dict() for kernel, (tile, _) in best.items()}
    if all(kernel in best for kernel in kernels):
        if len(kernels) == 1:
            triton_ms = best[kernels[0]][1]
            spread_ms["triton"] = spread_ms[f"{kernels[0]}:{best[kernels[0]][0].label()}"]
        else:  # the pass as a layer call runs it: its kernels may share launches (dwsep's backward)
            chosen = {kernel: tile for kernel, (tile, _) in best.items()}
            run = adapter.triton_pass(pass_, work, chosen)
            problem = check_run(run, adapter.expected_pass(pass_, work), spec.torch_dtype)
            if problem is None:
                try:
                    timing = _measure(timer, run)
                    triton_ms, spread_ms["triton"] = timing.p50, [timing.p20, timing.p80]
                except Exception as exc:
                    problem = _describe_failure(exc)
            if problem is not None:  # stored without tiles: a forced Triton call takes the defaults
                failed[dispatch.pass_failure_key(pass_)] = f"{' '.join(t.label() for t in chosen.values())}: {problem}"
                tiles = {}
    winner = pick_winner(triton_ms, fallback_ms)
    not_saved = None
    entry = {
        "winner": winner, "tiles": tiles, "failed": failed,
        "timings_ms": {"triton": triton_ms, "fallback": fallback_ms, "candidates": candidates_ms,
                       "spread": spread_ms, "noise_band": NOISE_BAND},
        "device": hardware.device_name_of(device), **hardware.versions(),
        "spec": spec.describe(),
        "tuned_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    try:
        cache.store(key, entry)
    except CacheWriteError as error:
        not_saved = str(error)
        warnings.warn(f"{error}; tuning results are not saved", RuntimeWarning, stacklevel=2)
    return PassResult(pass_, winner, tiles, triton_ms, fallback_ms, cache_hit=False, failed=failed,
                      not_saved=not_saved, entry=entry)


def validate_candidates(adapter: Adapter, spec, pass_: str, device: torch.device, *, max_tiles: int | None = None,
                        seen: set | None = None) -> dict:
    """Without a GPU: run every candidate tile of ``spec`` on a shrunk copy under the interpreter.

    Returns {"kernel:tile": problem} for the tiles that failed (empty when all are right). ``seen``
    skips (shrunk spec, kernel, tile) triples already checked for another shape.
    """
    small = adapter.shrink(spec)
    work = adapter.make_workload(small, device)
    failed = {}
    for kernel in adapter.operator.kernels_of_pass[pass_]:
        expected = adapter.expected(kernel, work)
        for tile in adapter.candidate_tiles(spec, kernel)[:max_tiles]:
            marker = (small, kernel, tile)
            if seen is not None:
                if marker in seen:
                    continue
                seen.add(marker)
            problem = check_tile(adapter, kernel, work, tile, expected)
            if problem is not None:
                failed[f"{kernel}:{tile.label()}"] = problem
    return failed


def adapters_by_operator() -> dict:
    """Every registered adapter, by its operator's name (imported on first use: the registry imports
    every operator)."""
    from tritonconv.ops.registry import ADAPTERS
    return {adapter.operator.name: adapter for adapter in ADAPTERS.values()}


def kernels_of_key(key: CacheKey) -> tuple | None:
    """The kernels an entry under ``key`` may hold tiles for; None for an op or pass unknown here."""
    adapter = adapters_by_operator().get(key.op)
    return None if adapter is None else adapter.operator.kernels_of_pass.get(key.kernel)


def export_cache(path, cache: TuningCache | None = None) -> int:
    """Write the tuning cache's well-formed entries to ``path``; returns how many."""
    return (cache or default_cache()).export(path)


def import_cache(path, cache: TuningCache | None = None) -> int:
    """Merge a file ``export_cache`` wrote into the tuning cache, every entry checked as a lookup checks
    it (tiles for the kernels of its op's pass); CacheImportError, the cache unchanged, if one is bad."""
    return (cache or default_cache()).import_file(path, kernels_of=kernels_of_key)


# ---- tuning a model: every tritonconv call it makes ----------------------------------------------------
def collect_calls(model: torch.nn.Module, example_inputs, passes=("forward", "backward")) -> list:
    """Run ``model`` once on ``example_inputs`` with the fallback forced (and its backward when ``passes``
    has "backward"); return every ``dispatch.Call`` of a tritonconv op it made in those passes, each with
    the path of the innermost module running it (a backward: those of its forward). The model's buffers
    (batch-norm statistics) and gradients are left as they were."""
    unknown = set(passes) - set(PASSES)
    if unknown or not passes:
        raise ValueError(f"passes={passes!r}; expected some of {PASSES}")
    inputs = example_inputs if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
    if "backward" in passes:
        inputs = [x.detach().requires_grad_(True) if isinstance(x, torch.Tensor) and x.is_floating_point() else x
                  for x in inputs]
    stack: list[str] = []
    names = {module: name for name, module in model.named_modules()}

    def enter(module, args):
        stack.append(names.get(module, ""))

    def leave(module, args, output):
        stack.pop()

    handles = [hook for module in names for hook in (module.register_forward_pre_hook(enter),
                                                     module.register_forward_hook(leave))]
    buffers = {name: buffer.detach().clone() for name, buffer in model.named_buffers()}
    grads = {param: param.grad for param in model.parameters()}
    try:
        with dispatch.use_backend("fallback"), dispatch.collecting(lambda: stack[-1] if stack else None) as calls:
            output = model(*inputs)
            if "backward" in passes:
                tensors = [t for t in _tensors_of(output) if t.requires_grad]
                if tensors:
                    torch.autograd.backward([t.float().sum() for t in tensors])
    finally:
        for handle in handles:
            handle.remove()
        with torch.no_grad():
            for name, buffer in model.named_buffers():
                buffer.copy_(buffers[name])
        for param, grad in grads.items():
            param.grad = grad
    # A backward runs outside every module's forward: it is named after the forward of the same call.
    forward_where: dict = {}
    for call in calls:
        if call.pass_ == "forward" and call.where:
            forward_where.setdefault((call.operator, call.spec), {})[call.where] = None
    calls = [replace(call, where=", ".join(forward_where.get((call.operator, call.spec), ())) or None)
             if call.where is None else call for call in calls]
    return [call for call in calls if call.pass_ in passes]


def _tensors_of(output) -> list:
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, dict):
        output = list(output.values())
    if isinstance(output, (tuple, list)):
        return [t for item in output for t in _tensors_of(item)]
    return []


def _tiles_label(tiles: dict) -> str:
    return "+".join(f"{kernel}={GemmTile.from_dict(tile).label()}" for kernel, tile in tiles.items()) or "-"


def tune(model: torch.nn.Module, example_inputs, passes=("forward", "backward"), force: bool = False, *,
         cache: TuningCache | None = None, max_tiles: int | None = None, timer: Callable | None = None,
         progress: bool = True, across_ranks: bool = True) -> pd.DataFrame:
    """Tune every tritonconv call ``model`` makes on ``example_inputs`` and store the winners.

    The model runs once (``collect_calls``); each distinct (operator, shape as the cache keys it, pass)
    is tuned once with ``tune_pass`` (cache hits cost nothing unless ``force``). Without a GPU (and no
    ``timer``) nothing is timed or stored: every candidate tile is checked under Triton's interpreter on
    a shrunk copy of the shape, as ``python -m autotune`` does. Returns one row per distinct call: module
    paths, operator, spec, pass, winner, tiles, triton/fallback ms, speedup, cache (hit / new / not
    saved / checked) and failed tiles.

    Under torch.distributed every rank must call it (``distributed.share``): the distinct calls are
    split across the ranks with the same GPU kind, each measured (or checked) by one rank, and every
    rank stores the owner's entries, so all ranks return the same table and dispatch to the same winners.
    A model that fails to run on one rank raises on every rank. ``across_ranks=False``: no collective,
    this rank tunes all its calls alone (for a caller that runs it on one rank only).
    """
    cache = cache or default_cache()
    jobs: dict[CacheKey, list] = {}
    failed = None
    try:
        for call in collect_calls(model, example_inputs, passes):
            key = call.operator.cache_key(call.spec, call.pass_, call.device)
            jobs.setdefault(key, [call, []])[1].append(call.where or call.operator.name)
    except Exception as error:  # the other ranks must not wait for this one in the collective below
        jobs, failed = {}, error
    adapters, seen = adapters_by_operator(), set()

    def tune_call(call: dispatch.Call) -> tuple[dict, dict | None]:
        """One distinct call's columns of the table, and the cache entry behind them (None: nothing stored)."""
        operator, spec, pass_, device = call.operator, call.spec, call.pass_, call.device
        adapter = adapters.get(operator.name)
        unsupported = operator.triton_unsupported(spec)
        if adapter is None or unsupported:
            return {"winner": "fallback",
                    "cache": f"not tuned: {unsupported or 'no tuning adapter for ' + operator.name}"}, None
        if timer is not None or (device.type == "cuda" and not env.triton_interpret()):
            result = tune_pass(adapter, spec, pass_, device, cache, force=force, max_tiles=max_tiles, timer=timer)
            return {"winner": result.winner, "tiles": _tiles_label(result.tiles), "speedup": result.speedup,
                    "triton ms": result.triton_ms, "fallback ms": result.fallback_ms,
                    "cache": "hit" if result.cache_hit else "not saved" if result.not_saved else "new",
                    "failed tiles": len(result.failed)}, result.entry
        failed = validate_candidates(adapter, spec, pass_, torch.device("cpu"), max_tiles=max_tiles, seen=seen)
        return {"cache": "checked (no GPU: nothing timed or stored)", "failed tiles": len(failed),
                "failures": failed}, None

    results = share_tuning({key: functools.partial(tune_call, call) for key, (call, _) in jobs.items()}, cache,
                           entry_of=lambda result: result[1],
                           progress=lambda keys: tqdm(keys, desc="tuning tritonconv layers", unit="pass",
                                                      disable=not progress),
                           collective=across_ranks, failed=failed)
    rows = []
    for key, (call, where) in jobs.items():
        modules = dict.fromkeys(module for names in where for module in names.split(", "))
        rows.append({"module": ", ".join(modules), "operator": call.operator.name, "spec": call.spec.describe(),
                     "pass": call.pass_, "winner": None, "tiles": "-", "triton ms": None, "fallback ms": None,
                     "speedup": None, "cache": None, "failed tiles": 0, **results[key][0]})
    return pd.DataFrame(rows)


def share_tuning(work: dict, cache: TuningCache, entry_of: Callable = lambda result: result.entry,
                 progress: Callable = iter, *, collective: bool = True, failed: BaseException | None = None) -> dict:
    """Run ``work`` ({CacheKey: thunk}) split across the ranks (``distributed.share``; without a process
    group, all of it here) and return every result by key; then store in ``cache`` the entries
    (``entry_of(result)``, None for none) that other ranks' results carry and this rank's cache answers
    differently: the owner's result is authoritative, so every rank ends with the same winners."""
    ran_here = set()

    def run(key, thunk):
        ran_here.add(key)
        return thunk()
    shared = distributed.share({str(key): functools.partial(run, key, thunk) for key, thunk in work.items()},
                               progress, collective=collective, failed=failed)
    results = {key: shared[str(key)] for key in work}
    others = {key: entry_of(result) for key, result in results.items() if key not in ran_here}
    differing = {key: entry for key, entry in others.items() if entry is not None and cache.lookup(key) != entry}
    if differing:
        try:
            cache.store_all(differing)
        except CacheWriteError as error:
            warnings.warn(f"{error}; the winners other ranks tuned are not saved here (this rank's calls of those "
                          "shapes run as its cache says)", RuntimeWarning, stacklevel=2)
    return results
