"""Lazy, GPU-free import of TensorFlow and tensorflow-datasets.

TensorFlow is only needed by the data pipeline, so it is imported on first use rather than at module import:
processes that never touch RLDS data (the simulator workers, model-only tools) never load it. Two traps
decide the details (docs: environment notes):
  * with triton installed, loading tensorflow before triton's native library crashes the process (both
    bundle LLVM). `import torch` alone is not enough: torch imports triton lazily (torch._dynamo, e.g. via
    timm/torchvision), possibly after TF. So triton itself is imported before tensorflow;
  * TensorFlow must never grab a GPU that training needs, so GPUs are hidden from it right after import.
"""

from __future__ import annotations

import functools
import importlib.util
import os


@functools.cache
def get_tf():
    """Import tensorflow (after torch and triton), hide all GPUs from it, and return the module."""
    import torch  # noqa: F401  (must precede tensorflow, see module docstring)

    if importlib.util.find_spec("triton") is not None:
        import triton  # noqa: F401  (its LLVM must be loaded before TF's, see module docstring)

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # keep TF's INFO chatter out of training logs
    import tensorflow as tf

    # Must run before TF initialises its devices; as the first thing after import it always does, unless
    # another module imported tensorflow and used a GPU already — then TF owns that GPU and we say so.
    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError as e:
        raise RuntimeError(
            "tensorflow initialised its devices before the data pipeline could hide the GPUs; import "
            "tensorflow only through prismatic.vla.datasets._tf.get_tf()"
        ) from e
    return tf


@functools.cache
def get_tfds():
    """Import tensorflow_datasets (TensorFlow first, via `get_tf`) with progress bars off."""
    get_tf()
    import tensorflow_datasets as tfds

    tfds.disable_progress_bar()
    return tfds
