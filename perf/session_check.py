"""The dry run of ``perf/gpu_session.sh``: check one of its python commands without running it.

    python -m perf.session_check -m MODULE ARG ...

checks ``python -m MODULE ARG ...`` as far as it can on a machine without a GPU, and exits non-zero
on the first problem: the module imports; its arguments parse with its own parser; what they name
exists (layers, shape sets, options: through ``--list`` for ``perf run``, ``perf audit`` and
``perf host``, through the tuner's own spec resolution for ``autotune``); the files it reads exist
and the folders it writes are writable; ``pytest`` collects the tests it would run. Nothing is timed, tuned or compiled.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import os
import sys
from pathlib import Path


class CheckFailed(Exception):
    pass


def _writable(path: Path) -> None:
    """``path`` is a folder that exists or can be made, and a file can be written in it."""
    path.mkdir(parents=True, exist_ok=True)
    probe = path / ".session_check"
    try:
        probe.write_text("")
    finally:
        probe.unlink(missing_ok=True)


def _parsed(parser, args: list[str]):
    try:
        return parser.parse_args(args)
    except SystemExit as exit_:
        raise CheckFailed(f"the arguments do not parse (exit {exit_.code})") from None


def check_perf(args: list[str]) -> str:
    from perf.__main__ import build_parser, main

    parsed = _parsed(build_parser(), args)
    if parsed.command in ("run", "audit", "host"):
        listed = io.StringIO()
        with contextlib.redirect_stdout(listed):
            code = main([*args, "--list"])
        if code != 0:
            raise CheckFailed(f"`perf {parsed.command} ... --list` exits {code}")
        target = parsed.out if parsed.command == "audit" else (parsed.csv if parsed.command == "run"
                                                                 else parsed.out).parent
        _writable(target)
        return f"--list gives {len(listed.getvalue().splitlines())} lines; writes {target}"
    if parsed.command == "ceilings":
        _writable(parsed.out.parent)
        return f"writes {parsed.out}"
    _writable(parsed.out)  # plot: reads the CSV (it may not exist yet: the run stages write it), writes PNGs
    return f"reads {parsed.csv}, writes {parsed.out}"


def check_autotune(args: list[str]) -> str:
    from autotune.cli import build_parser, resolve_specs
    from tritonconv import env
    from tritonconv.ops.registry import ADAPTERS

    parsed = _parsed(build_parser(), args)
    if parsed.export or parsed.import_ or parsed.model:
        _writable(parsed.cache.parent if parsed.cache else env.cache_dir())
        return "export / import / model: no shape set to resolve"
    if not parsed.layer or not parsed.shapes:
        raise CheckFailed("--layer and --shapes are required (or --model, or --export / --import FILE)")
    try:
        specs = resolve_specs(ADAPTERS[parsed.layer], parsed)
    except SystemExit as exit_:
        raise CheckFailed(str(exit_.code)) from None
    _writable(parsed.cache.parent if parsed.cache else env.cache_dir())
    return f"{len(specs)} specs"


def check_pytest(args: list[str]) -> str:
    import pytest

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = pytest.main([*args, "--collect-only", "-q", "-n", "0", "-p", "no:cacheprovider"])
    if code not in (0, 5):  # 5: nothing collected, which the marker expression may mean on a CPU
        raise CheckFailed(f"pytest cannot collect: exit {code}\n{out.getvalue()[-2000:]}")
    lines = out.getvalue().splitlines()
    return f"collects ({len(lines)} lines of listing)"


CHECKS = {"perf": check_perf, "autotune": check_autotune, "pytest": check_pytest}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) < 2 or argv[0] != "-m":
        print(__doc__, file=sys.stderr)
        return 2
    module, args = argv[1], argv[2:]
    try:
        importlib.import_module(module if module != "perf" else "perf.__main__")
        if module not in CHECKS:
            raise CheckFailed(f"no check for `python -m {module}`: add one to perf/session_check.py")
        note = CHECKS[module](args)
    except CheckFailed as error:
        print(f"FAIL python -m {module} {' '.join(args)}: {error}", file=sys.stderr)
        return 1
    except Exception as error:  # an import or a usage error is what the dry run is for
        print(f"FAIL python -m {module} {' '.join(args)}: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    print(f"ok   python -m {module} {' '.join(args)}: {note}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
