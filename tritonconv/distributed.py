"""Tuning under torch.distributed: every rank agrees on the winners, and no shape is measured twice.

Everything here is a no-op unless a default process group is initialised with more than one rank;
torch.distributed is imported only when asked (any backend: the object collectives and the store work
over gloo, NCCL and MPI alike; with NCCL each rank's CUDA device must be set, as its object collectives
need).

``tune()`` and ``python -m autotune`` (``share``): the ranks gather the names of their work items (a
cache key each, and the key names the GPU, so only ranks with the same GPU kind share an item); each
item goes to one of the ranks that hold it, round-robin over the sorted names; each rank runs its
share, and every rank receives every result. The owner's result is authoritative: the tuner stores it
into every rank's cache, so ranks agree even if their cache files did not.

First-call tuning (``claim`` / ``publish`` / ``arrived``): a collective inside a forward pass would hang
as soon as two ranks call their layers in different orders or numbers, so none is used. The first rank
to reach an untuned shape claims it through the process group's key-value store (an atomic ``add``),
tunes it and publishes the cache entry under the same key; the other ranks run the fallback (the same
math, no tile of its own) until a non-blocking check, at most every ``POLL_S`` per shape, finds the
entry. They then store it and run the same tiles. This is "rank 0 decides" without assuming rank 0
reaches every shape first (or at all), and a rank of another GPU kind claims its own key.
"""

from __future__ import annotations

import json
import time
from typing import Callable, Iterable, TypeVar

T = TypeVar("T")

# Non-claiming ranks look for a published winner at most this often per shape: a store round trip
# costs ~0.1 ms, a forward step tens of ms, so this keeps polling far below 1 % of a step.
POLL_S = 0.05
_STORE_PREFIX = "tritonconv/first-call/"


class DistributedTuningError(RuntimeError):
    """A rank failed its share of the tuning; every rank raises this instead of hanging."""


def _group():
    """torch.distributed when a default process group of more than one rank is up, else None."""
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return dist
    return None


def rank() -> int:
    dist = _group()
    return dist.get_rank() if dist else 0


def share(work: dict[str, Callable[[], T]], progress: Callable[[Iterable], Iterable] = iter, *,
          collective: bool = True, failed: BaseException | None = None) -> dict[str, T]:
    """Run each of ``work``'s thunks on exactly one rank and return every result on every rank.

    ``work`` maps a name (the same on every rank for the same item) to the thunk that computes it; the
    ranks may hold different items. An item goes to the holders of its name round-robin by its index
    in the sorted union, so the split is the same whichever rank computes it. ``progress`` wraps this
    rank's share (a progress bar). Every rank of the default group must call it: it is a collective.
    Without a process group, or with ``collective=False`` (a caller that tunes on one rank only), every
    thunk runs here. ``failed``: this rank could not even build its work; the error is raised on every
    rank (here chained to it) instead of leaving the others waiting in the gather.
    """
    dist = _group() if collective else None
    if dist is None:
        if failed is not None:
            raise failed
        return {name: work[name]() for name in progress(list(work))}
    held_by = [None] * dist.get_world_size()
    me = dist.get_rank()
    dist.all_gather_object(held_by, (sorted(work), f"rank {me}: {type(failed).__name__}: {failed}" if failed else None))
    not_built = [why for _, why in held_by if why]
    if not_built:
        message = "tuning failed on " + "; ".join(not_built)
        if failed is not None:
            raise DistributedTuningError(message) from failed
        raise DistributedTuningError(message)
    holders: dict[str, list[int]] = {}
    for holder, (names, _) in enumerate(held_by):
        for name in names:
            holders.setdefault(name, []).append(holder)
    mine = [name for index, name in enumerate(sorted(holders))
            if holders[name][index % len(holders[name])] == me]
    results, failure = {}, None
    try:
        for name in progress(mine):
            results[name] = work[name]()
    except Exception as error:  # the others must not wait forever in the gather below
        failure = f"rank {me}: {type(error).__name__}: {error}"
        raised = error
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, (results, failure))
    failures = [why for _, why in gathered if why]
    if failures:
        message = "tuning failed on " + "; ".join(failures)
        if failure:
            raise DistributedTuningError(message) from raised
        raise DistributedTuningError(message)
    everything = {name: result for results_of_rank, _ in gathered for name, result in results_of_rank.items()}
    return {name: everything[name] for name in work}


# ---- first-call tuning: no collectives, the process group's store -----------------------------------
def _store():
    dist = _group()
    return dist.distributed_c10d._get_default_store() if dist else None


def claim(key: str) -> bool:
    """Whether this rank tunes ``key`` at its first call: True without a process group, else only for
    the first rank to ask."""
    store = _store()
    return store is None or store.add(_STORE_PREFIX + "claim/" + key, 1) == 1


def publish(key: str, entry: dict | None, failure: str | None = None) -> None:
    """The claimant's outcome for ``key``: the cache entry it stored, or why there is none."""
    store = _store()
    if store is not None:
        store.set(_STORE_PREFIX + "done/" + key,
                  json.dumps({"rank": rank(), "entry": entry, "failure": failure}))


_last_poll: dict[str, float] = {}


def arrived(key: str) -> dict | None:
    """What the claimant of ``key`` published ({"rank", "entry", "failure"}), or None while it tunes
    (or when it was looked for less than ``POLL_S`` ago): a non-blocking check."""
    store = _store()
    if store is None:
        return None
    now = time.monotonic()
    if now - _last_poll.get(key, -POLL_S) < POLL_S:
        return None
    _last_poll[key] = now
    name = _STORE_PREFIX + "done/" + key
    if not store.check([name]):
        return None
    _last_poll.pop(key, None)
    return json.loads(store.get(name))
