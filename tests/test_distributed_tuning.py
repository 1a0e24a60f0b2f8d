"""Tuning under torch.distributed (gloo, 2 and 4 processes on the CPU): the distinct calls of a model
are measured once across the ranks, every rank ends with the same winners and the same table, a second
tune() measures nothing, and first-call tuning has one rank tune while the others run the fallback.

The GPU clock is replaced by one that sleeps ``SLEEP_S`` per measurement and the candidates' check
under the interpreter by a pass (test_autotune.py tests it), so the tuning time is the clock's and the
split shows in the wall time; decide() is asked about CUDA calls, which reads only the device's type
and name (no GPU is touched), as in test_first_call_tuning.py.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

SLEEP_S = 0.25
# What N ranks lose to each other besides the split: the scheduler on a few loaded cores and the shared
# cache file's lock around each fsync'd write (seen: 0.7 s with four ranks on two cores at a load of 7).
CONTENTION_S = 1.0
TIMEOUT = datetime.timedelta(seconds=120)  # a hung collective fails the test instead of the suite

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                       reason="torch.distributed with gloo is not available"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _join(rank: int, world: int, port: int) -> None:
    os.environ["TRITON_INTERPRET"] = "1"  # before tritonconv is imported, as in conftest
    torch.set_num_threads(1)  # N processes on a few cores: no thread pool per process fighting the others
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=TIMEOUT)


def _model():
    """Eight distinct (operator, shape, pass): three HetConv2d shapes (one used twice) and a depthwise
    layer, forward and backward each."""
    import tritonconv
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(8, 16, 3, padding=1), torch.nn.ReLU(),
                                tritonconv.DepthwiseConv2d(16, 3), torch.nn.Conv2d(16, 16, 3, padding=1),
                                torch.nn.Conv2d(16, 16, 3, padding=1), torch.nn.Conv2d(16, 8, 3, padding=1))
    tritonconv.convert(model, tritonconv.HetConv2d, p=4)
    return model, torch.randn(2, 8, 6, 6)


class SleepingClock:
    """The stand-in GPU clock: every measurement sleeps ``sleep_s`` and takes 1 ms (so the fallback wins)."""

    def __init__(self, sleep_s: float):
        self.sleep_s, self.calls = sleep_s, 0

    def __call__(self, fn):
        self.calls += 1
        time.sleep(self.sleep_s)
        return 1.0


def _tune_on_rank(rank: int, world: int, port: int, folder: str, results) -> None:
    _join(rank, world, port)
    from tritonconv import dispatch, distributed, tuner
    from tritonconv.tuning_cache import TuningCache
    try:
        measured, tune_pass = [], tuner.tune_pass

        def recording(adapter, spec, pass_, device, cache, **options):
            result = tune_pass(adapter, spec, pass_, device, cache, **options)
            if not result.cache_hit:
                measured.append(f"{spec.describe()} {pass_}")
            return result
        tuner.tune_pass = recording
        tuner.check_tile = lambda *args: None
        model, x = _model()
        # Warm-up, as any process pays once: the operators' imports, torch's and the references' first calls.
        tuner.tune(model, x, cache=TuningCache(Path(folder) / f"warm-up{rank}.json"), timer=SleepingClock(0),
                   max_tiles=1, progress=False)

        def run(cache, clock):
            measured.clear()
            clock.calls = 0
            dist.barrier()  # timed from when every rank is ready, not from this rank's own start
            start = time.perf_counter()
            table = tuner.tune(model, x, cache=cache, timer=clock, max_tiles=1, progress=False)
            return {"measured": list(measured), "timer calls": clock.calls, "wall s": time.perf_counter() - start,
                    "table": table.to_dict("records")}

        shared = TuningCache(Path(folder) / "shared.json")
        first, second = run(shared, SleepingClock(SLEEP_S)), run(shared, SleepingClock(SLEEP_S))

        # Private caches; rank 1's starts with a different but valid entry for two calls: the first of
        # the sorted keys (rank 0 measures it) and the second (rank 1 owns it: its entry is kept).
        calls = {call.operator.cache_key(call.spec, call.pass_, call.device): call
                 for call in tuner.collect_calls(model, x)}
        keys = sorted(calls, key=str)
        own = TuningCache(Path(folder) / f"rank{rank}.json")
        if rank == 1:
            own.store_all({key: {**shared.lookup(key), "winner": "triton"} for key in keys[:2]})
        dist.barrier()
        private = run(own, SleepingClock(0))
        cuda = torch.device("cuda")
        winners = {str(key): str(dispatch.decide(call.operator, call.spec, call.pass_, cuda, cache=own))
                   for key, call in calls.items()}

        def fails_on_rank_1():
            if distributed.rank() == 1:
                raise RuntimeError("out of memory")
            return 0
        try:
            distributed.share({str(r): fails_on_rank_1 for r in range(world)})
            failure = None
        except distributed.DistributedTuningError as error:
            failure = str(error)
        results[rank] = {"first": first, "second": second, "private": private, "winners": winners,
                         "keys": [str(key) for key in keys], "failure": failure}
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("world", [2, 4])
def test_the_ranks_split_the_measurements_and_agree(tmp_path, world):
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_tune_on_rank, args=(world, _free_port(), str(tmp_path), results), nprocs=world, join=True)
        ranks = [results[rank] for rank in range(world)]
    keys = ranks[0]["keys"]
    assert len(keys) == 8

    # (a) every distinct call measured exactly once across the ranks, each rank a 1/N share
    measured = [item for rank in ranks for item in rank["first"]["measured"]]
    assert len(measured) == len(set(measured)) == len(keys)
    assert all(len(rank["first"]["measured"]) == len(keys) // world for rank in ranks)
    clock_s = [rank["first"]["timer calls"] * SLEEP_S for rank in ranks]
    one_process_s = sum(clock_s)  # what a single process would spend measuring: each call once
    assert max(clock_s) <= one_process_s / world * 1.5
    walls = [rank["first"]["wall s"] for rank in ranks]
    print(f"world {world}: tune() wall {[f'{w:.2f}' for w in walls]} s; measuring alone takes one process "
          f"{one_process_s:.2f} s, each rank here {[f'{s:.2f}' for s in clock_s]} s; without measuring tune() takes "
          f"{[round(rank['private']['wall s'], 2) for rank in ranks]} s")
    # The wall time beyond what tune() costs without measuring (the same run with a clock that does not
    # sleep, on empty caches) falls by N.
    fixed_s = max(rank["private"]["wall s"] for rank in ranks)
    assert max(walls) < one_process_s / world * 1.5 + fixed_s + CONTENTION_S

    # (b) the same table on every rank, measured or read from the cache; (c) the second run pays nothing
    assert all(rank["first"]["table"] == ranks[0]["first"]["table"] for rank in ranks)
    assert {row["cache"] for row in ranks[0]["first"]["table"]} == {"new"}
    for rank in ranks:
        assert rank["second"]["measured"] == [] and rank["second"]["timer calls"] == 0
        assert {row["cache"] for row in rank["second"]["table"]} == {"hit"}
        assert [row["winner"] for row in rank["second"]["table"]] == [row["winner"] for row in
                                                                       ranks[0]["first"]["table"]]

    # (b) private caches, rank 1's with different entries: the owner's result wins everywhere
    assert all(rank["private"]["table"] == ranks[0]["private"]["table"] for rank in ranks)
    assert all(rank["winners"] == ranks[0]["winners"] for rank in ranks)
    winners = ranks[0]["winners"]
    assert winners[keys[0]].startswith("fallback")  # rank 0 measured it: rank 1's entry was replaced
    assert winners[keys[1]].startswith("triton")  # rank 1 owns it: its cached entry is what all use
    assert "measured" in winners[keys[0]] and "measured" in winners[keys[1]]

    # a rank that fails its share makes every rank raise instead of hanging
    assert all("rank 1: RuntimeError: out of memory" in rank["failure"] for rank in ranks)


def _cli_then_first_call_on_rank(rank: int, ports: tuple, folder: str, results) -> None:
    """``python -m autotune`` as torchrun starts it (the process group from the environment), then
    first-call tuning in a group of this test's own."""
    os.environ.update(TRITON_INTERPRET="1", WORLD_SIZE="2", RANK=str(rank), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(ports[0]))
    import contextlib
    import io

    from autotune import cli
    checked, validate_candidates = [], cli.validate_candidates

    def recording(adapter, spec, pass_, *args, **options):
        checked.append(spec.describe())
        return validate_candidates(adapter, spec, pass_, *args, **options)
    cli.validate_candidates = recording
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        status = cli.main(["--layer", "hetconv", "--shapes", str(Path(folder) / "shapes.json"), "--dtype", "fp32",
                           "--batch", "1", "--pass", "fwd", "--max-tiles", "1"])
    results[f"cli {rank}"] = {"status": status, "checked": checked, "printed": printed.getvalue(),
                              "group left": not dist.is_initialized()}
    _first_call_on_rank(rank, ports[1], folder, results)


