"""Shared helpers for the evaluation tests: a tiny released-format checkpoint and cheap test policies."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from prismatic.eval.config import EvalConfig

# Synthetic LIBERO-like statistics (upstream dataset_statistics.json layout).
ACTION_Q01 = [-0.9, -0.9, -0.9, -0.2, -0.2, -0.3, 0.0]
ACTION_Q99 = [0.9, 0.9, 0.9, 0.2, 0.2, 0.3, 1.0]
PROPRIO_Q01 = [-0.3, -0.3, 0.9, 2.5, -0.6, -0.6, 0.0, -0.04]
PROPRIO_Q99 = [0.3, 0.3, 1.3, 3.6, 0.6, 0.6, 0.04, 0.0]


def synthetic_statistics(key: str = "libero_spatial_no_noops") -> dict:
    def entry(q01, q99, mask=None):
        e = {"mean": [(a + b) / 2 for a, b in zip(q01, q99)], "std": [(b - a) / 4 for a, b in zip(q01, q99)],
             "max": list(q99), "min": list(q01), "q01": list(q01), "q99": list(q99)}
        if mask is not None:
            e["mask"] = mask
        return e

    return {key: {"action": entry(ACTION_Q01, ACTION_Q99, [True] * 6 + [False]),
                  "proprio": entry(PROPRIO_Q01, PROPRIO_Q99), "num_transitions": 1000, "num_trajectories": 10}}


def make_tiny_checkpoint(out_dir: Path, use_pro_version: bool = True, stats_key: str = "libero_spatial_no_noops",
                         seed: int = 0) -> Path:
    """A randomly initialised tiny VLA-Adapter saved in the released layout (what evaluation loads)."""
    from prismatic.models.config import get_preset
    from prismatic.models.loading import save_released_checkpoint
    from prismatic.models.processing import build_tiny_tokenizer
    from prismatic.models.vla import VLAAdapter

    torch.manual_seed(seed)
    model = VLAAdapter(get_preset("tiny", use_pro_version=use_pro_version))
    tokenizer = build_tiny_tokenizer(out_dir.parent / f"{out_dir.name}_tokenizer")
    return save_released_checkpoint(model, out_dir, tokenizer, synthetic_statistics(stats_key))


def fake_observation(seed: int = 0, size: int = 256) -> dict:
    rng = np.random.default_rng(seed)
    return {"agentview": rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
            "wrist": rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
            "state": np.asarray([0.0, 0.0, 1.1, 3.1, 0.0, 0.0, 0.02, -0.02], dtype=np.float32)}


class StatePolicy:
    """Deterministic and observation-dependent (so a mixed-up routing of chunks between episodes changes the
    outcome): move the end effector toward a fixed point, open/close the gripper by the height."""

    chunk_size = 8

    def __init__(self) -> None:
        self.calls: list[int] = []  # batch size of every call

    def predict(self, observations, instructions):
        self.calls.append(len(observations))
        out = np.zeros((len(observations), self.chunk_size, 7))
        for i, obs in enumerate(observations):
            pos = np.asarray(obs["state"][:3], dtype=np.float64)
            delta = np.clip((np.array([-0.05, 0.1, 1.0]) - pos) / 0.05, -1, 1)
            out[i, :, :3] = delta * np.linspace(1.0, 0.3, self.chunk_size)[:, None]
            out[i, :, 6] = 1.0 if pos[2] < 1.1 else -1.0
        return out


class RaisingPolicy:
    """A policy whose every call fails."""

    chunk_size = 8

    def predict(self, observations, instructions):
        raise RuntimeError("policy exploded on purpose")


def sim_config(tmp_path: Path, **overrides) -> EvalConfig:
    """A short evaluation for tests: one spatial task, one episode, 2 settle steps, a few policy steps."""
    base = dict(policy="scripted", task_suite_name="libero_spatial", task_ids=[0], num_trials_per_task=1,
                num_steps_wait=2, max_steps=12, local_log_dir=str(tmp_path), run_id="run", save_videos="none",
                device="cpu")
    base.update(overrides)
    return EvalConfig(**base)
