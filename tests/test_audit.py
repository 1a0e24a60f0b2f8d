"""``perf audit`` without compiling: the SASS reader on small listings, occupancy, the JIT's
specialisation, the torch-op counter, the gates on rows, the summary and the command line."""

import textwrap

import pytest
import torch
import triton.language as tl
from triton.runtime.jit import JITFunction

from perf import audit, sass
from perf.__main__ import main

# An nvdisasm-shaped listing: a kernel with an outer loop (0x40-0x120) around an inner one (0x60-0xd0),
# a second, disjoint loop (0x140-0x170), and a 64-bit division subroutine called from inside the inner loop.
LISTING = textwrap.dedent("""\
    .text.kern:
            .type           kern,@function
    kern:
    .text.kern:
            /*0000*/                   LDC R1, c[0x0][0x28] ;
            /*0010*/                   LDG.E.U16 R2, desc[UR4][R2.64] ;
            /*0020*/                   LDG.E.128.CONSTANT R4, desc[UR4][R6.64] ;
            /*0030*/                   LDG.E.LTC128B R8, desc[UR4][R6.64] ;
    .L_x_0:
            /*0040*/                   STL.64 [R1], R10 ;
    .L_x_1:
            /*0060*/                   HGMMA.64x64x16.F32.BF16 R24, gdesc[UR8], R24 ;
            /*0070*/                   LDGSTS.E.BYPASS.128 [R37], desc[UR26][R20.64], P5 ;
            /*0080*/                   CALL.REL.NOINC `($__internal_0_$__cuda_sm20_div_s64) ;
            /*0090*/                   HGMMA.64x64x16.F32.BF16 R24, gdesc[UR12], R24, gsb0 ;
            /*00a0*/                   IADD3 R1, R1, 0x1, RZ ;
            /*00b0*/                   LDL R12, [R1+0x8] ;
            /*00c0*/                   ISETP.GE.AND P0, PT, R1, R2, PT ;
            /*00d0*/               @!P0 BRA `(.L_x_1) ;
            /*00e0*/                   FFMA R3, R4, R5, R3 ;
            /*00f0*/                   CALL.REL.NOINC `($__internal_0_$__cuda_sm20_div_s64) ;
            /*0100*/                   IADD3 R9, R9, 0x1, RZ ;
            /*0110*/                   ISETP.GE.AND P1, PT, R9, R2, PT ;
            /*0120*/                @P1 BRA `(.L_x_0) ;
            /*0130*/                   UTMALDG.2D [UR8], [UR4] ;
    .L_x_2:
            /*0140*/                   HGMMA.64x64x16.F32.BF16 R24, gdesc[UR8], R24 ;
            /*0150*/                   STG.E.U16 desc[UR4][R2.64], R5 ;
            /*0160*/                   STG.E.128 desc[UR4][R6.64], R8 ;
            /*0170*/                @P1 BRA `(.L_x_2) ;
            /*0180*/                   EXIT ;
    .L_x_3:
            /*0190*/                   BRA `(.L_x_3) ;
            .type           $__internal_0_$__cuda_sm20_div_s64,@function
    $__internal_0_$__cuda_sm20_div_s64:
            /*01a0*/                   IMAD.HI.U32 R3, R4, R5, RZ ;
    .L_x_4:
            /*01b0*/                   BRA `(.L_x_4) ;
            /*01c0*/                   RET.REL.NODEC R20 0x0 ;
    """)


def test_listing_is_split_into_the_kernel_and_its_subroutines():
    listing = sass.parse(LISTING)
    assert listing.kernel == "kern"
    assert len(listing.of_kernel()) == 25
    assert {i.function for i in listing.instructions} == {"kern", "$__internal_0_$__cuda_sm20_div_s64"}
    assert listing.labels[".L_x_1"] == 0x60


def test_loops_come_from_backward_branches_and_self_loops_are_not_loops():
    found = sass.loops(sass.parse(LISTING))
    assert [(loop.start, loop.end, loop.tensor_core, loop.ffma) for loop in found] == [
        (0x40, 0x120, 2, 1), (0x60, 0xd0, 2, 0), (0x140, 0x170, 1, 0)]
    assert found[0].contains(found[1]) and not found[1].contains(found[0])


