"""``tritonconv._launcher``: launches that skip Triton's binder on a GPU. The direct call itself runs only
on CUDA (the GPU tier runs every layer through it); here, its bookkeeping with a stand-in compiled kernel,
and, on every launch our layers make, that the arguments it passes are the binder's, in its order."""

import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import tritonconv
from tritonconv import _launcher

from layer_cases import CASES

REPO = Path(__file__).resolve().parents[1]


class FakeCompiled:
    function, packed_metadata = "function", "metadata"

    def __init__(self):
        self.runs = []

    def launch_metadata(self, grid, stream, *values):
        return None

    def run(self, *args):
        self.runs.append(args)


class FakeKernel:
    """A JIT kernel as ``launch`` sees it: ``kernel[grid](*args, **kwargs)`` compiles (counted) and
    returns the compiled kernel; ``signature`` its parameters."""

    pre_run_hooks = []

    def __init__(self):
        self.used_global_vals = {}
        def kernel(x_ptr, w_ptr, n, m, y_ptr, BLOCK: int, FLAG: bool = False):
            pass
        self.signature = inspect.signature(kernel)
        self.compiled, self.launches = FakeCompiled(), []

    def __getitem__(self, grid):
        def run(*args, **kwargs):
            self.launches.append((grid, args, kwargs))
            return self.compiled
        return run


class FakeDriver:
    class active:
        @staticmethod
        def get_current_device():
            return 0

        @staticmethod
        def get_current_stream(device):
            return 7


def test_the_second_launch_calls_the_compiled_kernel_with_the_parameters_in_order(monkeypatch):
    monkeypatch.setattr(_launcher, "_direct", lambda kernel, tensors: True)
    monkeypatch.setattr(_launcher, "driver", FakeDriver)
    _launcher.clear()
    kernel = FakeKernel()
    x, w, y = torch.zeros(8), torch.zeros(8), torch.zeros(8)
    constexprs = {"BLOCK": 64, "num_warps": 4}
    # the pointers at parameters 0, 1 and 4, the integers between
    _launcher.launch(kernel, (3,), (x, w, y), (5, 6), constexprs, positions=(0, 1, 4))
    assert len(kernel.launches) == 1 and kernel.launches[0][1] == (x, w, 5, 6, y)
    x2, w2, y2 = torch.ones(8), torch.ones(8), torch.ones(8)
    _launcher.launch(kernel, (3, 2), (x2, w2, y2), (5, 6), constexprs, positions=(0, 1, 4))
    assert len(kernel.launches) == 1  # no second compile-and-bind
    (run,) = kernel.compiled.runs
    assert run[:7] == (3, 2, 1, 7, "function", "metadata", None)
    assert run[9:] == (x2, w2, 5, 6, y2, 64, False)  # every parameter, constexprs and defaults included
    # other integers, a misaligned pointer, another dtype: each goes through Triton once
    _launcher.launch(kernel, (3,), (x2, w2, y2), (5, 7), constexprs, positions=(0, 1, 4))
    _launcher.launch(kernel, (3,), (x2[1:], w2, y2), (5, 6), constexprs, positions=(0, 1, 4))
    _launcher.launch(kernel, (3,), (x2.double(), w2, y2), (5, 6), constexprs, positions=(0, 1, 4))
    assert len(kernel.launches) == 4 and len(kernel.compiled.runs) == 1
    prepared = next(iter(_launcher._cache.values()))
    assert all(value is None for value in (prepared.template[slot] for slot in prepared.slots))  # no tensor kept
    # a global the kernel read has changed since it was compiled: back through Triton (which raises)
    scope = {"SCALE": 2}
    kernel.used_global_vals = {("SCALE", 0): (1, scope)}
    _launcher.launch(kernel, (3,), (x2, w2, y2), (5, 6), constexprs, positions=(0, 1, 4))
    assert len(kernel.launches) == 5 and len(kernel.compiled.runs) == 1
    _launcher.clear()


def test_leading_tensors_take_the_template_rest(monkeypatch):
    """Tensors first (positions None, the launchers' usual order): the second launch passes them, then
    the integers, constexprs and defaults, exactly as the general slot filling would."""
    monkeypatch.setattr(_launcher, "_direct", lambda kernel, tensors: True)
    monkeypatch.setattr(_launcher, "driver", FakeDriver)
    _launcher.clear()

    class Leading(FakeKernel):
        def __init__(self):
            super().__init__()
            def kernel(x_ptr, y_ptr, n, m, BLOCK: int, FLAG: bool = True):
                pass
            self.signature = inspect.signature(kernel)

    kernel, x, y = Leading(), torch.zeros(8), torch.zeros(8)
    for _ in range(2):
        _launcher.launch(kernel, (2,), (x, y), (5, 6), {"BLOCK": 32, "num_warps": 4})
    (run,) = kernel.compiled.runs
    assert tuple(run[9:]) == (x, y, 5, 6, 32, True)
    _launcher.clear()


def test_what_the_direct_path_cannot_repeat_goes_through_triton(monkeypatch):
    """A grid computed by a function, a launch Triton did not compile here (a user's cache hook returns
    None) and a tensor among the constexprs are never kept."""
    monkeypatch.setattr(_launcher, "_direct", lambda kernel, tensors: True)
    monkeypatch.setattr(_launcher, "driver", FakeDriver)
    _launcher.clear()
    kernel, x = FakeKernel(), torch.zeros(4)
    for _ in range(2):
        _launcher.launch(kernel, lambda meta: (1,), (x,), (5, 6), {"BLOCK": 8})
        _launcher.launch(kernel, (1,), (x,), (5, 6), {"BLOCK": 8, "FLAG": x})
    kernel.compiled = None
    for _ in range(2):
        _launcher.launch(kernel, (1,), (x,), (5, 7), {"BLOCK": 8})
    assert len(kernel.launches) == 6 and not _launcher._cache