def _first_call_on_rank(rank: int, port: int, folder: str, results) -> None:
    _join(rank, 2, port)
    import tritonconv
    from tritonconv import dispatch, tuner
    from tritonconv.ops.hetconv import OPERATOR, HetConvSpec
    from tritonconv.ops.hetconv.adapter import ADAPTER
    from tritonconv.tuning_cache import TuningCache
    try:
        spec, cuda = HetConvSpec(2, 8, 8, 6, 5, 3, 1, 2, True, "float32"), torch.device("cuda")
        store = dist.distributed_c10d._get_default_store()
        tuned = []

        def tune_on_cpu(operator, spec, pass_, device, cache):
            """The tile takes 1 ms, the fallback 5: Triton wins. Held until rank 1 has run the fallback."""
            tuned.append(pass_)
            store.set("test/rank 0 tunes", "1")
            store.wait(["test/rank 1 ran the fallback"])
            times = iter([1.0, 5.0])
            return tuner.tune_pass(ADAPTER, spec, pass_, torch.device("cpu"), cache, max_tiles=1,
                                   timer=lambda fn: next(times)).entry
        dispatch._tune_first_call = tune_on_cpu
        tritonconv.set_tuning("first-call")
        cache = TuningCache(Path(folder) / f"rank{rank}.json")  # no shared file: only the store carries it
        decisions = []
        if rank == 0:
            decisions.append(dispatch.decide(OPERATOR, spec, "forward", cuda, cache=cache))
        else:
            store.wait(["test/rank 0 tunes"])
            decisions.append(dispatch.decide(OPERATOR, spec, "forward", cuda, cache=cache))
            store.set("test/rank 1 ran the fallback", "1")
            deadline = time.monotonic() + 60
            while "another rank is tuning" in decisions[-1].reason and time.monotonic() < deadline:
                time.sleep(0.01)
                decisions.append(dispatch.decide(OPERATOR, spec, "forward", cuda, cache=cache))
        decisions.append(dispatch.decide(OPERATOR, spec, "forward", cuda, cache=cache))
        results[rank] = {"tuned": tuned,
                         "decisions": [(d.backend, {k: t.label() for k, t in d.tiles.items()}, d.reason)
                                       for d in decisions],
                         "cached": cache.lookup(OPERATOR.cache_key(spec, "forward", cuda)) is not None}
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """What each of two ranks saw running the command line, then first-call tuning (one spawn for both)."""
    folder = tmp_path_factory.mktemp("two-ranks")
    (folder / "shapes.json").write_text(json.dumps(
        [{"in_channels": 8, "out_channels": 8 * (i + 1), "height": 6, "width": 6, "name": f"conv{i}"}
         for i in range(4)]))
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_cli_then_first_call_on_rank, args=((_free_port(), _free_port()), str(folder), results), nprocs=2,
                 join=True)
        return dict(results)


