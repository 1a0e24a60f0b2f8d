"""Command line of the tuner: shape sets in, a table out, winners into the persistent cache."""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import inspect
import json
from pathlib import Path

import pandas as pd
import torch
from tqdm import tqdm

from tritonconv import distributed, env, hardware, zoo
from tritonconv.ops.registry import ADAPTERS
from tritonconv.tuner import export_cache, import_cache, share_tuning, tune_pass, validate_candidates
from tritonconv.tuner import tune as model_tune
from tritonconv.tuning_cache import CacheImportError, CacheWriteError, TuningCache

DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
PASSES = {"fwd": ("forward",), "bwd": ("backward",), "both": ("forward", "backward")}

DESCRIPTION = """\
Tune tritonconv's Triton kernels for every convolution shape of a real network, once per GPU.

For each shape it times every candidate tile of each kernel (after checking its output against the
fallback computed in float64) and the fallback (the published multi-call cuDNN formulation), and
stores the winner with all timings in the persistent tuning cache. Later processes read the cache:
a second run pays no tuning time and reports 'hit'. Batch sizes share an entry per power-of-two
bucket. Cache: $TRITONCONV_CACHE_DIR/tuning.json (default ~/.cache/tritonconv/tuning.json), or --cache.

Without a GPU nothing is timed and the cache is not written: every candidate tile is checked against
the reference under Triton's interpreter on a shrunk copy of each shape, and the FLOP/parameter table
is printed.

Under torchrun (WORLD_SIZE > 1) the ranks split the shapes: each is measured by one rank of its GPU
kind (each rank on the GPU LOCAL_RANK), every rank stores every winner, and rank 0 prints the table.
"""

