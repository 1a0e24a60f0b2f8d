"""The perf suite on the CPU: CSV schema and de-duplication, the FLOP/byte model, plots from a fixture
CSV, the no-GPU exit, verification, and bench's non-timing pieces through Triton's interpreter."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from perf import UsageError, bench, ceilings, plots, results
from perf.__main__ import main
from tritonconv.ops.hetconv.spec import HetConvSpec
from tritonconv.ops.registry import ADAPTERS

REPO = Path(__file__).resolve().parent.parent
GPU = "NVIDIA H100 80GB HBM3"


def _row(**overrides) -> dict:
    """One CSV row of a FIXTURE: made-up numbers shaped like a real measurement, never committed."""
    row = {"layer": "hetconv", "shape": "64->64 k3 s1 p4 32x32 b64", "label": "conv2_32px", "shape_set": "vgg16",
           "count": 1, "backend": "triton", "dtype": "bf16", "pass": "fwd", "batch": 64, "channels_last": False,
           "tf32": True, "status": "ok", "max_rel_error": 4e-3, "note": "fixture", "tiles": "forward=128x64x32_w4_st3",
           "tuned": False, "ms_p20": 0.010, "ms_p50": 0.011, "ms_p80": 0.012, "flops": 1_610_612_736,
           "bytes": 16_801_792, "unfused_bytes": 58_720_256, "dense_flops": 4_831_838_208, "gpu": GPU,
           "torch": "2.11.0+cu130", "triton": "3.6.0", "commit": "abc1234", "timestamp": "2026-01-01T00:00:00+00:00"}
    row.update(overrides)
    return row


# ---- CSV --------------------------------------------------------------------------------------------
def test_schema_has_the_required_columns():
    required = {"layer", "shape", "backend", "dtype", "pass", "ms_p20", "ms_p50", "ms_p80", "flops", "bytes", "gpu",
                "torch", "triton", "commit", "timestamp", "batch", "label", "channels_last", "status"}
    assert required <= set(results.COLUMNS)
    assert set(results.KEY) <= set(results.COLUMNS)


def test_append_writes_schema_columns_in_order(tmp_path):
    csv = tmp_path / "bench.csv"
    results.append([_row()], csv)
    df = results.read(csv)
    assert list(df.columns) == list(results.COLUMNS)
    assert df.loc[0, "flops"] == 1_610_612_736 and df.loc[0, "ms_p50"] == pytest.approx(0.011)


def test_row_missing_a_column_is_refused(tmp_path):
    row = _row()
    del row["commit"]
    with pytest.raises(ValueError, match="commit"):
        results.append([row], tmp_path / "bench.csv")


def test_same_key_twice_keeps_the_newest(tmp_path):
    csv = tmp_path / "bench.csv"
    results.append([_row(ms_p50=0.020, timestamp="2026-01-02T00:00:00+00:00")], csv)
    results.append([_row(ms_p50=0.030, timestamp="2026-01-01T00:00:00+00:00")], csv)  # older: loses
    results.append([_row(ms_p50=0.011, timestamp="2026-01-03T00:00:00+00:00")], csv)
    df = results.read(csv)
    assert len(df) == 1
    assert df.loc[0, "ms_p50"] == pytest.approx(0.011)


def test_different_commit_or_gpu_keeps_history(tmp_path):
    csv = tmp_path / "bench.csv"
    # A commit of digits only must stay a string, not become the number 1234567.
    results.append([_row(commit="1234567")], csv)
    results.append([_row(commit="abc1234-dirty")], csv)
    results.append([_row(gpu="NVIDIA H200")], csv)
    df = results.read(csv)
    assert len(df) == 3
    assert sorted(df["commit"]) == ["1234567", "abc1234", "abc1234-dirty"]


def test_git_commit_outside_a_repository_is_unknown(tmp_path):
    assert results.git_commit(tmp_path) == "unknown"
    commit = results.git_commit()
    assert commit == "unknown" or len(commit.removesuffix("-dirty")) >= 7


# ---- FLOP / byte model ----------------------------------------------------------------------------
def test_work_model_matches_hand_count_for_hetconv():
    spec = HetConvSpec(1, 64, 64, 32, 32, 3, 1, 4)  # fp32, no bias
    ho = wo = 32
    n, m, k, p = 64, 64, 3, 4
    macs = ho * wo * n * (k * k * m // p + m - m // p)  # 1024 * 64 * (144 + 48)
    assert macs == 12_582_912
    params = n * (k * k * m // p) + n * (m - m // p)
    elements = 1 * m * 32 * 32 + 1 * n * ho * wo
    assert bench.work_of(spec, "fwd") == (2 * macs, (elements + params) * 4)
    # Each backward kernel does the forward's MACs and moves its compulsory bytes.
    assert bench.work_of(spec, "bwd") == (4 * macs, 2 * (elements + params) * 4)
    assert bench.work_of(spec, "fwd+bwd") == (6 * macs, 3 * (elements + params) * 4)
    assert bench.dense_flops_of(spec, "fwd") == 2 * ho * wo * n * k * k * m


# ---- plots ----------------------------------------------------------------------------------------
def _fixture_rows() -> list[dict]:
    """FIXTURE, not measured: triton's time follows the FLOPs of a --p sweep, cuDNN's barely moves."""
    rows = []
    convs = [("conv2_32px", 64, 32), ("conv4_16px", 128, 16), ("conv2_224px", 64, 224)]
    for label, channels, size in convs:
        for p in (2, 4, 8):
            spec = HetConvSpec(64, channels, channels, size, size, 3, 1, p, dtype="bfloat16")
            flops, bytes_ = bench.work_of(spec, "fwd")
            dense_flops = bench.dense_flops_of(spec, "fwd")
            triton_ms = max(flops / 450e12, bytes_ / 2.4e12) * 1e3  # well under the H100 roofs
            cudnn_ms = max(dense_flops / 600e12, bytes_ / 2.0e12) * 1e3 * (1.1 + 0.1 * p)
            for backend, ms in {"triton": triton_ms, "fallback": cudnn_ms, "compile": 0.95 * cudnn_ms,
                                "dense": max(dense_flops / 650e12, bytes_ / 2.6e12) * 1e3}.items():
                rows.append(_row(label=label, shape=spec.describe(), backend=backend, flops=flops, bytes=bytes_,
                                 dense_flops=dense_flops, ms_p20=ms * 0.97, ms_p50=ms, ms_p80=ms * 1.04))
    rows.append(_row(backend="compile", label="conv5_8px", shape="128->256 k3 s1 p4 8x8 b64", status="failed",
                     ms_p20=None, ms_p50=None, ms_p80=None, note="fixture failure"))
    return rows


def test_plots_write_the_png_files(tmp_path):
    csv = tmp_path / "bench.csv"
    results.append(_fixture_rows(), csv)
    out = tmp_path / "plots"
    written = plots.plot_all(csv, out, ceilings_path=tmp_path / "missing.json")
    stem = "NVIDIA-H100-80GB-HBM3_bf16_fwd"
    assert sorted(p.name for p in written) == sorted(f"{kind}_{stem}.png" for kind in
                                                    ("roofline", "flops_vs_time", "speedup"))
    for path in written:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_cli_with_measured_ceilings_and_filters(tmp_path, capsys):
    csv = tmp_path / "bench.csv"
    results.append(_fixture_rows() + [_row(dtype="fp16", gpu="NVIDIA H200")], csv)
    ceilings_json = tmp_path / "ceilings.json"
    ceilings.save({"gpu": GPU, "bandwidth_tb_s": 3.0, "matmul_tflop_s": {"bf16": 800.0, "fp16": 800.0,
                                                                         "tf32": 400.0, "fp32": 60.0}},
                  ceilings_json)
    assert main(["plot", "--csv", str(csv), "--out", str(tmp_path / "p"), "--ceilings", str(ceilings_json),
                 "--gpu", GPU, "--dtype", "bf16"]) == 0
    assert len(capsys.readouterr().out.split()) == 3  # one figure set: the H200 row is filtered out
    results.append([_row(channels_last=True, backend=b) for b in ("triton", "fallback")], csv)
    assert main(["plot", "--csv", str(csv), "--out", str(tmp_path / "p"), "--gpu", GPU]) == 0
    names = sorted(Path(line).name for line in capsys.readouterr().out.split())
    assert len(names) == 6 and "speedup_NVIDIA-H100-80GB-HBM3_bf16_fwd_nhwc.png" in names
    assert main(["plot", "--csv", str(csv), "--out", str(tmp_path / "p"), "--dtype", "fp8"]) == 2
    assert "--dtype 'fp8' matches no row" in capsys.readouterr().err


def test_roofs_fall_back_to_platform_values_and_say_so():
    bandwidth, peak, note = ceilings.roofs({}, "Some GPU", "fp32", tf32=True)
    assert (bandwidth, peak) == (3.0, 495.0) and "PLATFORM.md" in note
    measured = {"G": {"bandwidth_tb_s": 2.0, "matmul_tflop_s": {"fp32": 50.0, "tf32": 300.0}}}
    assert ceilings.roofs(measured, "G", "fp32", tf32=False) == (2.0, 50.0, None)


# ---- command line -------------------------------------------------------------------------------------
def test_run_without_gpu_exits_2_with_the_reason(capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["run", "--layer", "hetconv", "--shapes", "resnet50"]) == 2
    err = capsys.readouterr().err
    assert "needs a CUDA GPU" in err and "torch.cuda.is_available() is False" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour of a machine without a GPU")
def test_python_dash_m_perf_run_exits_2_without_gpu():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-m", "perf", "run", "--shapes", "resnet50"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "needs a CUDA GPU" in done.stderr


@pytest.mark.parametrize("argv, message", [
    (["run", "--layer", "nope"], "--layer 'nope' is not a registered layer; expected one of"),
    (["run", "--shapes", "alexnet"], "--shapes 'alexnet' is not a shape set of"),
    (["run", "--layer", "hetconv", "--option", "k=3"], "--option k is not an option of hetconv"),
    (["run", "--batch", "0"], "--batch 0 must be a positive integer"),
])
def test_bad_arguments_name_the_argument_and_the_choices(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_bad_dtype_is_refused_by_name():
    with pytest.raises(UsageError, match=r"--dtype 'int8' is not supported; expected one of \('bf16'"):
        bench.resolve_dtype("int8")
    assert bench.resolve_dtype("bfloat16") == "bf16"


# ---- verification ---------------------------------------------------------------------------------
def test_verify_accepts_right_outputs_and_flags_wrong_ones():
    expected = (torch.randn(2, 8, 5, 5, dtype=torch.float64), torch.randn(8, 3, dtype=torch.float64))
    right = tuple(e.float() for e in expected)
    assert bench.verify(right, expected, torch.float32).ok
    wrong = (right[0] * 1.1, right[1])
    check = bench.verify(wrong, expected, torch.float32)
    assert not check.ok and check.error == pytest.approx(0.1, rel=1e-3) and "tolerance" in check.note
    nan = (right[0].clone().index_fill_(0, torch.tensor([0]), float("nan")), right[1])
    assert not bench.verify(nan, expected, torch.float32).ok
    assert not bench.verify((right[0].transpose(2, 3), right[1]), expected, torch.float32).ok
    assert "1 outputs, expected 2" in bench.verify(right[:1], expected, torch.float32).note
    assert not bench.check_finite((torch.tensor([1.0, float("inf")]),)).ok
    assert bench.check_finite((torch.randn(3),)).ok


# ---- bench's non-timing pieces on the CPU (Triton's interpreter) -----------------------------------------
def _tiny_case() -> bench.Case:
    case = bench.cases("hetconv", ["vgg16_cifar"], batch=2, dtype="fp32")[0]
    return bench.Case(case.layer, case.shape_set, case.label, case.count, ADAPTERS["hetconv"].shrink(case.spec))


def test_cases_cover_the_shape_set_once_per_spec():
    found = bench.cases("hetconv", ["vgg16", "vgg16_cifar"], batch=8, dtype="bf16", options={"p": [2, 4]})
    specs = [c.spec for c in found]
    assert len(specs) == len(set(specs))
    assert {s.p for s in specs} == {2, 4} and all(s.dtype == "bfloat16" and s.batch == 8 for s in specs)
    assert all(c.shape_set == "vgg16" for c in found)  # vgg16_cifar's shapes are vgg16's first ones


def test_workload_and_verification_through_the_interpreter():
    device = torch.device("cpu")
    case = _tiny_case()
    adapter = ADAPTERS["hetconv"]
    work = adapter.make_workload(case.spec, device)
    for tensor in (work.tensors["x"], work.grad):
        assert tensor.abs().sum() > 0  # random inputs, never zeros
    for pass_ in ("fwd", "bwd"):
        expected = bench.expectations(adapter, work, pass_, list(bench.BACKENDS))
        assert all(out.dtype == torch.float64 for outs in expected.values() for out in outs)
        fn, tiles, tuned = bench.triton_closure(adapter, work, pass_, device)
        assert bench.check_backend("triton", fn, work, expected).ok
        assert not tuned and all(k in tiles for ks in bench.PASSES[pass_] for k in adapter.operator.kernels_of_pass[ks])
        fallback = bench.backend_closure(adapter, "fallback", work, pass_)
        assert bench.check_backend("fallback", fallback, work, expected).ok
        wrong = bench.backend_closure(adapter, "dense", work, pass_)  # a different function
        assert not bench.verify(wrong(), expected["triton"], case.spec.torch_dtype).ok
        assert bench.check_backend("dense", wrong, work, expected).ok  # dense: finite outputs only


@pytest.mark.parametrize("layer", sorted(ADAPTERS))
def test_every_layers_triton_passes_match_the_fallback(layer):
    """What ``perf run`` times for Triton is the layer's own passes (``Adapter.triton_pass``), outputs in the
    fallback's order: a forward and backward of every layer checked against the fallback in float64."""
    adapter = ADAPTERS[layer]
    spec = adapter.shrink(adapter.specs_for(adapter.shape_sets[0], batch=2, dtype="float32", channels_last=True)[0][2])
    work = adapter.make_workload(spec, torch.device("cpu"))
    expected = bench.expectations(adapter, work, "fwd+bwd", ["triton"])
    fn, _, _ = bench.triton_closure(adapter, work, "fwd+bwd", torch.device("cpu"))
    check = bench.check_backend("triton", fn, work, expected)
    assert check.ok, check.note


