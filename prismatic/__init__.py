"""prismatic: a VLA-Adapter-style fine-tuning stack with CRaFT built in.

torch is imported first on purpose: with triton installed, importing tensorflow before torch/timm
crashes the process (see docs/EXPERIMENTS_AND_TRAINING.md, "environment traps"). Every entry point
imports this package before anything that may pull in tensorflow.
"""

import torch  # noqa: F401  (import-order guard, see module docstring)

__version__ = "0.1.0"
