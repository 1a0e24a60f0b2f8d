"""Compile every Triton kernel exactly as our launchers call it, for an H100 (sm_90), with no GPU.

The interpreter accepts kernels that the GPU compiler rejects (globals that are not tl.constexpr,
run-time values in tl.static_range, tiles that need more shared memory than the chip has). This
script runs each operator's launchers on small CPU tensors with launching replaced by recording, then
compiles each recorded launch down to machine code for sm_90. Run it without TRITON_INTERPRET;
``tests/test_gpu_compile.py`` does. Prints one line per kernel; exits 1 if any fails.
"""

import os
import sys
from dataclasses import replace

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from triton.runtime.jit import JITFunction

TARGET = GPUTarget("cuda", 90, 32)
SHARED_MEMORY_LIMIT = 232448  # bytes per block on an H100
POINTER_TYPES = {torch.float16: "*fp16", torch.bfloat16: "*bf16", torch.float32: "*fp32", torch.float64: "*fp64",
                 torch.int32: "*i32", torch.int64: "*i64"}

launches = []


def _record(kernel, *args, grid, warmup, **kwargs):
    launches.append((kernel, args, kwargs))


def _signature(kernel: JITFunction, args, kwargs):
    values = dict(zip(kernel.arg_names, args))
    values.update({k: v for k, v in kwargs.items() if k in kernel.arg_names})
    signature, constexprs = {}, {}
    for index, param in enumerate(kernel.params):
        value = values.get(param.name, param.default)
        if param.is_constexpr or value is None:
            signature[param.name] = "constexpr"
            constexprs[(index,)] = value
        elif isinstance(value, torch.Tensor):
            signature[param.name] = POINTER_TYPES[value.dtype]
        elif isinstance(value, bool):
            signature[param.name] = "i1"
        elif isinstance(value, int):
            signature[param.name] = "i32" if -2**31 <= value < 2**31 else "i64"
        else:
            signature[param.name] = "fp32"
    return signature, constexprs


def record_launches(dtype: str) -> None:
    from tritonconv.ops.registry import HARNESSES
    from tritonconv.ops.shuffle import launch as shuffle_launch
    from tritonconv.ops.shuffle.spec import ShuffleConvSpec

    cpu = torch.device("cpu")
    for harness in HARNESSES.values():
        _, _, spec = harness.specs_for(harness.shape_sets[0], batch=2, dtype=dtype)[0]
        work = harness.make_workload(replace(harness.shrink(spec), dtype=dtype), cpu)
        for kernels in harness.operator.kernels_of_pass.values():
            for kernel in kernels:
                harness.triton(kernel, work, harness.operator.default_tile(spec, kernel))()
    # The shuffle conv has no harness (it is not tuned on its own): call its launchers directly.
    spec = ShuffleConvSpec(2, 12, 12, 5, 4, groups=3, shuffle_groups=3, bias=True, dtype=dtype)
    x = torch.randn(*spec.input_shape, dtype=spec.torch_dtype)
    weight = torch.randn(spec.out_channels, spec.group_in, 1, 1, dtype=spec.torch_dtype)
    dy = torch.randn(*spec.output_shape, dtype=spec.torch_dtype)
    shuffle_launch.forward(x, weight, torch.zeros(12, dtype=spec.torch_dtype), spec,
                           shuffle_launch.default_tile(spec, "forward"))
    shuffle_launch.backward_input(dy, weight, spec, shuffle_launch.default_tile(spec, "backward_input"), x)
    shuffle_launch.backward_weight(dy, x, spec, shuffle_launch.default_tile(spec, "backward_weight"))


def main() -> int:
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("run without TRITON_INTERPRET: the interpreter replaces the kernels being compiled")
        return 2
    JITFunction.run = _record
    failures = 0
    seen = set()
    for dtype in sys.argv[1:] or ["bfloat16", "float32"]:
        launches.clear()
        record_launches(dtype)
        for kernel, args, kwargs in launches:
            signature, constexprs = _signature(kernel, args, kwargs)
            key = (kernel.__name__, tuple(sorted(signature.items())), tuple(sorted(map(str, constexprs.items()))))
            if key in seen:
                continue
            seen.add(key)
            options = {"num_warps": kwargs.get("num_warps", 4), "num_stages": kwargs.get("num_stages", 3)}
            label = f"{kernel.__name__} {dtype} {options}"
            try:
                compiled = triton.compile(ASTSource(kernel, signature, constexprs), target=TARGET, options=options)
            except Exception as error:  # the compiler's own error is the report
                cause = error
                while cause.__cause__ is not None:
                    cause = cause.__cause__
                print(f"FAIL {label}: {type(cause).__name__}: {str(cause).strip().splitlines()[-1][:300]}")
                failures += 1
                continue
            shared = compiled.metadata.shared
            if shared > SHARED_MEMORY_LIMIT:
                print(f"FAIL {label}: needs {shared} bytes of shared memory, the H100 has {SHARED_MEMORY_LIMIT}")
                failures += 1
            else:
                print(f"ok   {label}: {shared} bytes of shared memory")
    print(f"{len(seen)} kernels compiled for sm_90, {failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