def test_cpu_tensors_and_the_interpreter_take_the_plain_launch():
    kernel = FakeKernel()
    x, y = torch.zeros(2), torch.zeros(2)
    for _ in range(2):
        _launcher.launch(kernel, (1,), (x, None, y), (3, 4), {"BLOCK": 8})
    assert [(grid, [id(a) for a in args], kwargs) for grid, args, kwargs in kernel.launches] == (
        [((1,), [id(x), id(None), id(y), id(3), id(4)], {"BLOCK": 8})] * 2)
    assert not kernel.compiled.runs


@pytest.mark.parametrize("variable, switch", [("TRITONCONV_DIRECT_LAUNCH", "direct_launch"),
                                              ("TRITONCONV_REPLAY", "replay")])
def test_the_launch_switches_are_validated(monkeypatch, variable, switch):
    from tritonconv import env

    for value, expected in (("0", False), ("1", True), ("", True)):
        monkeypatch.setenv(variable, value)
        assert getattr(env, switch)() is expected
    monkeypatch.setenv(variable, "yes")
    with pytest.raises(ValueError, match=f"{variable}='yes'"):
        getattr(env, switch)()


CHECK = r"""
import json, torch
from perf import audit
from tritonconv import _launcher
from tritonconv.ops.registry import ADAPTERS

calls = []
real = _launcher.launch
def spy(kernel, grid, tensors, integers, constexprs, positions=None):
    calls.append((kernel, tensors, integers, constexprs, positions))
    return real(kernel, grid, tensors, integers, constexprs, positions)
_launcher.launch = spy
for module in __import__("sys").modules.copy().values():
    if getattr(module, "launch", None) is real and module.__name__.startswith("tritonconv."):
        module.launch = spy

checked, problems = 0, []


def check(name, adapter, case):
    global checked
    for pass_ in adapter.operator.kernels_of_pass:
        calls.clear()
        audit.pass_launches_of(adapter, case, pass_)
        for kernel, tensors, integers, constexprs, positions in calls:
            args = _launcher._arguments(tensors, integers, positions)
            bound, specialization, _ = audit._binder(kernel)(*args, **audit._run_kwargs(audit.Launch(kernel, args,
                                                                                              constexprs, None)))
            ours = _launcher.parameter_values(kernel, args, constexprs)
            where = f"{name} {case.spec.describe()} {case.spec.dtype} {case.spec.channels_last} {kernel.__name__}"
            if [id(v) for v in ours] != [id(v) for v in bound.values()]:
                problems.append(f"{where}: parameter order")
            if type(integers) is not tuple or type(tensors) is not tuple:
                problems.append(f"{where}: tensors and integers must be tuples (the key hashes them)")
            if any(type(v) is not int for v in integers):
                problems.append(f"{where}: a non-int integer argument {[type(v) for v in integers]}")
            slots = positions if positions is not None else range(len(tensors))
            for slot, tensor in zip(slots, tensors):
                aligned = "D" if tensor is not None and tensor.data_ptr() % 16 == 0 else ""
                if tensor is not None and specialization[slot][1] != aligned:
                    problems.append(f"{where}: pointer {slot} specialised {specialization[slot]}")
            hash(tuple(constexprs.items()))
            checked += 1


for name, adapter in ADAPTERS.items():
    for dtype in ("bfloat16", "float32"):
        for channels_last in (False, True):
            for shape_set in adapter.shape_sets:
                specs = adapter.specs_for(shape_set, batch=4, dtype=dtype, channels_last=channels_last)
                # every shape in bf16 channels_last (the launchers' branches its shapes take), else the first
                for label, _, spec in specs if (dtype, channels_last) == ("bfloat16", True) else specs[:1]:
                    check(name, adapter, audit.Case(name, shape_set, label, spec))
print(json.dumps({"checked": checked, "problems": problems[:20]}))
"""


def test_every_launch_passes_the_binders_parameters_and_only_int_scalars():
    """On every kernel launch of every layer's passes (every shape of its sets in bf16 channels_last, the
    first of each in bf16 NCHW and fp32 both layouts): the values ``launch`` would hand the compiled
    kernel are the binder's, in its order; the scalars in the key are Python ints (a bool or float equal
    to one would share its key and not its specialisation); the pointers' alignment is what the binder
    specialises; the constexprs hash."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", CHECK], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["checked"] > 100 and not result["problems"], result


@pytest.mark.gpu
@pytest.mark.parametrize("case", CASES, ids=str)
def test_direct_launches_give_what_triton_launches_give(case, monkeypatch):
    """Every layer's training step, its kernels called directly (the second step of each shape on) and
    through Triton's own launch (``_direct`` off): bit for bit the same outputs and gradients."""
    torch.manual_seed(0)
    module = case.build(device="cuda", dtype=torch.bfloat16).to(memory_format=torch.channels_last)
    x = torch.randn(case.input_shape, device="cuda", dtype=torch.bfloat16).contiguous(
        memory_format=torch.channels_last).requires_grad_()

    def step():
        with tritonconv.use_backend("triton"):
            out = module(x)
            return (out, *torch.autograd.grad(out.float().square().mean(), [x, *module.parameters()],
                                              allow_unused=True))

    _launcher.clear()
    step()  # the first launch of each kernel goes through Triton and is kept
    direct = step()
    assert _launcher._cache, "no launch was kept"
    monkeypatch.setattr(_launcher, "_direct", lambda kernel, tensors: False)
    through_triton = step()
    for a, b in zip(direct, through_triton):
        assert (a is None) == (b is None) and (a is None or torch.equal(a, b)), case
