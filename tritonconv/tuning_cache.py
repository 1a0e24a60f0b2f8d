"""The persistent tuning cache: one JSON file of measured winners, shared by every process.

Reads take a snapshot (re-read when the file changes; the dispatcher's check, ``generation``, looks at
the file at most every ``STAMP_INTERVAL_S``); writes re-read under a file lock, merge and
replace the file atomically, so two processes tuning at once lose nothing and a reader never sees a
half-written file. A cache that cannot be read (a folder in its place, no permission, not UTF-8, not
JSON, a foreign format) is reported once per version of the file and read as empty, never a crash; a
store sets a corrupt file aside as ``*.corrupt`` and rebuilds it, and one that cannot write raises
``CacheWriteError`` with the file left as it was. Each entry is checked (``entry_problem``) the first
time it is looked up in a snapshot: a malformed one is reported once and answered as missing.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from filelock import FileLock

from tritonconv import env
from tritonconv.tiles import tile_dict_problem

FORMAT_VERSION = 1
FILE_NAME = "tuning.json"
WINNERS = ("triton", "fallback")


class CacheWriteError(OSError):
    """The tuning cache could not be written (no folder, no permission, disk full); its file is unchanged."""


def source_hash(*paths: Path) -> str:
    """Short hash of kernel source files: editing a kernel invalidates its measurements."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(Path(path).read_bytes())
    return digest.hexdigest()[:16]


class CacheImportError(ValueError):
    """A file given to ``TuningCache.import_file`` is not a tuning cache this tritonconv can use; the
    cache was not changed."""


@dataclass(frozen=True)
class CacheKey:
    op: str
    kernel: str  # "forward" / "backward" (backend choice) or a kernel name (tile choice)
    shape: str  # the spec's tuning_key: batch bucketed
    device: str
    torch: str  # cuDNN, the fallback's engine, changes with it
    triton: str
    source: str

    def __str__(self) -> str:
        return "|".join((self.op, self.kernel, self.shape, self.device, self.torch, self.triton, self.source))

    @classmethod
    def parse(cls, name: str) -> "CacheKey":
        """The key ``str(key)`` wrote; ValueError for anything else."""
        parts = name.split("|") if isinstance(name, str) else []
        if len(parts) != 7 or not all(parts):
            raise ValueError(f"{name!r} is not a key op|pass|shape|device|torch|triton|source")
        return cls(*parts)


# How long generation() trusts its last look at the file (see there).
STAMP_INTERVAL_S = 0.1


@functools.lru_cache(maxsize=8)
def _file_in(folder: Path) -> Path:
    """The cache file in ``folder`` (memoized: a CUDA call asks for the path to check the file's stamp)."""
    return folder / FILE_NAME


