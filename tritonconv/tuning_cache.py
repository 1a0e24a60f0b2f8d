"""The persistent tuning cache: one JSON file of measured winners, shared by every process.

Reads take a snapshot (re-read when the file changes); writes re-read under a file lock, merge and
replace the file atomically, so two processes tuning at once lose nothing and a reader never sees a
half-written file. A corrupt or foreign-format file is reported, set aside as ``*.corrupt`` and
rebuilt, never a crash.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

from tritonconv import env

FORMAT_VERSION = 1
FILE_NAME = "tuning.json"


def source_hash(*paths: Path) -> str:
    """Short hash of kernel source files: editing a kernel invalidates its measurements."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(Path(path).read_bytes())
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class CacheKey:
    op: str
    kernel: str  # "forward" / "backward" (backend choice) or a kernel name (tile choice)
    shape: str  # the spec's tuning_key: batch bucketed
    device: str
    triton: str
    source: str

    def __str__(self) -> str:
        return "|".join((self.op, self.kernel, self.shape, self.device, self.triton, self.source))


class TuningCache:
    def __init__(self, path: Path | str | None = None):
        self._explicit_path = Path(path) if path is not None else None
        self._snapshot: dict[str, dict] = {}
        self._snapshot_stamp = None
        self._generation = 0  # bumped whenever the snapshot is re-read
        self._mutex = threading.Lock()

    @property
    def path(self) -> Path:
        return self._explicit_path or env.cache_dir() / FILE_NAME

    # ---- reading ------------------------------------------------------------------------------
    def _stamp(self):
        path = str(self.path)
        try:
            stat = os.stat(path)
            return (path, stat.st_mtime_ns, stat.st_size)
        except FileNotFoundError:
            return (path, None, None)

    def _read_file(self) -> tuple[dict[str, dict], str | None]:
        """(entries, problem): problem says why the file could not be used."""
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return {}, None
        except OSError as error:
            return {}, f"cannot be read ({error})"
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            return {}, f"is not valid JSON ({error})"
        if not isinstance(data, dict) or not isinstance(data.get("entries"), dict):
            return {}, "does not hold an 'entries' table"
        if data.get("format") != FORMAT_VERSION:
            return {}, f"has format {data.get('format')!r}, this tritonconv writes {FORMAT_VERSION}"
        return data["entries"], None

    def entries(self) -> dict[str, dict]:
        with self._mutex:
            stamp = self._stamp()
            if stamp != self._snapshot_stamp:
                entries, problem = self._read_file()
                if problem:
                    warnings.warn(f"tuning cache {self.path} {problem}; ignoring it (the next tuning run rebuilds it)",
                                  RuntimeWarning, stacklevel=3)
                self._snapshot, self._snapshot_stamp = entries, stamp
                self._generation += 1
            return self._snapshot

    def generation(self) -> int:
        """Changes whenever what ``lookup`` answers may have changed (the file was written or moved)."""
        self.entries()
        return self._generation

    def lookup(self, key: CacheKey) -> dict | None:
        return self.entries().get(str(key))

    # ---- writing ------------------------------------------------------------------------------
    def store(self, key: CacheKey, entry: dict) -> None:
        """Merge one entry into the file under the lock; stale entries of the same op are dropped."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.path) + ".lock"):
            entries, problem = self._read_file()
            if problem:
                aside = self.path.with_suffix(".json.corrupt")
                warnings.warn(f"tuning cache {self.path} {problem}; moved it to {aside} and started a new one",
                              RuntimeWarning, stacklevel=2)
                os.replace(self.path, aside)
            entries = {k: v for k, v in entries.items() if not _stale(k, key)}
            entries[str(key)] = entry
            payload = json.dumps({"format": FORMAT_VERSION, "entries": entries}, indent=1, sort_keys=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".tuning-", suffix=".tmp")
            try:
                with os.fdopen(fd, "w") as handle:
                    handle.write(payload)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(tmp, self.path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        with self._mutex:
            self._snapshot_stamp = None  # re-read on next lookup


def _stale(existing: str, new: CacheKey) -> bool:
    """An entry for the same op, kernel, shape and device measured on other kernel source or triton."""
    parts = existing.split("|")
    return (len(parts) == 6 and parts[:4] == [new.op, new.kernel, new.shape, new.device]
            and (parts[4], parts[5]) != (new.triton, new.source))


_default_cache = TuningCache()


def default_cache() -> TuningCache:
    """The process-wide cache at ``env.cache_dir()`` (TRITONCONV_CACHE_DIR is read on each access)."""
    return _default_cache
