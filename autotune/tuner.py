"""Per-shape tuning: time every candidate tile of every kernel of a pass and the fallback, keep the
winner in the persistent cache; or, without a GPU, check every candidate under the interpreter."""

from __future__ import annotations

import datetime
import warnings
from dataclasses import dataclass, field

import torch

from tritonconv import hardware
from tritonconv.harness import Harness, max_relative_error, tolerance
from tritonconv.tuning_cache import CacheWriteError, TuningCache


@dataclass
class PassResult:
    """The outcome of tuning one pass of one spec (a cache hit or a new measurement)."""

    pass_: str
    winner: str
    tiles: dict  # kernel -> tile dict
    triton_ms: float | None
    fallback_ms: float | None
    cache_hit: bool
    failed: dict = field(default_factory=dict)  # "kernel:tile" -> why it was skipped
    not_saved: str | None = None  # why a new measurement could not be written to the cache

    @property
    def speedup(self) -> float | None:
        if self.triton_ms and self.fallback_ms:
            return self.fallback_ms / self.triton_ms
        return None


def _describe_failure(error: BaseException) -> str:
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[-1] if lines else ''}"[:300]


def time_ms(fn) -> float:
    """Median milliseconds of ``fn`` with CUDA events, L2 flushed between runs."""
    import triton.testing
    return float(triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median"))


def check_tile(harness: Harness, kernel: str, work, tile, expected) -> str | None:
    """None if the tile compiles, runs and matches the float64 fallback; otherwise why not."""
    try:
        error = max_relative_error(harness.triton(kernel, work, tile)(), expected)
    except Exception as exc:  # compile errors, out of shared memory, launch failures: recorded, skipped
        return _describe_failure(exc)
    limit = tolerance(work.spec.torch_dtype)
    if error > limit:
        return f"wrong result: relative error {error:.3g} > {limit:.3g}"
    return None


def tune_pass(harness: Harness, spec, pass_: str, device: torch.device, cache: TuningCache, *,
              force: bool = False, max_tiles: int | None = None) -> PassResult:
    """Measure ``pass_`` of ``spec`` on the GPU and store the winner, unless the cache has it already.

    A malformed cached entry is measured again; a cache that cannot be written is reported (a warning
    and ``not_saved``) and the measurement still returned.
    """
    operator = harness.operator
    key = operator.cache_key(spec, pass_, device)
    entry = None if force else cache.lookup(key, operator.kernels_of_pass[pass_])
    if entry is not None:
        timings = entry.get("timings_ms", {})
        return PassResult(pass_, entry["winner"], entry.get("tiles", {}), timings.get("triton"),
                          timings.get("fallback"), cache_hit=True, failed=entry.get("failed", {}))

    work = harness.make_workload(spec, device)
    candidates_ms, failed, best = {}, {}, {}
    for kernel in operator.kernels_of_pass[pass_]:
        expected = harness.expected(kernel, work)
        for tile in harness.candidate_tiles(spec, kernel)[:max_tiles]:
            name = f"{kernel}:{tile.label()}"
            problem = check_tile(harness, kernel, work, tile, expected)
            if problem is None:
                try:
                    candidates_ms[name] = time_ms(harness.triton(kernel, work, tile))
                except Exception as exc:
                    problem = _describe_failure(exc)
            if problem is not None:
                failed[name] = problem
                continue
            if kernel not in best or candidates_ms[name] < best[kernel][1]:
                best[kernel] = (tile, candidates_ms[name])
        del expected
    fallback_ms = time_ms(harness.fallback(pass_, work))
    complete = all(kernel in best for kernel in operator.kernels_of_pass[pass_])
    triton_ms = sum(ms for _, ms in best.values()) if complete else None
    winner = "triton" if triton_ms is not None and triton_ms < fallback_ms else "fallback"
    tiles = {kernel: tile.to_dict() for kernel, (tile, _) in best.items()}
    not_saved = None
    try:
        cache.store(key, {
            "winner": winner, "tiles": tiles, "failed": failed,
            "timings_ms": {"triton": triton_ms, "fallback": fallback_ms, "candidates": candidates_ms},
            "device": hardware.device_name_of(device), **hardware.versions(),
            "spec": spec.describe(),
            "tuned_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        })
    except CacheWriteError as error:
        not_saved = str(error)
        warnings.warn(f"{error}; tuning results are not saved", RuntimeWarning, stacklevel=2)
    return PassResult(pass_, winner, tiles, triton_ms, fallback_ms, cache_hit=False, failed=failed,
                      not_saved=not_saved)


def validate_candidates(harness: Harness, spec, pass_: str, device: torch.device, *, max_tiles: int | None = None,
                        seen: set | None = None) -> dict:
    """Without a GPU: run every candidate tile of ``spec`` on a shrunk copy under the interpreter.

    Returns {"kernel:tile": problem} for the tiles that failed (empty when all are right). ``seen``
    skips (shrunk spec, kernel, tile) triples already checked for another shape.
    """
    small = harness.shrink(spec)
    work = harness.make_workload(small, device)
    failed = {}
    for kernel in harness.operator.kernels_of_pass[pass_]:
        expected = harness.expected(kernel, work)
        for tile in harness.candidate_tiles(spec, kernel)[:max_tiles]:
            marker = (small, kernel, tile)
            if seen is not None:
                if marker in seen:
                    continue
                seen.add(marker)
            problem = check_tile(harness, kernel, work, tile, expected)
            if problem is not None:
                failed[f"{kernel}:{tile.label()}"] = problem
    return failed

