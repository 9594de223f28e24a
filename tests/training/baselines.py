"""Reference scores for learning tests."""

from __future__ import annotations

import itertools

import numpy as np

from prismatic.models.config import get_preset
from prismatic.vla.datasets import RLDSDataset


def constant_predictor_l1(data_root, dataset_name: str = "libero_synthetic", num_samples: int = 2000) -> float:
    """L1 of the best constant prediction (the per-dimension median) of normalised action chunks."""
    ds = RLDSDataset(data_root, dataset_name, None, get_preset("tiny"), train=True, image_aug=False,
                     shuffle_buffer_size=64, seed=0)
    actions = np.stack([f["actions"] for f in itertools.islice(iter(ds), num_samples)])  # (N, chunk, A)
    median = np.median(actions, axis=0, keepdims=True)
    return float(np.abs(actions - median).mean())