EPILOG = """\
examples:
  python -m autotune --layer hetconv --shapes vgg16
  python -m autotune --layer hetconv --shapes resnet50 --p 8 --dtype fp16 --batch 64
  python -m autotune --layer hetconv --shapes my_shapes.json
  python -m autotune --model torchvision.models:mobilenet_v2 --input-shape 64,3,224,224   # a converted one
  python -m autotune --export tuned.json      # ship it; on the other machine: --import tuned.json
  torchrun --nproc-per-node 8 -m autotune --layer hetconv --shapes resnet50   # 8 GPUs share the work
      my_shapes.json: [{"in_channels": 64, "out_channels": 128, "height": 56, "width": 56,
                        "kernel_size": 3, "stride": 1, "name": "block1"}, ...]
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m autotune", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layer", choices=sorted(ADAPTERS), help="which layer's kernels to tune")
    parser.add_argument("--shapes",
                        help="a shape set of the layer (hetconv: vgg16 = CIFAR-10 32x32 + ImageNet 224x224, "
                             "vgg16_cifar, vgg16_imagenet, resnet50) or a JSON file listing convolutions")
    parser.add_argument("--p", type=int, default=4,
                        help="HetConv: part of the channels with k x k kernels is 1/p (default 4)")
    parser.add_argument("--batch", type=int, default=128,
                        help="batch size (default 128; tuned per power-of-two bucket)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16", help="data type (default bf16)")
    parser.add_argument("--channels-last", action="store_true", help="tune for channels_last (NHWC) inputs")
    parser.add_argument("--pass", dest="passes", choices=sorted(PASSES), default="both",
                        help="forward, backward or both (default)")
    parser.add_argument("--force", action="store_true", help="re-measure shapes already in the cache")
    parser.add_argument("--max-tiles", type=int, default=None, help="try only the first N candidate tiles per kernel")
    parser.add_argument("--cache", type=Path, default=None,
                        help="cache file (default: $TRITONCONV_CACHE_DIR/tuning.json)")
    parser.add_argument("--model", metavar="PKG.MODULE:FACTORY",
                        help="tune every tritonconv layer call of the model FACTORY() returns (instead of "
                             "--layer/--shapes); needs --input-shape")
    parser.add_argument("--input-shape", metavar="N,C,H,W", help="with --model: the example input's shape")
    shipping = parser.add_mutually_exclusive_group()
    shipping.add_argument("--export", type=Path, metavar="FILE",
                          help="write the cache's entries to FILE (to ship with a model or to another machine)")
    shipping.add_argument("--import", dest="import_", type=Path, metavar="FILE",
                          help="merge FILE (written by --export) into the cache; every entry is checked first "
                               "and a bad file is refused with the cache untouched")
    return parser


def load_shape_file(path: Path) -> list[zoo.ConvLayer]:
    try:
        entries = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise SystemExit(f"--shapes {path}: cannot read a JSON list of convolutions ({error})")
    if not isinstance(entries, list) or not entries:
        raise SystemExit(f"--shapes {path}: expected a non-empty JSON list of convolutions")
    layers = []
    for i, entry in enumerate(entries):
        try:
            layers.append(zoo.ConvLayer(
                name=str(entry.get("name", f"conv{i}")), in_channels=int(entry["in_channels"]),
                out_channels=int(entry["out_channels"]), kernel_size=int(entry.get("kernel_size", 3)),
                stride=int(entry.get("stride", 1)), height=int(entry["height"]), width=int(entry["width"]),
                groups=int(entry.get("groups", 1))))
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise SystemExit(f"--shapes {path}: entry {i} ({entry!r}) needs in_channels, out_channels, height, "
                             f"width (kernel_size, stride, name optional): {error}")
    return layers


def resolve_specs(adapter, args) -> list:
    shape_set = args.shapes
    if shape_set.endswith(".json"):
        shape_set = load_shape_file(Path(shape_set))
    elif shape_set not in adapter.shape_sets:
        raise SystemExit(f"--shapes {shape_set!r} is not a shape set of --layer {args.layer}; expected one of "
                         f"{', '.join(adapter.shape_sets)} or a .json file")
    options = {"p": args.p}
    accepted = inspect.signature(adapter.specs_for).parameters
    options = {name: value for name, value in options.items() if name in accepted}
    try:
        specs = adapter.specs_for(shape_set, batch=args.batch, dtype=DTYPES[args.dtype],
                                  channels_last=args.channels_last, **options)
    except (TypeError, ValueError) as error:
        raise SystemExit(f"--shapes {args.shapes}: {error}")
    if not specs:
        raise SystemExit(f"--shapes {args.shapes}: no convolution there fits --layer {args.layer} with these options")
    return specs


def _say(text: str) -> None:
    """Print on rank 0 only: under torchrun every rank holds the same table."""
    if distributed.rank() == 0:
        print(text)


@contextlib.contextmanager
def _ranks():
    """Under torchrun (WORLD_SIZE > 1) without a process group yet: join one for the duration, each
    rank on the GPU LOCAL_RANK. Gloo, whatever the GPUs: the tuner only exchanges a few small tables."""
    import torch.distributed as dist
    if env.launched_world_size() <= 1 or not dist.is_available() or dist.is_initialized():
        yield
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(env.local_rank())
    dist.init_process_group("gloo")
    try:
        yield
    finally:
        dist.destroy_process_group()


def _params(spec) -> int | None:
    return spec.parameter_count() if hasattr(spec, "parameter_count") else None


def tune(adapter, specs, args, device) -> pd.DataFrame:
    cache = TuningCache(args.cache) if args.cache else TuningCache()
    jobs = [(label, count, spec, pass_) for label, count, spec in specs for pass_ in PASSES[args.passes]]
    keys = [adapter.operator.cache_key(spec, pass_, device) for _, _, spec, pass_ in jobs]
    work = {key: functools.partial(tune_pass, adapter, spec, pass_, device, cache, force=args.force,
                                   max_tiles=args.max_tiles) for key, (_, _, spec, pass_) in zip(keys, jobs)}
    description = f"tuning {args.layer} on {hardware.device_name_of(device)}"
    results = share_tuning(work, cache, progress=functools.partial(tqdm, desc=description, unit="pass"))
    rows, not_saved = [], None
    for key, (label, count, spec, pass_) in zip(keys, jobs):
        result = results[key]
        best = "+".join(f"{tile['block_rows']}x{tile['block_cols']}x{tile['block_reduce']}w{tile['num_warps']}"
                        f"s{tile['num_stages']}" for tile in result.tiles.values()) or "-"
        rows.append({"shape": f"{label}: {spec.describe()}", "pass": pass_, "GFLOPs": spec.cost().flops / 1e9,
                     "best config": best, "triton ms": result.triton_ms, "fallback ms": result.fallback_ms,
                     "speedup": result.speedup, "winner": result.winner,
                     "cache": "hit" if result.cache_hit else "not saved" if result.not_saved else "new",
                     "failed tiles": len(result.failed)})
        not_saved = not_saved or result.not_saved
    _say(f"cache: {cache.path}" + (f" (NOT SAVED: {not_saved})" if not_saved else ""))
    return pd.DataFrame(rows)


def validate(adapter, specs, args, device) -> tuple[pd.DataFrame, dict]:
    _say("No CUDA GPU: nothing is timed and the tuning cache is not written. Checking every candidate tile "
          "against the float64 reference under Triton's interpreter, on a shrunk copy of each shape.")
    rows, failures, seen = [], {}, set()
    jobs = [(label, count, spec, pass_) for label, count, spec in specs for pass_ in PASSES[args.passes]]
    keys = [adapter.operator.cache_key(spec, pass_, device) for _, _, spec, pass_ in jobs]
    work = {key: functools.partial(validate_candidates, adapter, spec, pass_, device, max_tiles=args.max_tiles,
                                   seen=seen) for key, (_, _, spec, pass_) in zip(keys, jobs)}
    checked = distributed.share({str(key): thunk for key, thunk in work.items()},
                                progress=functools.partial(tqdm, desc="checking candidates", unit="pass"))
    for key, (label, count, spec, pass_) in zip(keys, jobs):
        failures.update({f"{label} {pass_} {name}": why for name, why in checked[str(key)].items()})
    for label, count, spec in specs:
        cost, dense = spec.cost(), (spec.dense_cost() if hasattr(spec, "dense_cost") else None)
        rows.append({"shape": f"{label}: {spec.describe()}", "count": count, "GFLOPs": cost.flops / 1e9,
                     "dense GFLOPs": dense.flops / 1e9 if dense else None,
                     "FLOP ratio": cost.flops / dense.flops if dense else None,
                     "params": _params(spec), "MB moved": cost.bytes / 1e6})
    return pd.DataFrame(rows), failures


def load_model(target: str) -> torch.nn.Module:
    module_name, _, factory = target.partition(":")
    if not module_name or not factory:
        raise SystemExit(f"--model {target}: expected pkg.module:factory")
    try:
        build = getattr(importlib.import_module(module_name), factory)
    except (ImportError, AttributeError) as error:
        raise SystemExit(f"--model {target}: {error}")
    model = build()
    if not isinstance(model, torch.nn.Module):
        raise SystemExit(f"--model {target}: {factory}() returned {type(model).__name__}, not a torch module")
    return model


def parse_shape(text: str | None) -> tuple[int, ...]:
    try:
        shape = tuple(int(size) for size in (text or "").split(","))
    except ValueError:
        shape = ()
    if not shape or min(shape) < 1:
        raise SystemExit(f"--input-shape {text}: expected positive sizes separated by commas, e.g. 8,3,224,224")
    return shape


def tune_a_model(args) -> int:
    """--model: ``tritonconv.tune`` on the factory's model and a random input of --input-shape."""
    model, shape = load_model(args.model), parse_shape(args.input_shape)
    on_gpu = torch.cuda.is_available() and not env.triton_interpret()
    device, dtype = torch.device("cuda" if on_gpu else "cpu"), getattr(torch, DTYPES[args.dtype])
    model = model.to(device=device, dtype=dtype)
    x = torch.randn(shape, device=device, dtype=dtype)
    if args.channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    if not on_gpu:
        _say("No CUDA GPU: nothing is timed and the tuning cache is not written. Checking every candidate tile "
              "against the float64 reference under Triton's interpreter, on a shrunk copy of each shape.")
    table = model_tune(model, x, PASSES[args.passes], args.force, max_tiles=args.max_tiles,
                       cache=TuningCache(args.cache) if args.cache else None)
    if table.empty:
        _say(f"--model {args.model}: it made no tritonconv layer call on an input of shape {shape}")
        return 1
    failures = {f"{row.module} {row._asdict()['pass']} {name}": why for row in table.itertuples()
                for name, why in (getattr(row, "failures", None) or {}).items()}
    _say(table.drop(columns=["failures"], errors="ignore").to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    if failures:
        _say(f"\n{len(failures)} candidate tiles FAILED:")
        for name, why in failures.items():
            _say(f"  {name}: {why}")
        return 1
    if not on_gpu:
        _say("\nall candidate tiles match the reference")
    return 0


def ship(args) -> int:
    """--export / --import."""
    cache = TuningCache(args.cache) if args.cache else TuningCache()
    try:
        if args.export:
            count = export_cache(args.export, cache)
            print(f"exported {count} entries of {cache.path} to {args.export}")
        else:
            count = import_cache(args.import_, cache)
            print(f"imported {count} entries of {args.import_} into {cache.path}")
    except (CacheImportError, CacheWriteError) as error:
        raise SystemExit(str(error))
    return 0


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.export or args.import_:
        return ship(args)
    if not args.model and (not args.layer or not args.shapes):
        parser.error("--layer and --shapes are required (or --model, or --export / --import FILE)")
    with _ranks():
        return tune_a_model(args) if args.model else tune_shapes(args)


def tune_shapes(args) -> int:
    """--layer/--shapes: time every shape on a GPU, or check every candidate without one."""
    if args.batch < 1:
        raise SystemExit(f"--batch {args.batch}: expected a positive batch size")
    if args.p < 1:
        raise SystemExit(f"--p {args.p}: expected a positive integer")
    adapter = ADAPTERS[args.layer]
    specs = resolve_specs(adapter, args)
    pd.set_option("display.width", 200)
    pd.set_option("display.max_columns", 20)
    if torch.cuda.is_available() and not env.triton_interpret():
        table = tune(adapter, specs, args, torch.device("cuda"))
        _say(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
        return 0
    table, failures = validate(adapter, specs, args, torch.device("cpu"))
    _say(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    if failures:
        _say(f"\n{len(failures)} candidate tiles FAILED:")
        for name, why in failures.items():
            _say(f"  {name}: {why}")
        return 1
    _say("\nall candidate tiles match the reference")
    return 0
