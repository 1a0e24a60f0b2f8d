"""The tritonconv benchmark suite: ``python -m perf run | ceilings | plot`` (see ``python -m perf --help``).

It imports the library and drives every operator through its adapter; the library never imports it.
"""


class UsageError(ValueError):
    """A command-line value that is not valid; the message names the argument, the value and the choices."""
