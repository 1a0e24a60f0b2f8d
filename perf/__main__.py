"""Command line of the benchmark suite: ``python -m perf {run,ceilings,plot,audit,host} --help``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from perf import UsageError, ceilings, results

NO_GPU_EXIT = 2

DESCRIPTION = """\
Benchmark suite of tritonconv: our Triton kernels against cuDNN, per shape of real networks.

  run       time every backend of a layer on a network's conv shapes (needs a CUDA GPU),
            appending to perf/results/benchmarks.csv
  ceilings  measure the GPU's bandwidth and matmul TFLOP/s for the roofline (needs a CUDA GPU)
  plot      draw roofline, FLOPs-vs-time and speedup figures from the CSV (no GPU needed)
  audit     compile every kernel as launched for sm_90 and read its machine code: registers, spills,
            shared memory, occupancy, HGMMA/HMMA, load widths, 64-bit division, instructions per
            tensor-core instruction; launches and host time per layer call (no GPU needed)
  host      the host cost of one layer call (our Python, torch's dispatch and, on a GPU, the
            launches) next to a plain F.conv2d of the same shape, appending to perf/results/host.csv

Typical session on a GPU machine:
  python -m perf ceilings
  python -m perf run --layer hetconv --shapes vgg16 --dtype bf16 --pass fwd+bwd --p 2 4 8
  python -m perf plot
"""

AUDIT_DESCRIPTION = """\
Static performance audit for Hopper, no GPU needed (ptxas, nvdisasm and cuobjdump ship with triton).