def test_the_hottest_loop_is_the_innermost_with_the_most_tensor_core_instructions():
    found = sass.loops(sass.parse(LISTING))
    hot = sass.hottest_loop(found)
    assert (hot.start, hot.end) == (0x60, 0xd0)  # the outer loop holds no more HGMMA than the inner one


def test_without_tensor_cores_the_hottest_loop_is_the_one_with_the_most_ffma():
    found = [sass.Loop(0, 0x40, 5, 0, 1), sass.Loop(0x50, 0x100, 12, 0, 4)]
    assert sass.hottest_loop(found) == found[1]
    assert sass.hottest_loop([sass.Loop(0, 0x40, 5, 0, 0)]) is None


def test_ties_go_to_the_loop_spending_more_instructions_per_tensor_core_instruction():
    found = [sass.Loop(0, 0x100, 240, 4, 0), sass.Loop(0x200, 0x300, 74, 4, 0)]
    assert sass.hottest_loop(found) == found[0]


def test_counts_read_the_figures_the_audit_reports():
    figures = sass.counts(sass.parse(LISTING))
    assert (figures["hgmma"], figures["hmma"], figures["tensor_core"]) == (3, 0, "HGMMA")
    assert (figures["ldg_16"], figures["ldg_32"], figures["ldg_128"]) == (1, 1, 1)  # LTC128B is no width
    assert (figures["ldgsts"], figures["ldgsts_128"], figures["utmaldg"]) == (1, 1, 1)
    assert (figures["stg_16"], figures["stg_128"]) == (1, 1)
    assert (figures["spill_stores"], figures["spill_store_bytes"]) == (1, 8)
    assert (figures["spill_loads"], figures["spill_load_bytes"]) == (1, 4)
    assert (figures["div64_calls"], figures["div64_in_loops"]) == (2, 2)
    assert figures["hot_loop_instructions"] == 8 and figures["instructions_per_tensor_core"] == 4.0
    assert figures["instructions_per_ffma"] is None


def test_a_kernel_without_loops_counts_as_its_own_main_loop():
    """A reduction unrolled at compile time: the whole kernel is the region the ratio is taken over."""
    straight = textwrap.dedent("""\
        .text.kern:
                .type           kern,@function
        kern:
        .text.kern:
                /*0000*/                   LDG.E R2, desc[UR4][R2.64] ;
                /*0010*/                   HGMMA.64x64x16.F32.BF16 R24, gdesc[UR8], R24 ;
                /*0020*/                   HGMMA.64x64x16.F32.BF16 R24, gdesc[UR8], R24, gsb0 ;
                /*0030*/                   STG.E [R4.64], R24 ;
                /*0040*/                   EXIT ;
        .L_x_0:
                /*0050*/                   BRA `(.L_x_0) ;
        """)
    figures = sass.counts(sass.parse(straight))
    assert figures["loops"] == 0 and figures["hot_loop"] == "kernel"
    assert figures["hot_loop_instructions"] == 6 and figures["instructions_per_tensor_core"] == 3.0
    no_work = straight.replace("HGMMA.64x64x16.F32.BF16 R24, gdesc[UR8], R24", "NOP ")
    assert sass.counts(sass.parse(no_work))["instructions_per_tensor_core"] is None


def test_resource_usage_is_read_from_cuobjdump():
    text = (" Common:\n  GLOBAL:0\n Function kern:\n  REG:168 STACK:1576 SHARED:0 LOCAL:0 CONSTANT[0]:656 "
            "TEXTURE:0 SURFACE:0 SAMPLER:0\n")
    assert sass.resource_usage(text, "kern") == {"registers": 168, "stack_bytes": 1576, "local_bytes": 0}
    with pytest.raises(ValueError, match="other"):
        sass.resource_usage(text, "other")