class TuningCache:
    def __init__(self, path: Path | str | None = None):
        self._explicit_path = Path(path) if path is not None else None
        self._snapshot: dict[str, dict] = {}
        self._snapshot_stamp = None
        self._problem: str | None = None  # why the whole file was ignored
        self._checked: dict[tuple, tuple] = {}  # (key, kernels) -> lookup_checked's answer, per snapshot
        self._generation = 0  # bumped whenever the snapshot is re-read
        self._stamped = None  # (path, when) of generation()'s last stamp check; None: check at the next call
        self._mutex = threading.Lock()

    @property
    def path(self) -> Path:
        return self._explicit_path or _file_in(env.cache_dir())

    # ---- reading ------------------------------------------------------------------------------
    def _stamp(self):
        path = str(self.path)
        try:
            stat = os.stat(path)
            return (path, stat.st_mtime_ns, stat.st_size)
        except FileNotFoundError:
            return (path, None, None)
        except OSError as error:  # a file where the folder should be, a folder we may not search
            return (path, type(error).__name__, None)

    def _read_file(self) -> tuple[dict, str | None]:
        """(entries, problem): problem says why the file's content cannot be used. Raises OSError when
        the file exists but cannot be read (permission, a folder in its place)."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return {}, None
        return _parse(raw)

    def _refresh(self) -> None:
        """Re-read the snapshot if the file changed; the caller holds ``_mutex``."""
        stamp = self._stamp()
        if stamp == self._snapshot_stamp:
            return
        try:
            entries, problem = self._read_file()
            remedy = "the next tuning run sets it aside and starts a new one"
        except OSError as error:
            entries, problem = {}, f"cannot be read ({_describe(error)})"
            remedy = "fix its permissions or point TRITONCONV_CACHE_DIR at another folder"
        self._snapshot, self._snapshot_stamp, self._checked = entries, stamp, {}
        self._problem = f"tuning cache {self.path} {problem}" if problem else None
        self._generation += 1
        if problem:
            warnings.warn(f"{self._problem}; every call runs as if untuned ({remedy})",
                          RuntimeWarning, stacklevel=4)

    def entries(self) -> dict[str, dict]:
        """The file's entries as stored, unchecked (``lookup`` checks the one it answers)."""
        with self._mutex:
            self._refresh()
            return self._snapshot

    def generation(self) -> int:
        """Changes whenever what ``lookup`` answers may have changed (the file was written or moved).

        The dispatcher asks on every CUDA call, and the file's stamp is a stat (1.5-3.5 us on the CPU,
        a missing file the dearest): for one path it is taken at most every ``STAMP_INTERVAL_S``, so a
        file another process writes is seen within that; this process's own writes, and a changed
        path (TRITONCONV_CACHE_DIR), at once."""
        path = self.path
        stamped = self._stamped  # (path, monotonic time of the last stamp check): one read, no lock
        if stamped is not None and stamped[0] == path and time.monotonic() - stamped[1] < STAMP_INTERVAL_S:
            return self._generation
        with self._mutex:
            self._refresh()
            self._stamped = (path, time.monotonic())
            return self._generation

    def lookup(self, key: CacheKey, kernels: tuple[str, ...] | None = None) -> dict | None:
        """The entry for ``key`` if there is a well-formed one (see ``entry_problem``), else None."""
        return self.lookup_checked(key, kernels)[0]

    def lookup_checked(self, key: CacheKey, kernels: tuple[str, ...] | None = None) -> tuple[dict | None, str | None]:
        """(entry, None), (None, None) when nothing is stored, or (None, why the cache or the entry was
        ignored). ``kernels``: the kernel names the entry's tiles may be for (None: any).

        Each entry is checked once per snapshot and a malformed one reported once: the dispatcher asks
        on every call it has not memoized.
        """
        name = str(key)
        with self._mutex:
            self._refresh()
            if self._problem:
                return None, self._problem
            memo = (name, kernels)
            if memo not in self._checked:
                entry = self._snapshot.get(name)
                problem = None if entry is None else entry_problem(entry, kernels)
                self._checked[memo] = (None, f"the cached entry was rejected: {problem}") if problem else (entry, None)
                if problem:
                    warnings.warn(f"tuning cache {self.path}: ignoring entry {name}: {problem}; using the default "
                                  "backend and tiles (re-tune it with `python -m autotune --force`)",
                                  RuntimeWarning, stacklevel=3)
            return self._checked[memo]

    # ---- writing ------------------------------------------------------------------------------
    def store(self, key: CacheKey, entry: dict) -> None:
        """Merge one entry into the file under the lock; stale entries of the same op are dropped.

        Raises CacheWriteError, with the file left as it was, when the cache cannot be written.
        """
        self.store_all({key: entry})

    def store_all(self, entries: dict) -> None:
        """``store`` for many {CacheKey: entry} at once: one locked read-merge-write of the file."""
        for key, entry in entries.items():
            problem = entry_problem(entry, None)
            if problem:
                raise ValueError(f"not a tuning cache entry for {key}: {problem}")
        self._write(dict(entries))

    def export(self, path: Path | str) -> int:
        """Write every well-formed entry to ``path`` (a cache file another machine can import);
        returns how many. Raises CacheWriteError when this cache cannot be read or ``path`` written."""
        with self._mutex:
            self._refresh()
            problem, entries = self._problem, dict(self._snapshot)
        if problem:
            raise CacheWriteError(f"cannot export: {problem}")
        entries = {name: entry for name, entry in entries.items() if entry_problem(entry, None) is None}
        try:
            _write_atomically(Path(path), entries)
        except OSError as error:
            raise CacheWriteError(f"cannot write {path}: {_describe(error)}") from error
        return len(entries)

    def import_file(self, path: Path | str, kernels_of: Callable[[CacheKey], tuple | None] | None = None) -> int:
        """Merge the entries of the cache file ``path`` (``export`` wrote it) into this cache, under
        the lock as ``store`` does; returns how many. Every entry is checked as ``lookup`` checks it
        (``entry_problem``; ``kernels_of(key)``: the kernels its tiles may be for, None for an
        unknown op): one bad entry refuses the whole file with CacheImportError, the cache unchanged."""
        try:
            raw = Path(path).read_bytes()
        except OSError as error:
            raise CacheImportError(f"cannot import {path}: {_describe(error)}; the tuning cache was not changed")
        entries, problem = _parse(raw)
        problems = [problem] if problem else []
        parsed = {}
        for name, entry in entries.items():
            try:
                key = CacheKey.parse(name)
            except ValueError as error:
                problems.append(f"entry {name!r}: {error}")
                continue
            kernels = kernels_of(key) if kernels_of else None
            if kernels_of and kernels is None:
                problems.append(f"entry {name!r}: no operator {key.op!r} with a pass {key.kernel!r} here")
                continue
            entry_error = entry_problem(entry, kernels)
            if entry_error:
                problems.append(f"entry {name!r}: {entry_error}")
            parsed[key] = entry
        if problems:
            shown = "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")
            raise CacheImportError(f"cannot import {path}: {'it ' if problem else ''}{shown}; "
                                   "the tuning cache was not changed")
        self._write(parsed)
        return len(parsed)

    def _write(self, new: dict) -> None:
        try:
            self._store(new)
        except OSError as error:
            raise CacheWriteError(f"cannot write the tuning cache {self.path}: {_describe(error)}; "
                                  "the file was left as it was") from error
        with self._mutex:
            self._snapshot_stamp = None  # re-read on next lookup, even if the new file has the old stamp
            self._stamped = None

    def _store(self, new: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.path) + ".lock"):
            entries, problem = self._read_file()  # an unreadable file raises: it is not ours to replace
            if problem:
                aside = self.path.with_suffix(".json.corrupt")
                os.replace(self.path, aside)
                warnings.warn(f"tuning cache {self.path} {problem}; moved it to {aside} and started a new one",
                              RuntimeWarning, stacklevel=3)
            for key, entry in new.items():
                entries = {k: v for k, v in entries.items() if not _stale(k, key)}
                entries[str(key)] = entry
            _write_atomically(self.path, entries)


