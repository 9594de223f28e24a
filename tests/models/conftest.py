"""Shared fixtures for the model tests: tiny configs, synthetic batches, statistics, a tiny tokenizer."""

from __future__ import annotations

from typing import Callable

import pytest
import torch

from prismatic.models.config import VLAConfig, get_preset


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory):
    from prismatic.models.processing import build_tiny_tokenizer

    path = tmp_path_factory.mktemp("tiny_tokenizer")
    build_tiny_tokenizer(path)
    return path


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_tokenizer_dir):
    from prismatic.models.processing import load_tokenizer

    return load_tokenizer(tiny_tokenizer_dir)


@pytest.fixture
def tiny_config() -> Callable[..., VLAConfig]:
    """tiny_config(use_pro_version=True, train_noise_std=None) -> the "tiny" preset, optionally modified."""

    def _make(use_pro_version: bool = True, train_noise_std: float | None = None) -> VLAConfig:
        config = get_preset("tiny", use_pro_version=use_pro_version)
        if train_noise_std is not None:
            config.action_head.train_noise_std = train_noise_std
        return config

    return _make


@pytest.fixture
def make_batch() -> Callable[..., dict[str, torch.Tensor]]:
    """make_batch(config, lengths, seed) -> a right-padded model batch; row i attends lengths[i] tokens
    (prompt + placeholders) and is padded to max(lengths) + 3."""

    def _make(config: VLAConfig, lengths: list[int], seed: int = 0) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        b, width = len(lengths), max(lengths) + 3
        input_ids = torch.randint(3, config.llm.vocab_size, (b, width), generator=g)
        attention_mask = torch.zeros(b, width, dtype=torch.bool)
        for i, n in enumerate(lengths):
            attention_mask[i, :n] = True
            input_ids[i, n:] = 0  # pad id
        size = config.vision.image_size
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "pixel_values": torch.randn(b, 6 * config.num_images_in_input, size, size, generator=g),
            "proprio": torch.rand(b, config.proprio_dim, generator=g) * 2 - 1,
            "actions": torch.rand(b, config.num_actions_chunk, config.action_dim, generator=g) * 2 - 1,
        }

    return _make


@pytest.fixture
def dataset_statistics() -> dict[str, dict]:
    action_q01 = [-0.5, -0.4, -0.3, -0.2, -0.1, -0.05, 0.0]
    action_q99 = [0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.0]
    proprio_q01 = [-0.2, -0.3, 0.8, -3.0, -1.0, -0.5, 0.0, -0.04]
    proprio_q99 = [0.2, 0.3, 1.2, 3.0, 1.0, 0.5, 0.04, 0.0]
    return {
        "toy_dataset": {
            "action": {
                "mean": [0.0] * 7, "std": [1.0] * 7, "min": action_q01, "max": action_q99,
                "q01": action_q01, "q99": action_q99, "mask": [True] * 6 + [False],
            },
            "proprio": {
                "mean": [0.0] * 8, "std": [1.0] * 8, "min": proprio_q01, "max": proprio_q99,
                "q01": proprio_q01, "q99": proprio_q99,
            },
            "num_transitions": 100,
            "num_trajectories": 2,
        }
    }