@pytest.mark.parametrize("registers, shared, warps, expected", [
    (128, 0, 4, (4, 16, "registers")),        # 128 regs x 32 lanes x 4 warps = 16K registers per block
    (86, 27648, 4, (5, 20, "registers")),     # 88 (rounded) x 32 = 2816 per warp: 23 warps -> 5 blocks
    (24, 0, 4, (16, 64, "warps")),
    (32, 100_000, 4, (2, 8, "shared")),       # 228 KB / (100000 + 1 KB reserved)
    (32, 240_000, 4, (0, 0, "shared")),       # over the 227 KB a block may have: cannot launch
    (16, 0, 1, (32, 32, "blocks")),
])
def test_occupancy_uses_the_h100_limits(registers, shared, warps, expected):
    result = audit.occupancy(registers, shared, warps)
    assert (result["blocks_per_sm"], result["resident_warps"], result["occupancy_limit"]) == expected


def _copy(x_ptr, y_ptr, n, stride, odd, BLOCK: tl.constexpr):
    offsets = tl.arange(0, BLOCK)
    tl.store(y_ptr + offsets * stride, tl.load(x_ptr + offsets, mask=offsets < n + odd))


def test_specialisation_is_the_jit_s_own():
    kernel = JITFunction(_copy)  # not triton.jit: the test session runs the interpreter
    base = torch.empty(64, device="meta", dtype=torch.bfloat16)
    launch = audit.Launch(kernel, (base, base[1:], 1, 32, 17), {"BLOCK": 64, "num_warps": 2}, (1,))
    spec = audit.specialise(launch)
    assert spec.signature == {"x_ptr": "*bf16", "y_ptr": "*bf16", "n": "constexpr", "stride": "i32",
                              "odd": "i32", "BLOCK": "constexpr"}
    assert spec.constexprs == {(2,): 1, (5,): 64}
    hinted = {index for (index,), attrs in spec.attrs.items() if ["tt.divisibility", 16] in attrs}
    assert hinted == {0, 3}  # the aligned pointer and 32; not the view 2 bytes in, not 17
    assert spec.options.num_warps == 2
    described = audit.describe_specialisation(launch, spec)
    assert described == {"constexprs": "BLOCK=64", "specialised_to_1": "n", "divisible_by_16": "x_ptr stride"}
    assert audit.specialise(launch).key == spec.key
    other = audit.Launch(kernel, (base, base[1:], 1, 32, 16), {"BLOCK": 64, "num_warps": 2}, (1,))
    assert audit.specialise(other).key != spec.key


def test_the_op_counter_counts_what_would_launch_a_kernel():
    x = torch.randn(4, 8)
    with audit.TorchOpCounter() as counter:
        y = torch.empty(4, 8)
        x.view(8, 4)
        x.contiguous()        # already contiguous: returns x
        x.to(torch.float32)   # same dtype: returns x
        x.sum(0)
        y.add_(1)
        x.t().contiguous()    # a copy
    assert counter.ops == ["sum", "add_", "clone"]


def _row(**overrides):
    row = {"status": "ok", "dtype": "bf16", "channels_last": True, "dots": 1, "hgmma": 4, "hmma": 0,
           "spill_stores": 0, "spill_loads": 0, "ldg_8": 0, "ldg_16": 4, "div64_in_loops": 0, "shared_bytes": 1024,
           "instructions_per_tensor_core": 20.0, "instructions_per_ffma": None, "ffma": 0, "depthwise": False}
    row.update(overrides)
    return row


@pytest.mark.parametrize("overrides, failed", [
    ({}, []),
    ({"hgmma": 0, "hmma": 8}, ["hgmma"]),
    ({"hgmma": 0}, ["hgmma"]),                            # a dot lowered to FMA is no better
    ({"dots": 0, "hgmma": 0}, []),                        # no dot: nothing to put on tensor cores
    ({"ldg_16": 5}, ["scalar16"]),
    ({"ldg_16": 40, "dtype": "fp32"}, []),                # the 16-bit-load gate is about bf16 channels_last
    ({"ldg_16": 40, "channels_last": False}, []),
    ({"spill_loads": 1}, ["spills"]),
    ({"div64_in_loops": 2}, ["div64_loop"]),
    ({"shared_bytes": audit.SHARED_PER_BLOCK + 1}, ["shared"]),
    ({"status": "failed"}, ["compiles"]),
])
def test_gates_on_one_row(overrides, failed):
    assert audit.gate_failures(_row(**overrides)) == failed


