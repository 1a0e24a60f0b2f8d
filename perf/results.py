"""The benchmark CSV: its schema, and appending with de-duplication so history across commits and
devices is kept while a re-run of the same measurement replaces the old row (newest wins)."""

from __future__ import annotations

import os
import subprocess
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

RESULTS_DIR = Path(__file__).resolve().parent / "results"
DEFAULT_CSV = RESULTS_DIR / "benchmarks.csv"
REPO_ROOT = Path(__file__).resolve().parent.parent

# Column -> pandas dtype, in the order written. Read back with these dtypes so that a commit hash of
# digits only ("1234567") or "1e10" is not parsed as a number.
SCHEMA = {
    "layer": "string",          # registry name: "hetconv", ...
    "shape": "string",          # spec.describe(): channels, kernel, stride, options, size, batch
    "label": "string",          # the network conv it stands for ("conv3_56px", "layer2.0.conv2")
    "shape_set": "string",      # the shape set it came from ("vgg16", ...)
    "count": "Int64",           # how often the shape occurs in that network
    "backend": "string",        # triton | fallback | dense | compile
    "dtype": "string",          # bf16 | fp16 | fp32
    "pass": "string",           # fwd | bwd | fwd+bwd
    "batch": "Int64",
    "channels_last": "boolean",
    "tf32": "boolean",          # torch.backends.cudnn.allow_tf32 (our fp32 kernels follow it)
    "status": "string",         # ok | failed
    "max_rel_error": "Float64", # vs the float64 expectation; empty where not comparable (dense)
    "note": "string",           # why a backend failed, or what its check covered
    "tiles": "string",          # triton: the tiles dispatch.decide chose, per kernel
    "tuned": "boolean",         # triton: tiles came from the tuning cache (not the defaults)
    "ms_p20": "Float64",
    "ms_p50": "Float64",
    "ms_p80": "Float64",
    "flops": "Int64",           # the layer's work for this pass (spec.cost()), same for every backend
    "bytes": "Int64",           # its compulsory traffic for this pass, same for every backend
    "unfused_bytes": "Int64",   # what the unfused formulation moves (intermediates written and re-read)
    "dense_flops": "Int64",     # what the ordinary conv of the same shape does, where the spec says
    "gpu": "string",
    "torch": "string",
    "triton": "string",
    "commit": "string",
    "timestamp": "string",      # UTC ISO 8601: sorts as time
}
COLUMNS = tuple(SCHEMA)

# One measurement: the same spec, backend, precision and pass on the same GPU and software.
KEY = ("layer", "shape", "backend", "dtype", "pass", "batch", "channels_last", "gpu", "torch", "triton", "commit")


def git_commit(repo: Path = REPO_ROOT) -> str:
    """``git rev-parse --short HEAD``, with "-dirty" for uncommitted changes; "unknown" without git.

    The results folder itself is left out of the dirty check: writing results must not mark the
    next run's code as changed. TRITONCONV_COMMIT, where set, wins (a copy of the tree without .git)."""
    from tritonconv import env

    if env.commit_override():
        return env.commit_override()
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True, text=True,
                              check=True).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--", ".", ":(exclude)perf/results"], cwd=repo,
                                capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{head}-dirty" if status else head


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class Table:
    """A CSV of results: its columns with their pandas dtypes, and the key a re-run replaces rows on."""

    schema: dict
    key: tuple

    @property
    def columns(self) -> tuple:
        return tuple(self.schema)

    def frame(self, rows: list[dict]) -> pd.DataFrame:
        """Rows as a frame in schema order and dtypes; every schema column must be present in every row."""
        for i, row in enumerate(rows):
            missing = [c for c in self.columns if c not in row]
            if missing:
                raise ValueError(f"row {i} lacks columns {missing}; every row needs all of {list(self.columns)}")
        df = pd.DataFrame(rows, columns=list(self.columns) + sorted({k for r in rows for k in r} - set(self.columns)))
        return self._typed(df)

    def _typed(self, df: pd.DataFrame) -> pd.DataFrame:
        for column, dtype in self.schema.items():
            if column not in df:
                df[column] = pd.Series(pd.NA, index=df.index, dtype=dtype)
            elif dtype == "boolean" and df[column].dtype == object:
                df[column] = df[column].map({True: True, False: False, "True": True, "False": False}).astype(dtype)
            else:
                df[column] = df[column].astype(dtype)
        extra = [c for c in df.columns if c not in self.schema]
        return df[list(self.columns) + extra]

    def read(self, path: Path | str) -> pd.DataFrame:
        """The CSV as a typed frame (an empty one if the file does not exist)."""
        path = Path(path)
        if not path.exists():
            return self._typed(pd.DataFrame(columns=list(self.columns)))
        strings = {c: "string" for c, t in self.schema.items() if t == "string"}
        return self._typed(pd.read_csv(path, dtype=strings, keep_default_na=True))

    def deduplicate(self, df: pd.DataFrame) -> pd.DataFrame:
        """One row per key: the newest timestamp wins, and among equal timestamps the later row."""
        ordered = df.sort_values("timestamp", kind="mergesort")
        return ordered.drop_duplicates(subset=list(self.key), keep="last").reset_index(drop=True)

    def append(self, rows: list[dict], path: Path | str) -> pd.DataFrame:
        """Add ``rows`` to the CSV at ``path``, de-duplicate, and write it back atomically."""
        path = Path(path)
        new = self.frame(rows)
        old = self.read(path)
        combined = new if old.empty else pd.concat([old, new], ignore_index=True)
        combined = self.deduplicate(combined)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Write beside the target and rename: a reader never sees a half-written file.
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        try:
            with os.fdopen(fd, "w", newline="") as f:
                combined.to_csv(f, index=False)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return combined


BENCHMARKS = Table(SCHEMA, KEY)


def frame(rows: list[dict]) -> pd.DataFrame:
    return BENCHMARKS.frame(rows)


def read(path: Path | str = DEFAULT_CSV) -> pd.DataFrame:
    return BENCHMARKS.read(path)


def deduplicate(df: pd.DataFrame) -> pd.DataFrame:
    return BENCHMARKS.deduplicate(df)


def append(rows: list[dict], path: Path | str = DEFAULT_CSV) -> pd.DataFrame:
    return BENCHMARKS.append(rows, path)