def test_measure_records_failed_backends_untimed(monkeypatch):
    device = torch.device("cpu")
    case = _tiny_case()
    adapter = ADAPTERS["hetconv"]
    right_triton, right_fallback = adapter.triton_pass, adapter.fallback

    def wrong_triton(pass_, work, tiles):
        fn = right_triton(pass_, work, tiles)
        return lambda: tuple(out * 1.5 for out in fn())

    def wrong_fallback(pass_, work):
        """Right in float64 (the expectation), wrong at the timed precision: a broken low-precision path."""
        fn = right_fallback(pass_, work)
        return fn if work.spec.dtype == "float64" else (lambda: tuple(out + 1.0 for out in fn()))

    monkeypatch.setattr(adapter, "triton_pass", wrong_triton)
    monkeypatch.setattr(adapter, "fallback", wrong_fallback)
    timed = []

    def fake_timer(fn, quantiles):
        timed.append(fn)
        return [1.0, 2.0, 3.0]

    rows = bench.measure([case], dtype="fp32", pass_="fwd", backends=["triton", "fallback", "dense"], device=device,
                         timer=fake_timer, progress=False)
    by_backend = {r["backend"]: r for r in rows}
    assert len(timed) == 1  # only dense: a backend that fails the check is not timed
    for backend in ("triton", "fallback"):
        assert by_backend[backend]["status"] == "failed" and by_backend[backend]["ms_p50"] is None
        assert "tolerance" in by_backend[backend]["note"]
    assert by_backend["triton"]["max_rel_error"] == pytest.approx(0.5, rel=1e-3)
    assert by_backend["triton"]["tiles"].startswith("forward=")
    assert by_backend["dense"]["status"] == "ok" and by_backend["dense"]["ms_p50"] == 2.0
    assert by_backend["dense"]["max_rel_error"] is None
    flops, bytes_ = bench.work_of(case.spec, "fwd")
    assert all(r["flops"] == flops and r["bytes"] == bytes_ for r in rows)
    assert all(r["unfused_bytes"] == bench.unfused_bytes_of(case.spec, "fwd") > bytes_ for r in rows)
    assert rows[0]["shape"] == case.spec.describe() and rows[0]["gpu"] == "triton-interpreter-cpu"
    assert set(results.COLUMNS) <= set(rows[0])  # the rows fit the CSV schema as they are