def _write_atomically(path: Path, entries: dict) -> None:
    payload = json.dumps({"format": FORMAT_VERSION, "entries": entries}, indent=1, sort_keys=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tuning-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _parse(raw: bytes) -> tuple[dict, str | None]:
    """(entries, problem) of a cache file's bytes."""
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as error:
        return {}, f"is not UTF-8 text ({error})"
    except (ValueError, RecursionError) as error:  # JSONDecodeError, or an int too long to convert
        return {}, f"is not valid JSON ({error})"
    if not isinstance(data, dict) or not isinstance(data.get("entries"), dict):
        return {}, "does not hold an 'entries' table"
    if data.get("format") != FORMAT_VERSION:
        return {}, f"has format {data.get('format')!r}, this tritonconv writes {FORMAT_VERSION}"
    return data["entries"], None


def entry_problem(entry, kernels: tuple[str, ...] | None) -> str | None:
    """Why ``entry`` is not one the dispatcher and the tuner can use, or None.

    An entry is a table with ``winner`` "triton" or "fallback"; optional ``tiles`` {kernel: tile} for
    kernels in ``kernels`` (None: any name), each one a kernel compiles (``tiles.tile_dict_problem``);
    optional ``timings_ms`` {"triton"/"fallback": ms or null, "candidates": {name: ms}, "spread": {name:
    [p20, p80]}} with finite ms >= 0; optional ``failed`` {name: why}. Other fields (device, versions,
    spec, date, the noise band) are notes.
    """
    if not isinstance(entry, dict):
        return f"it is {type(entry).__name__} {entry!r}, not a table"
    if "winner" not in entry:
        return "it has no 'winner'"
    if entry["winner"] not in WINNERS:
        return f"winner {entry['winner']!r} is not one of {WINNERS}"
    tiles = entry.get("tiles", {})
    if not isinstance(tiles, dict):
        return f"'tiles' is {type(tiles).__name__}, not a table"
    for kernel, tile in tiles.items():
        if kernels is not None and kernel not in kernels:
            return f"it has a tile for {kernel!r}, which is not a kernel of this pass {kernels}"
        problem = tile_dict_problem(tile)
        if problem:
            return f"tile for {kernel!r}: {problem}"
    timings = entry.get("timings_ms", {})
    if not isinstance(timings, dict):
        return f"'timings_ms' is {type(timings).__name__}, not a table"
    candidates = timings.get("candidates", {})
    if not isinstance(candidates, dict):
        return f"'timings_ms.candidates' is {type(candidates).__name__}, not a table"
    spread = timings.get("spread", {})
    if not isinstance(spread, dict):
        return f"'timings_ms.spread' is {type(spread).__name__}, not a table"
    measured = {name: timings[name] for name in WINNERS if timings.get(name) is not None}
    for name, ms in [*measured.items(), *candidates.items()]:
        if not _is_ms(ms):
            return f"timing {name!r} is {ms!r}, not a finite number of milliseconds >= 0"
    for name, p20_p80 in spread.items():
        if not isinstance(p20_p80, list) or len(p20_p80) != 2 or not all(_is_ms(ms) for ms in p20_p80):
            return f"spread {name!r} is {p20_p80!r}, not [p20, p80] milliseconds >= 0"
    if not isinstance(entry.get("failed", {}), dict):
        return f"'failed' is {type(entry['failed']).__name__}, not a table"
    return None


def _is_ms(ms) -> bool:
    return not isinstance(ms, bool) and isinstance(ms, (int, float)) and math.isfinite(ms) and ms >= 0


def _describe(error: OSError) -> str:
    """What went wrong, in words: no "[Errno 13]", and a file in the way of a folder said as such."""
    if isinstance(error, NotADirectoryError):
        return f"{error.strerror}: a file, not a folder, is on the way to {error.filename}"
    if isinstance(error, FileExistsError):  # from mkdir(exist_ok=True): the name is taken by a file
        return f"{error.filename} is a file, not a folder"
    if error.strerror and error.filename:
        return f"{error.strerror}: {error.filename!r}"
    return str(error) or type(error).__name__


def _stale(existing: str, new: CacheKey) -> bool:
    """An entry for the same op, kernel, shape and device measured on other kernel source, torch or
    triton (or written before the key had the torch version)."""
    parts = existing.split("|")
    return parts[:4] == [new.op, new.kernel, new.shape, new.device] and existing != str(new)


_default_cache = TuningCache()


def default_cache() -> TuningCache:
    """The process-wide cache at ``env.cache_dir()`` (TRITONCONV_CACHE_DIR is read on each access)."""
    return _default_cache
