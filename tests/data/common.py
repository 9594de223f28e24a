"""Constants and small helpers shared by the data tests."""

from __future__ import annotations

import itertools

# The session dataset (conftest.data_root): 3 tasks x 4 episodes of ~20-35 steps at 64 px (~300 frames).
DATASET = "libero_synthetic"
NUM_TASKS, EPISODES_PER_TASK, IMAGE_SIZE, NUM_SHARDS = 3, 4, 64, 3
CHUNK = 8  # the tiny preset's action chunk


def make_dataset(root, config, name: str = DATASET, batch_transform=None, **kwargs):
    from prismatic.vla.datasets import RLDSDataset

    kwargs.setdefault("shuffle_buffer_size", 1)
    return RLDSDataset(root, name, batch_transform, config, **kwargs)


def take(dataset, n: int) -> list:
    return list(itertools.islice(iter(dataset), n))
