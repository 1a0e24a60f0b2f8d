"""Compile every kernel as our launchers issue it, for an H100 (sm_90a), with no GPU, and check the CI gates.

The compile logic is ``perf.audit``'s (the JIT's own specialisation, see its docstring); this script runs
it for the gates ``tests/test_gpu_compile.py`` enforces: per layer, every kernel's default tile on the
first conv of the layer's headline network, channels_last, in bf16 (every gate) and fp32 (compiles,
shared memory). Run it without TRITON_INTERPRET (the interpreter replaces the kernels being compiled):

    python tests/compile_for_gpu.py [LAYER ...] [--json]

Prints one line per launch (or, with --json, the results as JSON); exits 1 if any gate fails.
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from perf import audit  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("layers", nargs="*", metavar="LAYER", help="layers to check (default: every layer)")
    parser.add_argument("--json", action="store_true", help="print the results as one JSON list")
    args = parser.parse_args(argv)
    layers = audit.resolve_layers(args.layers or ["all"])
    compiler = audit.Compiler()
    try:
        results = [entry for layer in layers for entry in audit.gate_results(layer, compiler)]
    except audit.NotCompilable as error:
        print(error, file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(results))
    else:
        for entry in results:
            verdict = "FAIL " + ",".join(entry["failed"]) if entry["failed"] else "ok"
            print(f"{verdict:32s} {entry['layer']}.{entry['kernel']}[{entry['launch']}] {entry['dtype']} "
                  f"{entry['tile']}: {entry['figures']}")
        print(f"{compiler.compiled} kernels compiled for sm_90a, {sum(bool(e['failed']) for e in results)} "
              f"of {len(results)} launches fail a gate")
    return 1 if any(entry["failed"] for entry in results) else 0


if __name__ == "__main__":
    sys.exit(main())