def test_targets_on_one_row():
    targets = {**audit.GATES, **audit.TARGETS}
    assert audit.gate_failures(_row(instructions_per_tensor_core=60.0), targets) == ["instructions_per_tc"]
    depthwise = _row(dots=0, hgmma=0, depthwise=True, instructions_per_tensor_core=None, instructions_per_ffma=9.0,
                     ffma=72)
    assert audit.gate_failures(depthwise, targets) == ["depthwise_ffma"]
    assert audit.gate_failures({**depthwise, "instructions_per_ffma": 5.5}, targets) == []
    # a depthwise-module kernel without multiply-adds (the activation mask, the partials' reduction)
    assert audit.gate_failures({**depthwise, "instructions_per_ffma": None, "ffma": 0}, targets) == []


def test_summary_reports_worst_figures_and_verdicts(tmp_path):
    kernels_table, calls_table = audit._tables()
    base = {column: None for column in audit.KERNEL_SCHEMA}
    env = {"triton": "3.6.0", "torch": "2.13.0", "commit": "abc1234", "target": audit.TARGET_NAME,
           "timestamp": "2026-01-01T00:00:00+00:00"}
    fixture = dict(layer="hetconv", shape_set="vgg16", label="conv2", dtype="bf16", channels_last=True, batch=128,
                   pass_=None, kernel="forward", launch=0, triton_kernel="hetconv_fwd_kernel", default_tile=True,
                   num_warps=4, num_stages=3, depthwise=False, status="ok", error="", registers=86, spill_stores=0,
                   spill_loads=0, shared_bytes=27648, resident_warps=20, tensor_core="HGMMA", dots=2, hgmma=8,
                   hmma=0, ldg_8=0, ldg_16=0, ldg_128=0, ldgsts_128=24, stg_16=6, div64_calls=18, div64_in_loops=0,
                   instructions_per_tensor_core=60.25, **env)
    fixture["pass"] = fixture.pop("pass_")
    rows = [{**base, **fixture, "shape": "64->64", "tile": "128x16x32", "gates_failed": "instructions_per_tc"},
            {**base, **fixture, "shape": "128->128", "tile": "128x32x32", "registers": 148, "gates_failed": ""}]
    calls = [{**{c: None for c in audit.CALL_SCHEMA}, "layer": "hetconv", "shape": "64->64", "dtype": "bf16",
              "channels_last": True, "pass": p, "triton_launches": n, "torch_ops": t, "launches": n + t,
              "triton_kernels": "k", "torch_op_names": "sum " * t, "host_us": 50.0, "host_timing": "how", **env}
             for p, n, t in (("fwd", 1, 0), ("bwd", 3, 5))]
    text = audit.summary(kernels_table.frame(rows), calls_table.frame(calls))
    line = next(row for row in text.splitlines() if row.startswith("| forward"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[2] == "148" and cells[6] == "HGMMA" and cells[9] == "6" and cells[11] == "60.2"
    verdicts = dict(zip(audit._SUMMARY_TARGETS, cells[13:], strict=True))
    assert verdicts["instructions_per_tc"] == "NOT met" and verdicts["hgmma"] == "met"
    assert verdicts["depthwise_ffma"] == "n/a"
    assert "bwd_launches: NOT met" in text


def test_cli_lists_the_cases_without_compiling(capsys):
    assert main(["audit", "--layer", "hetconv", "--list", "--first-shape"]) == 0
    out = capsys.readouterr().out
    assert "64->64 k3 s1 p4 32x32 b128" in out and "nothing compiled" in out
    assert main(["audit", "--layer", "nope", "--list"]) == 2


def test_audit_refuses_to_compile_interpreted_kernels():
    with pytest.raises(audit.NotCompilable, match="TRITON_INTERPRET"):
        with audit.recording():
            pass