For each layer and shape set, every kernel the launchers issue (each kernel of the forward and the
backward, every launch of it) is recorded by replacing JITFunction.run, specialised exactly as the JIT
does on a GPU (Triton's own binder: integers equal to 1 become constexpr, integers divisible by 16
and 16-byte-aligned pointers get divisibility hints; meta-device tensors as arguments, launchers sized
for an H100's 132 SMs), compiled for sm_90a and read back. Per kernel, tile and shape:

  registers, stack/local bytes, spills (LDL/STL instructions and bytes), shared memory, resident
  blocks and warps per SM (65536 registers, 228 KB shared memory, 64 warps, 32 blocks per SM) and
  which limit binds, tl.dot count, tensor-core instructions (HGMMA = wgmma, HMMA = mma.sync), FFMA,
  global loads by width (LDG 8/16/32/64/128-bit, LDGSTS cp.async, UTMALDG TMA), global stores of 8/16
  and 128 bits (STG: scattered 2-byte stores cost a sector each), CALLs into 64-bit
  division/modulo (and how many sit inside loops), and the hottest loop (loops are found from
  backward branches; the innermost loop with the most tensor-core instructions, else FFMA) with its
  instructions per tensor-core instruction (per FFMA without tensor cores).

Per layer call (the public functional op, one training step): Triton launches of the forward and
the backward, the torch ops launched beside them (non-view, non-allocating aten ops on the launch
path, counted with a dispatch mode), and host microseconds per pass, measured on the CPU with
launches replaced by a no-op recorder (so the launches' own host cost is not included).

Writes (merging: a re-audit of the same kernel, tile, shape, dtype and layout replaces its row)
  OUT/kernels.csv   one row per kernel x tile x launch x shape x dtype, with triton/torch versions,
                    git commit, target and timestamp
  OUT/calls.csv     one row per layer call x pass
  OUT/SUMMARY.md    per layer and kernel the worst figures and whether each tracked target is met

Compilations are cached in-process (one per distinct specialisation) and on disk by triton. The
default (each layer's first shape set, default tiles, bf16 channels_last) takes a few minutes on
two cores; --all-tiles compiles every candidate tile of the tuner as well (much longer).
"""

RUN_DESCRIPTION = """\
For every distinct spec of the chosen shape sets, times these backends side by side in one process:

  triton    our kernels with the tiles dispatch.decide picks for the shape (tuned ones when the
            tuning cache has them, `python -m autotune`): the pass as a layer call launches it
            (bwd: all the backward's launches, e.g. grad input and grad weights)
  fallback  the published formulation through cuDNN (the dispatcher's fallback)
  dense     the ordinary conv of the same in/out shape: what a user would replace
  compile   torch.compile (default mode, static shapes) of the fallback

Before timing, each backend runs once on fresh random inputs (never zeros) and its outputs are
checked against a float64 expectation with tritonconv.adapter.max_relative_error within
tolerance(dtype): the triton passes, fallback and compile against the fallback run on the same
inputs upcast to float64 (Adapter.expected_pass). The dense conv computes a
different function and is only checked for finite outputs. A backend that fails the check, or
raises, is recorded with status "failed" (the reason in the note column) and not timed.

Times are triton.testing.do_bench's 20th, 50th and 80th percentiles in ms, with
torch.backends.cudnn.benchmark on and cuDNN's tf32 setting recorded. fwd+bwd times the forward and
the backward closures as one call. A progress bar shows the spec and backend being measured; a
summary table follows.

Each row of the CSV also holds the pass's FLOPs and compulsory bytes from spec.cost() (bwd counts
twice the forward's, fwd+bwd three times): the same numbers for every backend of a spec, so
achieved TFLOP/s = flops / time compares the backends on the layer's work. Rows are keyed on layer,
shape, backend, dtype, pass, batch, layout, GPU, torch, triton and git commit; a re-run of the same
key replaces the old row, anything else adds to the history.
"""

PLOT_DESCRIPTION = """\
Reads the CSV (no GPU needed) and writes, for each (gpu, dtype, pass) present (channels_last runs
get their own set, with "_nhwc" at the end of the file names):

  roofline_<gpu>_<dtype>_<pass>.png       log-log arithmetic intensity (FLOP/byte) vs achieved
        TFLOP/s under the roofs measured by `perf ceilings` (without them: the H100 values of
        PLATFORM.md, said in the title); each point labelled with its percentage of the roof
  flops_vs_time_<gpu>_<dtype>_<pass>.png  per layer, log-log FLOPs vs median time (bars: p20-p80):
        our time should fall with the FLOPs, cuDNN's need not
  speedup_<gpu>_<dtype>_<pass>.png        per shape, each other backend's time over triton's,
        geometric mean as a dashed line

Only rows with status "ok" are drawn, and of each measurement (gpu, dtype, pass, layer, shape,
backend, batch, layout) the newest row. Filter with --gpu, --dtype, --pass, --layer, --commit.
"""


def _layers_epilog() -> str:
    from perf import bench
    from tritonconv.ops.registry import ADAPTERS

    lines = ["registered layers (shape sets; options):"]
    for name, adapter in ADAPTERS.items():
        options = bench.layer_options(name)
        shown = "any (--option NAME=...)" if options is None else ", ".join(
            bench.option_flag(o) for o in sorted(options)) or "none"
        lines.append(f"  {name:10s} {', '.join(adapter.shape_sets)}; {shown}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    from perf import bench

    parser = argparse.ArgumentParser(prog="python -m perf", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="{run,ceilings,plot,audit,host}")

    run = sub.add_parser("run", help="time every backend on a network's shapes (needs a CUDA GPU)",
                         description=RUN_DESCRIPTION, epilog=_layers_epilog(),
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("--layer", default="all",
                     help="registered layer to measure, or 'all' for every layer with its own shape sets "
                          "(default: all)")
    run.add_argument("--shapes", nargs="+", metavar="SET",
                     help="shape sets (networks) to take the specs from, e.g. vgg16 resnet50 "
                          "(default: every shape set of the layer; a spec in several sets runs once)")
    run.add_argument("--dtype", default="bf16", choices=tuple(bench.DTYPES), help="precision (default: bf16)")
    run.add_argument("--pass", dest="pass_", default="fwd", choices=tuple(bench.PASSES),
                     help="fwd, bwd (grad input and grad weights) or fwd+bwd timed as one call (default: fwd)")
    run.add_argument("--batch", type=int, default=128,
                     help="batch size of every spec (default: 128, the tuner's, so the tuned tiles are found: "
                          "the tuning cache buckets batches to the next power of two)")
    run.add_argument("--channels-last", action="store_true", help="NHWC inputs and outputs (default: NCHW)")
    run.add_argument("--p", type=int, nargs="+", metavar="P",
                     help="HetConv's part count (layers with a p option); several values sweep it, which "
                          "is what the FLOPs-vs-time plot shows (default: the layer's own)")
    run.add_argument("--option", action="append", default=[], metavar="NAME=V[,V...]",
                     help="any other option of a layer's specs_for, swept over the comma-separated values "
                          "(repeatable)")
    run.add_argument("--backends", nargs="+", default=list(bench.BACKENDS), choices=bench.BACKENDS,
                     metavar="BACKEND", help=f"backends to time, some of {', '.join(bench.BACKENDS)} (default: all)")
    run.add_argument("--csv", type=Path, default=results.DEFAULT_CSV,
                     help=f"CSV to append to (default: {_rel(results.DEFAULT_CSV)})")
    run.add_argument("--list", action="store_true",
                     help="print the specs with their FLOPs and bytes and exit without timing (no GPU needed)")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")

    ceil = sub.add_parser("ceilings", help="measure bandwidth and matmul TFLOP/s (needs a CUDA GPU)",
                          description="Measures the GPU's ceilings once for the roofline and stores them by GPU "
                                      "name: memory bandwidth from a 1 GiB device-to-device copy (bytes read plus "
                                      "written) and matmul TFLOP/s of an 8192^3 product in bf16, fp16, tf32 and "
                                      "fp32 (random inputs, do_bench median). Re-running replaces this GPU's entry.")
    ceil.add_argument("--out", type=Path, default=ceilings.CEILINGS_JSON,
                      help=f"JSON file to store them in (default: {_rel(ceilings.CEILINGS_JSON)})")

    plot = sub.add_parser("plot", help="draw figures from the CSV (no GPU needed)", description=PLOT_DESCRIPTION,
                          formatter_class=argparse.RawDescriptionHelpFormatter)
    plot.add_argument("--csv", type=Path, default=results.DEFAULT_CSV,
                      help=f"CSV to read (default: {_rel(results.DEFAULT_CSV)})")
    plot.add_argument("--out", type=Path, default=results.RESULTS_DIR / "plots",
                      help=f"folder for the PNG files (default: {_rel(results.RESULTS_DIR / 'plots')})")
    plot.add_argument("--ceilings", type=Path, default=ceilings.CEILINGS_JSON,
                      help=f"ceilings JSON for the roofs (default: {_rel(ceilings.CEILINGS_JSON)})")
    plot.add_argument("--gpu", help="only this GPU (its name as in the CSV's gpu column)")
    plot.add_argument("--dtype", help="only this precision (bf16, fp16, fp32)")
    plot.add_argument("--pass", dest="pass_", metavar="PASS", help="only this pass (fwd, bwd, fwd+bwd)")
    plot.add_argument("--layer", help="only this layer")
    plot.add_argument("--commit", help="only rows measured at this commit (as in the CSV's commit column)")

    from perf import audit
    audit_parser = sub.add_parser("audit", help="compile every kernel for sm_90 and read its machine code (no GPU)",
                                  description=AUDIT_DESCRIPTION, epilog=_audit_epilog(),
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    audit_parser.add_argument("--layer", nargs="+", default=["all"], metavar="LAYER",
                              help="layers to audit, or 'all' (default: all)")
    audit_parser.add_argument("--shapes", nargs="+", metavar="SET",
                              help="shape sets to take the specs from (default: each layer's first); a layer "
                                   "skips sets it does not have")
    audit_parser.add_argument("--dtype", default="bf16", choices=tuple(bench.DTYPES), help="precision (default: bf16)")
    audit_parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                              help="NHWC inputs and outputs, what the Hopper targets are about (default: on; "
                                   "--no-channels-last for NCHW)")
    audit_parser.add_argument("--batch", type=int, default=128, help="batch size of every spec (default: 128)")
    audit_parser.add_argument("--p", type=int, metavar="P", help="HetConv's part count (default: the layer's own)")
    audit_parser.add_argument("--all-tiles", action="store_true",
                              help="every candidate tile the tuner tries, not only the default tile")
    audit_parser.add_argument("--first-shape", action="store_true",
                              help="only the first spec of each shape set (what the CI gates compile)")
    audit_parser.add_argument("--no-calls", action="store_true",
                              help="skip the launches-per-call and host-time measurement")
    audit_parser.add_argument("--out", type=Path, default=audit.DEFAULT_OUT,
                              help="folder for kernels.csv, calls.csv, SUMMARY.md "
                                   f"(default: {_rel(audit.DEFAULT_OUT)})")
    audit_parser.add_argument("--list", action="store_true",
                              help="print the specs and kernels that would be compiled, compile nothing, and exit")
    from perf import host
    host_parser = sub.add_parser("host", help="host microseconds per layer call next to F.conv2d",
                                 description=host.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    host_parser.add_argument("--layer", nargs="+", default=["all"], metavar="LAYER",
                             help="layers to measure, or 'all' (default: all)")
    host_parser.add_argument("--shapes", nargs="+", metavar="SET",
                             help="shape sets (default: each layer's first); a layer skips sets it does not have")
    host_parser.add_argument("--dtype", default="bf16", choices=tuple(bench.DTYPES), help="precision (default: bf16)")
    host_parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                             help="NHWC inputs and parameters (default: on)")
    host_parser.add_argument("--all-specs", action="store_true",
                             help="every spec of each shape set (default: the first of each)")
    host_parser.add_argument("--device", default=None,
                             help="cuda (real launches) or cpu (launches recorded); default: cuda when present")
    host_parser.add_argument("--stand-in-launch", action="store_true",
                             help="on the CPU: launches take the CUDA path (a replay's or the launcher's direct "
                                  "call) into a compiled kernel that does nothing, instead of Triton's recorded "
                                  "launch: the GPU path's own Python, without the driver")
    host_parser.add_argument("--calls", type=int, default=20, help="calls per timed loop (default: 20)")
    host_parser.add_argument("--rounds", type=int, default=5, help="timed loops, the best is kept (default: 5)")
    host_parser.add_argument("--out", type=Path, default=host.DEFAULT_CSV,
                             help=f"CSV to append to (default: {_rel(host.DEFAULT_CSV)})")
    host_parser.add_argument("--list", action="store_true", help="print the specs that would be measured and exit")
    return parser


def _audit_epilog() -> str:
    from perf import audit

    lines = ["layers (shape sets, the first is the default):"]
    for name, adapter in audit.adapters().items():
        lines.append(f"  {name:10s} {', '.join(adapter.shape_sets)}")
    lines += ["", "examples:", "  python -m perf audit                                  # every layer, first shape set",
              "  python -m perf audit --layer hetconv --shapes resnet50 --dtype fp32",
              "  python -m perf audit --all-tiles --out perf/results/audit/all-tiles"]
    return "\n".join(lines)


def _rel(path: Path) -> str:
    try:
        return str(path.relative_to(results.REPO_ROOT))
    except ValueError:
        return str(path)


def _parse_options(args) -> dict:
    options = {}
    if args.p is not None:
        options["p"] = args.p
    for item in args.option:
        name, sep, values = item.partition("=")
        if not sep or not name or not values:
            raise UsageError(f"--option {item!r} is not NAME=VALUE[,VALUE...]")
        options[name] = [_number(v) for v in values.split(",")]
    return options


def _number(text: str):
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _no_gpu(command: str, reason: str) -> int:
    print(f"python -m perf {command} needs a CUDA GPU to take timings: {reason}. "
          "Run it on a GPU machine; `python -m perf plot` works here from an existing CSV.", file=sys.stderr)
    return NO_GPU_EXIT


def cmd_run(args) -> int:
    import torch

    from perf import bench

    found = bench.cases(args.layer, args.shapes, batch=args.batch, dtype=args.dtype,
                        channels_last=args.channels_last, options=_parse_options(args))
    if args.list:
        for case in found:
            flops, bytes_ = bench.work_of(case.spec, args.pass_)
            unfused = bench.unfused_bytes_of(case.spec, args.pass_)
            print(f"{case.layer:10s} {case.shape_set:16s} {case.label:18s} {case.spec.describe():36s} "
                  f"x{case.count}  {flops / 1e9:9.2f} GFLOP  {bytes_ / 1e6:9.2f} MB"
                  + (f" (unfused {unfused / 1e6:.2f} MB)" if unfused else ""))
        return 0
    reason = bench.gpu_missing_reason()
    if reason:
        return _no_gpu("run", reason)
    device = torch.device("cuda", torch.cuda.current_device())
    rows = bench.measure(found, dtype=args.dtype, pass_=args.pass_, backends=args.backends, device=device,
                         progress=not args.no_progress, sink=lambda case_rows: results.append(case_rows, args.csv))
    _summary(rows)
    print(f"\n{len(rows)} rows appended to {args.csv}")
    return 0


def _summary(rows: list[dict]) -> None:
    """One line per row: time, TFLOP/s and GB/s of the layer's compulsory bytes (the same work for every
    backend), and the MB moved: the layer's compulsory bytes, and the unfused formulation's where it has one."""
    print(f"\n{'layer':10s} {'label':18s} {'shape':36s} {'backend':9s} {'ms p50':>9s} {'TFLOP/s':>8s} {'GB/s':>7s} "
          f"{'MB (unfused)':>16s}  status")
    for row in rows:
        ms = row["ms_p50"]
        rate = f"{row['flops'] / (ms * 1e-3) / 1e12:8.1f}" if ms is not None else f"{'-':>8s}"
        bandwidth = f"{row['bytes'] / (ms * 1e-3) / 1e9:7.0f}" if ms is not None else f"{'-':>7s}"
        moved = f"{row['bytes'] / 1e6:.1f}" + (f" ({row['unfused_bytes'] / 1e6:.1f})" if row["unfused_bytes"] else "")
        timed = f"{ms:9.4f}" if ms is not None else f"{'-':>9s}"
        status = row["status"] if row["status"] == "ok" else f"failed: {row['note']}"
        print(f"{row['layer']:10s} {row['label']:18s} {row['shape']:36s} {row['backend']:9s} {timed} {rate} "
              f"{bandwidth} {moved:>16s}  {status}")


def cmd_ceilings(args) -> int:
    import torch

    from perf import bench

    reason = bench.gpu_missing_reason()
    if reason:
        return _no_gpu("ceilings", reason)
    entry = ceilings.measure(torch.device("cuda", torch.cuda.current_device()))
    ceilings.save(entry, args.out)
    rates = ", ".join(f"{k} {v:.0f}" for k, v in entry["matmul_tflop_s"].items())
    print(f"{entry['gpu']}: {entry['bandwidth_tb_s']:.2f} TB/s; matmul TFLOP/s: {rates}\nstored in {args.out}")
    return 0


def cmd_plot(args) -> int:
    from perf import plots

    written = plots.plot_all(args.csv, args.out, ceilings_path=args.ceilings, gpu=args.gpu, dtype=args.dtype,
                             pass_=args.pass_, layer=args.layer, commit=args.commit)
    for path in written:
        print(path)
    return 0


def cmd_audit(args) -> int:
    from perf import audit, bench

    layers = audit.resolve_layers(args.layer)
    options = {"p": args.p} if args.p is not None else {}
    selected = audit.select(layers, args.shapes, batch=args.batch, dtype=bench.DTYPES[args.dtype],
                            channels_last=args.channels_last, options=options, first_only=args.first_shape)
    if args.list:
        for case in selected:
            kernels = " ".join(kernel for _, kernel in audit.kernel_passes(audit.adapters()[case.layer].operator))
            print(f"{case.layer:10s} {case.shape_set:14s} {case.label:18s} {case.spec.describe():40s} {kernels}")
        print(f"{len(selected)} specs; nothing compiled (--list)")
        return 0
    try:
        kernel_rows, call_rows = audit.run(selected, all_tiles=args.all_tiles, calls=not args.no_calls)
    except audit.NotCompilable as error:
        print(f"python -m perf audit: {error}", file=sys.stderr)
        return 2
    paths = audit.write(kernel_rows, call_rows, args.out)
    print()
    print(audit.console_table(kernel_rows, call_rows))
    print("\nwritten: " + ", ".join(_rel(path) for path in paths))
    return 0


def cmd_host(args) -> int:
    import torch

    from perf import audit, bench, host
    from tritonconv import env

    if args.calls < 1 or args.rounds < 1:
        raise UsageError(f"--calls {args.calls} and --rounds {args.rounds} must be positive integers")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type not in ("cuda", "cpu"):
        raise UsageError(f"--device {args.device}: expected cuda or cpu")
    if device.type == "cuda" and not torch.cuda.is_available():
        return _no_gpu("host --device cuda", "torch.cuda.is_available() is False")
    if device.type == "cpu" and env.triton_interpret():
        raise UsageError("TRITON_INTERPRET is set: the CPU measurement records the JIT's launches; unset it")
    if args.stand_in_launch and device.type == "cuda":
        raise UsageError("--stand-in-launch replaces the launches of CPU tensors: add --device cpu")
    selected = audit.select(audit.resolve_layers(args.layer), args.shapes, batch=128,
                            dtype=bench.DTYPES[args.dtype], channels_last=args.channels_last,
                            first_only=not args.all_specs)
    if args.list:
        for case in selected:
            print(f"{case.layer:10s} {case.shape_set:14s} {case.label:18s} {case.spec.describe()}")
        print(f"{len(selected)} specs on {device}; nothing measured (--list)")
        return 0
    rows = host.run(selected, device, rounds=args.rounds, calls=args.calls, stand_in=args.stand_in_launch)
    host.write(rows, args.out)
    print(host.table(rows))
    print(f"\n{rows[0]['timing']}\nwritten: {_rel(args.out)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command = {"run": cmd_run, "ceilings": cmd_ceilings, "plot": cmd_plot, "audit": cmd_audit,
               "host": cmd_host}[args.command]
    try:
        return command(args)
    except UsageError as error:
        print(f"python -m perf {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