def test_under_torchrun_the_cli_splits_the_shapes_and_rank_0_prints(two_ranks):
    ranks = [two_ranks["cli 0"], two_ranks["cli 1"]]
    assert all(rank["status"] == 0 and rank["group left"] for rank in ranks)
    checked = ranks[0]["checked"] + ranks[1]["checked"]
    assert len(checked) == len(set(checked)) == 4 and len(ranks[0]["checked"]) == 2
    assert "all candidate tiles match the reference" in ranks[0]["printed"] and ranks[1]["printed"] == ""
    assert all(f"conv{i}" in ranks[0]["printed"] for i in range(4))


def test_first_call_one_rank_tunes_the_other_runs_the_fallback_until_it_arrives(two_ranks):
    tuner, waiter = two_ranks[0], two_ranks[1]
    assert tuner["tuned"] == ["forward"] and waiter["tuned"] == []  # measured once, by the claimant
    backend, _, reason = waiter["decisions"][0]
    assert backend == "fallback" and "another rank is tuning it" in reason
    assert all(backend == "fallback" for backend, _, _ in waiter["decisions"][:-2])
    # then both ranks run the same tiles, and rank 1's own cache holds rank 0's winner
    assert tuner["decisions"][-1][:2] == waiter["decisions"][-1][:2] and tuner["decisions"][-1][0] == "triton"
    assert "by rank 0" in waiter["decisions"][-2][2] and "tuned at its first call" in tuner["decisions"][0][2]
    assert tuner["cached"] and waiter["cached"]


def _broken_model_on_rank_1(rank: int, port: int, folder: str, results) -> None:
    _join(rank, 2, port)
    os.environ["TRITONCONV_CACHE_DIR"] = str(Path(folder) / f"cache{rank}")
    try:
        import tritonconv
        from tritonconv.distributed import DistributedTuningError

        model, x = _model()
        if rank == 1:
            x = torch.randn(2, 5, 6, 6)  # the wrong channel count: this rank's model cannot run
        try:
            tritonconv.tune(model, x, passes=("forward",), progress=False)
            results[rank] = "returned"
        except DistributedTuningError as error:
            results[rank] = f"raised: {error}"
        if rank == 0:  # alone, without a collective (the other rank does not call it)
            table = tritonconv.tune(model, x, passes=("forward",), progress=False, across_ranks=False)
            results["alone"] = len(table)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_a_model_failing_on_one_rank_raises_on_every_rank_and_a_rank_can_tune_alone(tmp_path):
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_broken_model_on_rank_1, args=(_free_port(), str(tmp_path), results), nprocs=2, join=True)
        results = dict(results)
    assert results[0].startswith("raised") and results[1].startswith("raised"), results
    assert "rank 1" in results[0] and "channels" in results[0], results[0]
    assert results["alone"] > 0
