"""Policies evaluated in the main process, batched over the simulator workers.

A policy maps a batch of observations to action chunks in the ENV convention (gripper -1 open / +1 close):

    predict(observations: list[{"agentview": uint8 (H,W,3), "wrist": uint8 (H,W,3), "state": float32 (8,)}],
            instructions: list[str]) -> float (B, chunk, 7)

`VLAPolicy` wraps a checkpoint: the training preprocessing (`prismatic.eval.preprocessing`), the processor,
`model.predict_action` (normalises proprio, un-normalises actions with the checkpoint's statistics) and the
gripper conversion (`prismatic.sim.libero.env.process_gripper_action`). Policies that need privileged
simulator state run inside the workers instead (`--policy scripted`, see `prismatic.sim.libero.workers`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np
import torch

from prismatic.eval.config import EvalConfig
from prismatic.sim.libero.env import process_gripper_action
from prismatic.vla.normalization import select_unnorm_key

logger = logging.getLogger(__name__)

LIBERO_ACTION_DIM = 7
LIBERO_PROPRIO_DIM = 8


class BatchPolicy(Protocol):
    chunk_size: int  # actions per predicted chunk

    def predict(self, observations: Sequence[dict], instructions: Sequence[str]) -> np.ndarray: ...


def resolve_device(device: str) -> tuple[torch.device, torch.dtype]:
    """--device -> (device, weights dtype): CUDA with bf16 when available (auto) or requested, else CPU fp32."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("--device cuda was requested but torch sees no CUDA device")
        return torch.device("cuda"), torch.bfloat16
    if device == "cpu":
        return torch.device("cpu"), torch.float32
    raise ValueError(f"--device must be auto, cpu or cuda, got {device!r}")


class VLAPolicy:
    """A loaded VLA checkpoint as a batched LIBERO policy."""

    def __init__(self, loaded, unnorm_key: str, center_crop: bool, num_images: int, device: torch.device):
        self.model = loaded.model
        self.processor = loaded.processor
        self.config = loaded.config
        self.stats = loaded.dataset_statistics[unnorm_key]
        self.unnorm_key = unnorm_key
        self.center_crop = center_crop
        self.num_images = num_images
        self.device = device
        self.dtype = next(self.model.parameters()).dtype
        self.chunk_size = self.config.num_actions_chunk

    def model_inputs(self, observations: Sequence[dict], instructions: Sequence[str]) -> dict[str, torch.Tensor]:
        """The tensors `predict_action` takes (exposed for tests and benchmarks)."""
        from prismatic.eval.preprocessing import preprocess_image

        if len(observations) != len(instructions) or not observations:
            raise ValueError(f"got {len(observations)} observations and {len(instructions)} instructions")
        size = self.config.vision.image_size
        ids, pixels = [], []
        for obs, instruction in zip(observations, instructions):
            cameras = [obs["agentview"], obs["wrist"]][: self.num_images]
            sample = self.processor([preprocess_image(img, size, self.center_crop) for img in cameras], instruction)
            ids.append(sample["input_ids"])
            pixels.append(sample["pixel_values"])
        input_ids, attention_mask = self.processor.collate_text(ids)
        states = np.stack([np.asarray(obs["state"], dtype=np.float32) for obs in observations])
        return {
            "input_ids": input_ids.to(self.device),
            "attention_mask": attention_mask.to(self.device),
            "pixel_values": torch.stack(pixels).to(self.device, self.dtype),
            "proprio_raw": torch.from_numpy(states).to(self.device) if self.config.use_proprio else None,
        }

    @torch.inference_mode()
    def predict(self, observations: Sequence[dict], instructions: Sequence[str]) -> np.ndarray:
        inputs = self.model_inputs(observations, instructions)
        actions = self.model.predict_action(stats=self.stats, **inputs)  # (B, chunk, 7), gripper in [0, 1]
        return process_gripper_action(actions.float().cpu().numpy())


def resolve_checkpoint(cfg: EvalConfig) -> Path:
    """--pretrained_checkpoint as a local path: the directory itself, or the hub snapshot of a hub id (fetched
    once into the HF cache; with HF_HUB_OFFLINE=1 from the cache only, else an error naming the repo)."""
    from prismatic.models.hub import looks_like_hub_id, resolve_model_dir

    value = cfg.pretrained_checkpoint
    if not Path(value).exists() and looks_like_hub_id(value):
        return resolve_model_dir(value, revision=cfg.hub_revision, flag="--pretrained_checkpoint", kind="checkpoint")
    return Path(value)


def check_checkpoint_flags(cfg: EvalConfig, config, dataset_statistics: dict, ckpt: Path) -> str:
    """The flags against a checkpoint's config and statistics (what `build_vla_policy` and `--dry_run` check).
    Returns the dataset-statistics key used to un-normalise actions."""
    if config.num_images_in_input != cfg.num_images_in_input:
        raise ValueError(f"--num_images_in_input {cfg.num_images_in_input} does not match the checkpoint "
                         f"({config.num_images_in_input}) in {ckpt}")
    if config.use_proprio != cfg.use_proprio:
        raise ValueError(f"--use_proprio {cfg.use_proprio} does not match the checkpoint ({config.use_proprio}) in "
                         f"{ckpt}")
    if config.action_dim != LIBERO_ACTION_DIM or (config.use_proprio and config.proprio_dim != LIBERO_PROPRIO_DIM):
        raise ValueError(f"checkpoint {ckpt} has action_dim {config.action_dim} / proprio_dim {config.proprio_dim}; "
                         f"LIBERO needs {LIBERO_ACTION_DIM} / {LIBERO_PROPRIO_DIM}")
    if cfg.num_open_loop_steps > config.num_actions_chunk:
        raise ValueError(f"--num_open_loop_steps {cfg.num_open_loop_steps} exceeds the checkpoint's action chunk "
                         f"({config.num_actions_chunk})")
    try:
        key = select_unnorm_key(dataset_statistics, cfg.unnorm_key or cfg.task_suite_name)
    except KeyError as e:
        raise ValueError(f"--unnorm_key {cfg.unnorm_key or cfg.task_suite_name!r}: no matching dataset statistics in "
                         f"{ckpt}: {e.args[0]}") from e
    entry = dataset_statistics[key]
    for part, dim in (("action", config.action_dim), ("proprio", config.proprio_dim)):
        if part == "proprio" and not config.use_proprio:
            continue
        if part not in entry or len(entry[part]["q01"]) != dim:
            raise ValueError(f"dataset statistics {key!r} in {ckpt} lack a {dim}-d {part!r} entry")
    return key


def build_vla_policy(cfg: EvalConfig) -> VLAPolicy:
    """Load and check a checkpoint against the flags. Every mismatch is an error here, before any simulator
    starts: missing directory/files, head variant, proprio / image-count / chunk mismatches, statistics."""
    from prismatic.models.loading import load_vla_checkpoint

    ckpt = resolve_checkpoint(cfg)
    if not ckpt.is_dir():
        raise FileNotFoundError(f"--pretrained_checkpoint is not a directory: {ckpt}")
    device, dtype = resolve_device(cfg.device)
    loaded = load_vla_checkpoint(ckpt, device=device, dtype=dtype, use_pro_version=cfg.use_pro_version)
    config = loaded.config
    key = check_checkpoint_flags(cfg, config, loaded.dataset_statistics, ckpt)
    logger.info("loaded %s (%s, %s head) on %s/%s; un-normalising with %r", ckpt, config.preset,
                "Pro" if config.action_head.use_pro_version else "original", device, dtype, key)
    return VLAPolicy(loaded, key, cfg.center_crop, cfg.num_images_in_input, device)