def test_measure_times_backends_that_pass(tmp_path):
    case = _tiny_case()
    csv = tmp_path / "bench.csv"
    rows = bench.measure([case], dtype="fp32", pass_="fwd", backends=["triton", "fallback"],
                         device=torch.device("cpu"), timer=lambda fn, quantiles: [1.0, 2.0, 3.0], progress=False,
                         sink=lambda case_rows: results.append(case_rows, csv))
    assert [(r["backend"], r["status"], r["ms_p50"]) for r in rows] == [("triton", "ok", 2.0), ("fallback", "ok", 2.0)]
    assert all(r["max_rel_error"] < 1e-5 for r in rows)
    assert list(results.read(csv)["backend"]) == ["triton", "fallback"]  # written case by case by the sink


def test_ceilings_json_keeps_one_entry_per_gpu(tmp_path):
    path = tmp_path / "ceilings.json"
    ceilings.save({"gpu": "A", "bandwidth_tb_s": 1.0, "matmul_tflop_s": {}}, path)
    ceilings.save({"gpu": "B", "bandwidth_tb_s": 2.0, "matmul_tflop_s": {}}, path)
    ceilings.save({"gpu": "A", "bandwidth_tb_s": 3.0, "matmul_tflop_s": {}}, path)
    data = json.loads(path.read_text())
    assert sorted(data) == ["A", "B"] and data["A"]["bandwidth_tb_s"] == 3.0


