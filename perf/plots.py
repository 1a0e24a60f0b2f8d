"""Figures from the benchmark CSV: roofline, FLOPs vs time, and speedups. Needs no GPU.

One figure of each kind per (gpu, dtype, pass, layout) in the CSV. Only verified, timed rows are drawn, and
of each measurement only its newest row (a re-run at a later commit replaces the earlier point).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from perf import UsageError, ceilings, results

DEFAULT_OUT = results.RESULTS_DIR / "plots"  # the CLI's default too
BACKEND_COLORS = {"triton": "tab:red", "fallback": "tab:blue", "compile": "tab:green", "dense": "tab:gray"}
_OTHER_COLORS = ("tab:purple", "tab:orange", "tab:brown", "tab:pink", "tab:olive", "tab:cyan")
# A point is one measurement; its newest row wins whatever the commit or software versions.
_POINT = ["gpu", "dtype", "pass", "layer", "shape", "backend", "batch", "channels_last"]
_DPI = 120


def select(df: pd.DataFrame, *, gpu: str | None = None, dtype: str | None = None, pass_: str | None = None,
           layer: str | None = None, commit: str | None = None) -> pd.DataFrame:
    """The rows to draw: filtered, verified and timed, newest per measurement, with TFLOP/s added."""
    filters = {"gpu": gpu, "dtype": dtype, "pass": pass_, "layer": layer, "commit": commit}
    for column, value in filters.items():
        if value is None:
            continue
        present = sorted(df[column].dropna().unique())
        if value not in present:
            option = "--pass" if column == "pass" else f"--{column}"
            raise UsageError(f"{option} {value!r} matches no row of the CSV; present: {present}")
        df = df[df[column] == value]
    df = df[(df["status"] == "ok") & df["ms_p50"].notna()]
    df = df.sort_values("timestamp", kind="mergesort").drop_duplicates(_POINT, keep="last").copy()
    df["intensity"] = df["flops"].astype(float) / df["bytes"].astype(float)
    df["tflop_s"] = df["flops"].astype(float) / (df["ms_p50"].astype(float) * 1e-3) / 1e12
    return df.reset_index(drop=True)


def plot_all(csv: Path | str = results.DEFAULT_CSV, out: Path | str = DEFAULT_OUT, *,
             ceilings_path: Path | str = ceilings.CEILINGS_JSON, **filters) -> list[Path]:
    """Write every figure for the CSV's (gpu, dtype, pass) groups under ``out``; returns the paths."""
    csv = Path(csv)
    if not csv.exists():
        raise UsageError(f"--csv {str(csv)!r} does not exist; run `python -m perf run` on a GPU first")
    df = select(results.read(csv), **filters)
    if df.empty:
        chosen = " ".join(f"--{k.rstrip('_')} {v}" for k, v in filters.items() if v is not None)
        raise UsageError(f"--csv {str(csv)!r} has no verified, timed rows{' for ' + chosen if chosen else ''}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    known = ceilings.load(ceilings_path)
    colors = _colors(df["backend"].unique())
    written = []
    # NCHW and channels_last runs of one shape are different measurements: separate figure sets.
    for (gpu, dtype, pass_, channels_last), group in df.groupby(["gpu", "dtype", "pass", "channels_last"], sort=True):
        layout = "_nhwc" if channels_last else ""
        stem = f"{_slug(gpu)}_{dtype}_{_slug(pass_)}{layout}"
        what = f"{gpu}, {dtype}, {pass_}" + (", channels_last" if channels_last else "")
        tf32 = bool(group["tf32"].fillna(False).any())
        bandwidth, peak, fallback_note = ceilings.roofs(known, gpu, dtype, tf32)
        figures = {
            "roofline": roofline(group, bandwidth, peak, colors, f"Roofline: {what}", fallback_note),
            "flops_vs_time": flops_vs_time(group, colors, f"FLOPs vs time: {what}"),
            "speedup": speedup(group, colors, f"Speedup of triton: {what}"),
        }
        for kind, fig in figures.items():
            if fig is None:
                continue
            path = out / f"{kind}_{stem}.png"
            FigureCanvasAgg(fig).print_png(str(path))
            written.append(path)
    return written


def roofline(df: pd.DataFrame, bandwidth_tb_s: float, peak_tflop_s: float, colors: dict, title: str,
             note: str | None = None) -> Figure:
    """Log-log intensity vs TFLOP/s under the measured roofs; each point labelled with % of its roof."""
    fig = Figure(figsize=(9, 6), dpi=_DPI)
    ax = fig.add_subplot()
    lo = min(df["intensity"].min(), peak_tflop_s / bandwidth_tb_s) / 4
    hi = max(df["intensity"].max(), peak_tflop_s / bandwidth_tb_s) * 4
    x = np.geomspace(lo, hi, 200)
    ax.plot(x, np.minimum(peak_tflop_s, bandwidth_tb_s * x), color="black", lw=1.5,
            label=f"roof: {bandwidth_tb_s:.2f} TB/s, {peak_tflop_s:.0f} TFLOP/s")
    for backend, rows in df.groupby("backend", sort=False):
        ax.scatter(rows["intensity"], rows["tflop_s"], color=colors[backend], label=backend, s=22, zorder=3)
        for intensity, rate in zip(rows["intensity"], rows["tflop_s"]):
            roof = min(peak_tflop_s, bandwidth_tb_s * intensity)
            ax.annotate(f"{100 * rate / roof:.0f}%", (intensity, rate), textcoords="offset points",
                        xytext=(4, 2), fontsize=6, color=colors[backend])
    _log_log(ax)
    ax.set_xlabel("arithmetic intensity (FLOP / compulsory byte)")
    ax.set_ylabel("achieved TFLOP/s (layer FLOPs / median time)")
    ax.set_title(title + (f"\n{note}" if note else ""), fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def flops_vs_time(df: pd.DataFrame, colors: dict, title: str) -> Figure:
    """Per layer, log-log FLOPs vs median time (bars: p20 to p80): does time fall with the work?

    Points of one conv of the network (same label) at different layer options, e.g. a --p sweep,
    are joined per backend: a line that falls with the FLOPs is time that follows the work."""
    layers = sorted(df["layer"].unique())
    fig = Figure(figsize=(6.5 * len(layers), 5.5), dpi=_DPI)
    axes = fig.subplots(1, len(layers), squeeze=False)[0]
    for ax, layer in zip(axes, layers):
        for backend, rows in df[df["layer"] == layer].groupby("backend", sort=False):
            ms = rows["ms_p50"].astype(float)
            spread = [ms - rows["ms_p20"].astype(float), rows["ms_p80"].astype(float) - ms]
            ax.errorbar(rows["flops"].astype(float), ms, yerr=spread, fmt="o", ms=4, capsize=2,
                        color=colors[backend], label=backend)
            for _, conv in rows.groupby(["label", "batch"]):
                if len(conv) > 1:
                    conv = conv.sort_values("flops")
                    ax.plot(conv["flops"].astype(float), conv["ms_p50"].astype(float), color=colors[backend],
                            lw=0.8, alpha=0.6)
        _log_log(ax)
        ax.set_xlabel(f"{layer} FLOPs (per call)")
        ax.set_ylabel("median time (ms)")
        ax.set_title(layer, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig


def speedup(df: pd.DataFrame, colors: dict, title: str) -> Figure | None:
    """Per shape, time of each other backend over triton's (above 1: triton is faster), with the
    geometric mean over shapes as a dashed line. None when triton was not measured."""
    several_layers = df["layer"].nunique() > 1
    df = df.assign(tick=[f"{lay}: " * several_layers + f"{lab} ({shape})"
                         for lay, lab, shape in zip(df["layer"], df["label"], df["shape"])])
    times = df.pivot_table(index="tick", columns="backend", values="ms_p50", aggfunc="last", sort=False)
    if "triton" not in times:
        return None
    others = [b for b in times.columns if b != "triton"]
    if not others:
        return None
    ratios = times[others].div(times["triton"], axis=0)
    fig = Figure(figsize=(max(7.0, 0.45 * len(ratios) * len(others) + 2), 6), dpi=_DPI)
    ax = fig.add_subplot()
    width = 0.8 / len(others)
    positions = np.arange(len(ratios))
    for i, backend in enumerate(others):
        values = ratios[backend]
        valid = values.dropna()
        geomean = math.exp(np.log(valid).mean()) if len(valid) else float("nan")
        ax.bar(positions + (i - (len(others) - 1) / 2) * width, values, width, color=colors[backend],
               label=f"vs {backend} (geomean {geomean:.2f}x)")
        ax.axhline(geomean, color=colors[backend], ls="--", lw=1)
    ax.axhline(1.0, color="black", lw=0.8)
    ax.set_yscale("log")
    _label_log_axis(ax.yaxis, suffix="x")
    ax.set_xticks(positions, ratios.index, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("speedup of triton (other backend's time / triton's)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, axis="y", which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _log_log(ax) -> None:
    ax.set_xscale("log")
    ax.set_yscale("log")
    _label_log_axis(ax.xaxis)
    _label_log_axis(ax.yaxis)


def _label_log_axis(axis, suffix: str = "") -> None:
    """Labels at 1, 2, 5 x 10^n: a range inside one decade still gets numbers, and no labels overlap."""
    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}{suffix}"))
    axis.set_minor_formatter(NullFormatter())


def _colors(backends) -> dict:
    extra = iter(_OTHER_COLORS)
    return {b: BACKEND_COLORS.get(b) or next(extra, "black") for b in backends}


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+_-]+", "-", str(text)).strip("-")
