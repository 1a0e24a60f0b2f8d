import os
import sys

import torch

# Without a GPU the candidates are checked under Triton's interpreter, which must be switched on
# before any kernel module is imported.
if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

from autotune.cli import main  # noqa: E402

sys.exit(main())