def test_ceilings_arithmetic_with_a_fake_timer():
    calls = []

    def timer(fn):
        calls.append(fn())  # each measured closure runs
        return 0.5  # ms

    entry = ceilings.measure(torch.device("cpu"), timer, copy_bytes=4096, matmul_size=16)
    assert entry["bandwidth_tb_s"] == pytest.approx(2 * 4096 / 0.5e-3 / 1e12)
    assert entry["matmul_tflop_s"]["bf16"] == pytest.approx(2 * 16**3 / 0.5e-3 / 1e12)
    assert set(entry["matmul_tflop_s"]) == {"bf16", "fp16", "tf32", "fp32"} and len(calls) == 5
    assert {"gpu", "torch", "triton", "timestamp"} <= set(entry)


def test_run_list_needs_no_gpu(capsys):
    assert main(["run", "--layer", "hetconv", "--shapes", "resnet50", "--p", "2", "4", "--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 7 * 2  # ResNet-50's seven distinct bottleneck 3x3 shapes, at two values of p
    assert sum(" p2 " in line for line in lines) == 7 and all("GFLOP" in line for line in lines)
    assert all("(unfused " in line for line in lines)  # HetConv's fallback passes over memory more often


def test_bytes_moved_by_the_unfused_form_are_reported_where_the_layer_fuses_something():
    from tritonconv.ops.depthwise.spec import DepthwiseSpec

    plain = DepthwiseSpec(2, 8, 8, 6, 6)
    ghost = DepthwiseSpec(2, 8, 8, 6, 6, concat_input=True)
    assert bench.unfused_bytes_of(plain, "fwd") is None
    x = maps = 2 * 8 * 6 * 6
    # depthwise writes its maps, then cat reads the input and the maps and writes both
    assert bench.unfused_bytes_of(ghost, "fwd") == ghost.cost().bytes + 4 * (x + 2 * maps)
    assert bench.unfused_bytes_of(ghost, "fwd+bwd") == 3 * bench.unfused_bytes_of(ghost, "fwd")


def test_a_spec_whose_inputs_cannot_be_made_fails_every_backend_and_the_run_goes_on(monkeypatch):
    adapter = ADAPTERS["hetconv"]

    def out_of_memory(spec, device):
        raise RuntimeError("CUDA out of memory (simulated)")

    monkeypatch.setattr(adapter, "make_workload", out_of_memory)
    rows = bench.measure([_tiny_case()], dtype="fp32", pass_="bwd", backends=["triton", "dense"],
                         device=torch.device("cpu"), timer=lambda fn, quantiles: pytest.fail("timed"), progress=False)
    assert [r["status"] for r in rows] == ["failed", "failed"]
    assert all("out of memory" in r["note"] for r in rows)
