"""Reading sm_90 machine code: nvdisasm's listing of a cubin parsed into instructions, loops and counts.

Pure text processing (the disassembler is run by ``disassemble``), so the tests can feed it listings.
What is counted, and why it matters on Hopper, is in ``/work/shared/PLATFORM.md``: HGMMA (wgmma) vs
HMMA (mma.sync), load widths (scalar 2-byte LDG vs 128-bit, cp.async LDGSTS, TMA UTMALDG), local
memory (LDL/STL: register spills), subroutine CALLs for 64-bit division, and instructions per
tensor-core instruction in the hottest loop (the whole kernel where no loop holds the work).
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

# nvdisasm: "        /*0470*/    @!P0 CALL.REL.NOINC `($__internal_0_$__cuda_sm20_div_s64) ;"
_INSTRUCTION = re.compile(r"^\s*/\*([0-9a-f]+)\*/\s+(.*?)\s*;\s*$")
_LABEL = re.compile(r"^([.$\w]+):\s*$")
_FUNCTION_TYPE = re.compile(r"^\s*\.type\s+([.$\w]+)\s*,\s*@function")
_TARGET = re.compile(r"`\(([^)]+)\)")
_PREDICATE = re.compile(r"^@!?U?P[T0-9]+\s+")
DIV64 = re.compile(r"__cuda_sm\d+x?_(div|rem)_[su]64")

TENSOR_CORE_OPCODES = ("HGMMA", "HMMA")
# Width in bits named by a load/store modifier; a plain LDG/LDL/STL moves 32 bits.
_WIDTH_MODIFIERS = {"U8": 8, "S8": 8, "U16": 16, "S16": 16, "64": 64, "128": 128}


@dataclass(frozen=True)
class Instruction:
    address: int
    opcode: str        # "LDG.E.128", "HGMMA.64x64x16.F32.BF16", "@P0" stripped
    operands: str
    function: str      # the kernel, or the subroutine ("$__internal_0_$__cuda_sm20_div_s64") it lies in
    target: str | None  # the label a BRA / CALL goes to

    @property
    def base(self) -> str:
        return self.opcode.split(".", 1)[0]

    def width(self) -> int:
        """Bits moved per thread by a load or store (32 unless a modifier says otherwise)."""
        widths = [_WIDTH_MODIFIERS[m] for m in self.opcode.split(".")[1:] if m in _WIDTH_MODIFIERS]
        return widths[-1] if widths else 32


@dataclass(frozen=True)
class Loop:
    start: int  # address of the branch target (the loop head)
    end: int    # address of the backward branch
    instructions: int
    tensor_core: int
    ffma: int

    def contains(self, other: "Loop") -> bool:
        return self != other and self.start <= other.start and other.end <= self.end


@dataclass(frozen=True)
class Listing:
    kernel: str
    instructions: tuple[Instruction, ...]
    labels: dict  # label -> address

    def of_kernel(self) -> list[Instruction]:
        return [i for i in self.instructions if i.function == self.kernel]


def disassemble(cubin: bytes, nvdisasm: str) -> str:
    """nvdisasm's listing of ``cubin`` (labels resolved, subroutines named)."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "kernel.cubin"
        path.write_bytes(cubin)
        done = subprocess.run([nvdisasm, str(path)], capture_output=True, text=True)
        if done.returncode != 0:  # the data-flow analysis can fail on unusual code: list without it
            done = subprocess.run([nvdisasm, "-ndf", str(path)], capture_output=True, text=True, check=True)
        return done.stdout


def parse(listing: str, kernel: str | None = None) -> Listing:
    """Instructions of every function in an nvdisasm listing, in address order, with their labels.

    ``kernel`` names the entry function; by default the first function that is not an internal
    subroutine."""
    functions, instructions, labels, pending = [], [], {}, []
    current = None
    for line in listing.splitlines():
        if match := _FUNCTION_TYPE.match(line):
            functions.append(match.group(1))
            continue
        if match := _LABEL.match(line):
            name = match.group(1)
            if name in functions:
                current = name
            if not name.startswith(".text."):
                pending.append(name)
            continue
        match = _INSTRUCTION.match(line)
        if not match or current is None:
            continue
        address, text = int(match.group(1), 16), _PREDICATE.sub("", match.group(2).strip())
        if not text or text.startswith("."):  # data directives (.word ...) in non-code sections
            continue
        opcode, _, operands = text.partition(" ")
        target = _TARGET.search(operands)
        instructions.append(Instruction(address, opcode, operands.strip(), current,
                                        target.group(1) if target else None))
        for name in pending:
            labels[name] = address
        pending = []
    if kernel is None:
        entries = [f for f in functions if not f.startswith("$")]
        if not entries:
            raise ValueError("no kernel function in the listing")
        kernel = entries[0]
    return Listing(kernel, tuple(instructions), labels)


def loops(listing: Listing) -> list[Loop]:
    """The kernel's loops: each backward branch (a BRA whose target lies at a lower address) closes one;
    branches back to the same head are one loop, up to the furthest of them."""
    body = listing.of_kernel()
    ends: dict[int, int] = {}
    for inst in body:
        if inst.base == "BRA" and inst.target in listing.labels:
            head = listing.labels[inst.target]
            if head < inst.address:
                ends[head] = max(ends.get(head, head), inst.address)
    found = []
    for start, end in sorted(ends.items()):
        inside = [i for i in body if start <= i.address <= end]
        found.append(Loop(start, end, len(inside), sum(i.base in TENSOR_CORE_OPCODES for i in inside),
                          sum(i.base == "FFMA" for i in inside)))
    return found


