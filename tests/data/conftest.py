"""Fixtures for the data-pipeline tests: one small generated dataset per session, a tiny model config."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.data.common import DATASET, EPISODES_PER_TASK, IMAGE_SIZE, NUM_SHARDS, NUM_TASKS


@pytest.fixture(scope="session")
def data_root(tmp_path_factory) -> Path:
    """The session dataset, split over 3 tfrecord files like the real (16-32 file) LIBERO datasets, so file
    shuffling, interleaving and the tfds-id episode lookup are exercised."""
    from prismatic.vla.datasets.rlds_writer import write_rlds_dataset
    from prismatic.vla.datasets.synthetic import generate_episodes

    root = tmp_path_factory.mktemp("rlds_data")
    write_rlds_dataset(root, DATASET, generate_episodes(NUM_TASKS, EPISODES_PER_TASK, IMAGE_SIZE, seed=0),
                       IMAGE_SIZE, num_shards=NUM_SHARDS)
    return root


@pytest.fixture
def fresh_data_root(data_root, tmp_path) -> Path:
    """A private copy of the dataset without cached statistics (for tests that watch the cache)."""
    root = tmp_path / "data"
    shutil.copytree(data_root / DATASET, root / DATASET,
                    ignore=shutil.ignore_patterns("dataset_statistics_*", "episode_index_*"))
    return root


@pytest.fixture(autouse=True)
def _private_stats_cache(tmp_path, monkeypatch):
    """Any fallback statistics cache goes to a temp dir, never to the user's ~/.cache."""
    monkeypatch.setenv("PRISMATIC_CACHE", str(tmp_path / "stats_cache"))


@pytest.fixture(scope="session")
def model_config():
    from prismatic.models.config import get_preset

    return get_preset("tiny")  # 56 px, 2 images, chunk 8, action 7, proprio 8


@pytest.fixture(scope="session")
def raw_episodes(data_root):
    """The stored episodes read straight through tfds (an independent path): {episode id: arrays}."""
    from prismatic.vla.datasets._tf import get_tfds

    tfds = get_tfds()
    builder = tfds.builder_from_directory(str(data_root / DATASET / "1.0.0"))
    out = {}
    for i, ep in enumerate(tfds.as_numpy(builder.as_dataset(split="train", shuffle_files=False))):
        steps = list(ep["steps"])
        out[i] = {
            "action": [s["action"] for s in steps],
            "state": [s["observation"]["state"] for s in steps],
            "image": [s["observation"]["image"] for s in steps],
            "wrist_image": [s["observation"]["wrist_image"] for s in steps],
            "instruction": steps[0]["language_instruction"].decode(),
        }
    return out
