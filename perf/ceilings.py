"""The GPU's measured ceilings for the roofline: memory bandwidth and matmul rate per precision.

Measured once per GPU (``python -m perf ceilings``) rather than taken from a datasheet, and kept in
``perf/results/ceilings.json`` by GPU name so several devices' ceilings live side by side.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import torch

from perf import results
from tritonconv import hardware

CEILINGS_JSON = results.RESULTS_DIR / "ceilings.json"
COPY_BYTES = 1 << 30  # 1 GiB copied: far past any L2, so the copy runs at device-memory speed
MATMUL_SIZE = 8192  # n x n x n: large enough to fill an H100's tensor cores
# Ceiling name -> (dtype, tf32 allowed). tf32 is the tensor-core fp32 mode torch and our kernels use
# when allowed; fp32 is the plain CUDA-core rate.
MATMUL_PRECISIONS = {"bf16": (torch.bfloat16, False), "fp16": (torch.float16, False),
                     "tf32": (torch.float32, True), "fp32": (torch.float32, False)}

# Used by the plots when ceilings.json has no entry for a GPU (see /work/shared/PLATFORM.md): measured
# copy bandwidth and bf16/fp16 rate on our H100; tf32 and fp32 are datasheet figures.
PLATFORM_H100 = {"gpu": "H100 SXM (PLATFORM.md)", "bandwidth_tb_s": 3.0,
                 "matmul_tflop_s": {"bf16": 798.0, "fp16": 798.0, "tf32": 495.0, "fp32": 67.0}}


def measure(device: torch.device, timer: Callable | None = None, *, copy_bytes: int = COPY_BYTES,
            matmul_size: int = MATMUL_SIZE) -> dict:
    """Bandwidth (TB/s, bytes read plus written) and matmul TFLOP/s per precision on ``device``.

    ``timer(fn)`` returns the median time in ms (``triton.testing.do_bench`` by default); the sizes
    are parameters so the arithmetic can be checked on small tensors."""
    if timer is None:
        from triton.testing import do_bench

        def timer(fn):
            return do_bench(fn, return_mode="median")

    def copy_ms():
        src = torch.randn(copy_bytes // 4, device=device)  # random, never zeros
        dst = torch.empty_like(src)
        return timer(lambda: dst.copy_(src))

    def matmul_ms(dtype):
        a = torch.randn(matmul_size, matmul_size, device=device, dtype=dtype)
        b = torch.randn(matmul_size, matmul_size, device=device, dtype=dtype)
        return timer(lambda: a @ b)

    # Each measurement allocates inside its own function, so its buffers are freed before the next.
    bandwidth = 2 * copy_bytes / (copy_ms() * 1e-3) / 1e12
    rates = {}
    saved = torch.backends.cuda.matmul.allow_tf32
    try:
        for name, (dtype, tf32) in MATMUL_PRECISIONS.items():
            torch.backends.cuda.matmul.allow_tf32 = tf32
            rates[name] = 2 * matmul_size**3 / (matmul_ms(dtype) * 1e-3) / 1e12
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved
    torch.cuda.empty_cache()
    return {"gpu": hardware.device_name_of(device), **hardware.versions(), "timestamp": results.utc_now(),
            "bandwidth_tb_s": bandwidth, "matmul_tflop_s": rates,
            "method": f"device-to-device copy of {copy_bytes} bytes (read + write counted); "
                      f"{matmul_size}^3 torch.matmul on random inputs; median time"}


def load(path: Path | str = CEILINGS_JSON) -> dict:
    """GPU name -> its ceilings (empty if the file does not exist)."""
    path = Path(path)
    if not path.exists():
        return {}
    return json.loads(path.read_text())


def save(entry: dict, path: Path | str = CEILINGS_JSON) -> dict:
    """Store ``entry`` under its GPU, replacing that GPU's earlier measurement."""
    path = Path(path)
    data = load(path)
    data[entry["gpu"]] = entry
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    return data


def roofs(ceilings: dict, gpu: str, dtype: str, tf32: bool) -> tuple[float, float, str | None]:
    """(bandwidth TB/s, compute TFLOP/s, None) for ``gpu`` at ``dtype`` (bf16/fp16/fp32), or the
    PLATFORM.md H100 values and a sentence saying so when ``gpu`` was not measured."""
    precision = "tf32" if dtype == "fp32" and tf32 else dtype
    entry = ceilings.get(gpu)
    if entry is not None:
        return entry["bandwidth_tb_s"], entry["matmul_tflop_s"][precision], None
    return (PLATFORM_H100["bandwidth_tb_s"], PLATFORM_H100["matmul_tflop_s"][precision],
            f"roofs: H100 values from PLATFORM.md ({gpu} not in ceilings.json)")