def _work(loop: Loop, tensor_cores: bool) -> int:
    return loop.tensor_core if tensor_cores else loop.ffma


def hottest_loop(found: list[Loop]) -> Loop | None:
    """The innermost loop holding the most tensor-core instructions (else the most FFMA).

    A loop is a candidate unless a loop inside it holds as many; among candidates with equally many
    (trip counts are not in the code), the one spending more instructions on each is taken: the audit
    reports the worse."""
    tensor_cores = any(loop.tensor_core for loop in found)
    candidates = [loop for loop in found if _work(loop, tensor_cores) > 0
                  and not any(loop.contains(inner) and _work(inner, tensor_cores) >= _work(loop, tensor_cores)
                              for inner in found)]
    if not candidates:
        return None
    return max(candidates, key=lambda loop: (_work(loop, tensor_cores),
                                             loop.instructions / _work(loop, tensor_cores)))


STRAIGHT_LINE = -1  # the start of the pseudo-loop ``straight_line`` returns


def straight_line(body: list[Instruction]) -> Loop | None:
    """Where no loop holds the work (a reduction unrolled at compile time), the whole kernel counts as
    its main loop: one pass of it per program, prologue and epilogue included (start ``STRAIGHT_LINE``)."""
    tensor_core = sum(i.base in TENSOR_CORE_OPCODES for i in body)
    ffma = sum(i.base == "FFMA" for i in body)
    if not tensor_core and not ffma:
        return None
    return Loop(STRAIGHT_LINE, body[-1].address, len(body), tensor_core, ffma)


def div64_calls(listing: Listing) -> list[Instruction]:
    """CALLs into the 64-bit integer division and modulo subroutines."""
    return [i for i in listing.of_kernel() if i.base == "CALL" and i.target and DIV64.search(i.target)]


def in_any_loop(inst: Instruction, found: list[Loop]) -> bool:
    return any(loop.start <= inst.address <= loop.end for loop in found)


def counts(listing: Listing) -> dict:
    """The figures the audit reports for one kernel's machine code."""
    body = listing.of_kernel()
    found = loops(listing)
    hot = hottest_loop(found) or straight_line(body)
    loads = [i for i in body if i.base == "LDG"]
    stores = [i for i in body if i.base == "STG"]
    async_copies = [i for i in body if i.base == "LDGSTS"]
    spill_stores = [i for i in body if i.base == "STL"]
    spill_loads = [i for i in body if i.base == "LDL"]
    divisions = div64_calls(listing)
    hgmma = sum(i.base == "HGMMA" for i in body)
    hmma = sum(i.base == "HMMA" for i in body)
    return {
        "sass_instructions": len(body),
        "hgmma": hgmma,
        "hmma": hmma,
        "tensor_core": "HGMMA" if hgmma else "HMMA" if hmma else "none",
        "ffma": sum(i.base == "FFMA" for i in body),
        "ldg_8": sum(i.width() == 8 for i in loads),
        "ldg_16": sum(i.width() == 16 for i in loads),
        "ldg_32": sum(i.width() == 32 for i in loads),
        "ldg_64": sum(i.width() == 64 for i in loads),
        "ldg_128": sum(i.width() == 128 for i in loads),
        "stg_16": sum(i.width() <= 16 for i in stores),
        "stg_128": sum(i.width() == 128 for i in stores),
        "ldgsts": len(async_copies),
        "ldgsts_128": sum(i.width() == 128 for i in async_copies),
        "utmaldg": sum(i.base == "UTMALDG" for i in body),
        "spill_stores": len(spill_stores),
        "spill_loads": len(spill_loads),
        "spill_store_bytes": sum(i.width() // 8 for i in spill_stores),
        "spill_load_bytes": sum(i.width() // 8 for i in spill_loads),
        "div64_calls": len(divisions),
        "div64_in_loops": sum(in_any_loop(i, found) for i in divisions),
        "loops": len(found),
        "hot_loop": "" if not hot else "kernel" if hot.start == STRAIGHT_LINE else f"{hot.start:#x}-{hot.end:#x}",
        "hot_loop_instructions": hot.instructions if hot else None,
        "hot_loop_tensor_core": hot.tensor_core if hot else None,
        "hot_loop_ffma": hot.ffma if hot else None,
        "instructions_per_tensor_core": hot.instructions / hot.tensor_core if hot and hot.tensor_core else None,
        "instructions_per_ffma": hot.instructions / hot.ffma if hot and not hot.tensor_core else None,
        "work_loops": "; ".join(f"{loop.start:#x}-{loop.end:#x}: {loop.instructions} instr, {loop.tensor_core} tc, "
                                f"{loop.ffma} ffma" for loop in found if loop.tensor_core or loop.ffma),
    }


def resource_usage(text: str, kernel: str) -> dict:
    """REG, STACK, LOCAL and static SHARED of ``kernel`` from ``cuobjdump -res-usage``."""
    match = re.search(rf"Function {re.escape(kernel)}:\s*\n\s*(.*)", text)
    if not match:
        raise ValueError(f"no resource usage for {kernel} in cuobjdump's output")
    fields = dict(re.findall(r"(\w+(?:\[\d+\])?):(\d+)", match.group(1)))
    return {"registers": int(fields["REG"]), "stack_bytes": int(fields.get("STACK", 0)),
            "local_bytes": int(fields.get("LOCAL", 0))}
