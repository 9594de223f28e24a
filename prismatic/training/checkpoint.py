"""Atomic training checkpoints and exact resume.

    run_root_dir/
      {run_id}/                                   run directory: metrics.jsonl, dataset_statistics.json,
                                                  selected_episodes.json (episode ids used, per task), wandb files
      {run_id}--{step}_chkpt/                     one checkpoint (step = optimizer steps done)
        finetune_config.json                      the resolved FinetuneConfig
        vla_config.json                           model sizes (VLAConfig)
        dataset_statistics.json                   normalisation statistics (upstream format)
        tokenizer files                           tokenizer.json, tokenizer_config.json, ...
        lora_adapter/                             peft adapter (adapter_model.safetensors, adapter_config.json)
        action_head--{step}_checkpoint.pt         action head state dict (keys "model.*", fp32)
        proprio_projector--{step}_checkpoint.pt   proprio projector state dict
        action_queries.safetensors                {"action_queries.weight": (Q, D)}
        model.safetensors                         merged VLM in the released format (LoRA folded in)
        training_state.pt                         optimizer, scheduler, step, per-rank RNG, data position,
                                                  CRaFT state (λ, dual state, θ0 snapshot), W&B run id

Each checkpoint is written by rank 0 into a hidden temporary directory and renamed into place, so a run
killed mid-save leaves the previous checkpoint untouched and no half-written checkpoint is ever found.
Loading uses safetensors and `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from prismatic.constants import (
    ACTION_HEAD_FILE,
    ACTION_QUERIES_FILE,
    DATASET_STATISTICS_FILE,
    FINETUNE_CONFIG_FILE,
    LORA_ADAPTER_DIR,
    MERGED_MODEL_FILE,
    PROPRIO_PROJECTOR_FILE,
    TRAINING_STATE_FILE,
    VLA_CONFIG_FILE,
)
from prismatic.vla.normalization import save_dataset_statistics

log = logging.getLogger(__name__)

_CHKPT_RE = re.compile(r"^(?P<run_id>.+)--(?P<step>\d+)_chkpt$")


def checkpoint_dir(run_root_dir: str | Path, run_id: str, step: int) -> Path:
    return Path(run_root_dir) / f"{run_id}--{step}_chkpt"


def list_checkpoints(run_root_dir: str | Path, run_id: str) -> dict[int, Path]:
    """Completed checkpoints of `run_id` by step (temporary directories are never matched)."""
    root = Path(run_root_dir)
    found = {}
    if root.is_dir():
        for child in root.iterdir():
            m = _CHKPT_RE.match(child.name)
            if m and m.group("run_id") == run_id and child.is_dir():
                found[int(m.group("step"))] = child
    return dict(sorted(found.items()))


def find_checkpoint(run_root_dir: str | Path, run_id: str, step: int | None = None) -> Path:
    """The checkpoint to resume from: `step`'s, or the latest. Clear error when there is none."""
    found = list_checkpoints(run_root_dir, run_id)
    if not found:
        raise FileNotFoundError(
            f"--resume True but no checkpoint of run {run_id!r} in {run_root_dir} "
            f"(expected directories named '{run_id}--<step>_chkpt')"
        )
    if step is None:
        return found[max(found)]
    if step not in found:
        raise FileNotFoundError(f"no checkpoint for --resume_step {step} of run {run_id!r}; available steps: {sorted(found)}")
    return found[step]


@dataclass
class CheckpointPayload:
    """What `save_checkpoint` writes; tensors are copied to CPU by the caller's state_dict calls."""

    step: int
    finetune_config: dict
    vla_config: dict
    dataset_statistics: dict
    tokenizer: object
    action_head: dict[str, torch.Tensor]
    proprio_projector: dict[str, torch.Tensor] | None
    action_queries: torch.Tensor
    lora_adapter: dict[str, torch.Tensor] | None  # peft state dict, None for full fine-tuning
    lora_config: object | None  # peft LoraConfig (saved as adapter_config.json)
    merged_vlm: dict[str, torch.Tensor] | None  # released-format VLM weights (LoRA folded in)
    training_state: dict


def _cpu(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in sd.items()}


def save_checkpoint(run_root_dir: str | Path, run_id: str, payload: CheckpointPayload,
                    keep_only_latest: bool = False) -> Path:
    """Write a checkpoint atomically (temp dir, then rename). Rank 0 only."""
    root = Path(run_root_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = checkpoint_dir(root, run_id, payload.step)
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    step = payload.step

    (tmp / FINETUNE_CONFIG_FILE).write_text(json.dumps(payload.finetune_config, indent=2, sort_keys=True))
    (tmp / VLA_CONFIG_FILE).write_text(json.dumps(payload.vla_config, indent=2, sort_keys=True))
    save_dataset_statistics(payload.dataset_statistics, tmp / DATASET_STATISTICS_FILE)
    payload.tokenizer.save_pretrained(str(tmp))
    torch.save(_cpu(payload.action_head), tmp / ACTION_HEAD_FILE.format(step=step))
    if payload.proprio_projector is not None:
        torch.save(_cpu(payload.proprio_projector), tmp / PROPRIO_PROJECTOR_FILE.format(step=step))
    save_file({"action_queries.weight": payload.action_queries.detach().cpu().contiguous()}, tmp / ACTION_QUERIES_FILE)
    if payload.lora_adapter is not None:
        adapter_dir = tmp / LORA_ADAPTER_DIR
        adapter_dir.mkdir()
        save_file(_cpu(payload.lora_adapter), adapter_dir / "adapter_model.safetensors")
        payload.lora_config.save_pretrained(str(adapter_dir))
    if payload.merged_vlm is not None:
        save_file(_cpu(payload.merged_vlm), tmp / MERGED_MODEL_FILE)
    torch.save(payload.training_state, tmp / TRAINING_STATE_FILE)

    # Swap into place: an existing checkpoint of the same step is moved aside first, removed after.
    stale = None
    if final.exists():
        stale = root / f".stale-{final.name}-{os.getpid()}"
        final.rename(stale)
    tmp.rename(final)
    if stale is not None:
        shutil.rmtree(stale)
    if keep_only_latest:
        for old_step, path in list_checkpoints(root, run_id).items():
            if old_step != step:
                shutil.rmtree(path)
    log.info("saved checkpoint %s", final)
    return final


def _require(path: Path) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"checkpoint is missing {path.name}: {path}")
    return path


def _single(directory: Path, pattern: str) -> Path:
    matches = sorted(directory.glob(pattern))
    if len(matches) != 1:
        raise FileNotFoundError(f"expected exactly one {pattern!r} in {directory}, found {[m.name for m in matches]}")
    return matches[0]


def torch_load(path: Path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated / corrupt file: name it
        raise RuntimeError(f"corrupt checkpoint file {path}: {type(e).__name__}: {e}") from e


def safetensors_load(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except Exception as e:
        raise RuntimeError(f"corrupt checkpoint file {path}: {type(e).__name__}: {e}") from e


@dataclass
class LoadedCheckpoint:
    path: Path
    finetune_config: dict
    action_head: dict[str, torch.Tensor]
    proprio_projector: dict[str, torch.Tensor] | None
    action_queries: torch.Tensor
    lora_adapter: dict[str, torch.Tensor] | None
    merged_vlm: dict[str, torch.Tensor] | None
    training_state: dict


def load_checkpoint(path: str | Path, need_lora: bool, need_merged: bool) -> LoadedCheckpoint:
    """Read a checkpoint written by `save_checkpoint`; every missing or unreadable file is a clear error."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint directory not found: {path}")
    try:
        finetune_config = json.loads(_require(path / FINETUNE_CONFIG_FILE).read_text())
    except json.JSONDecodeError as e:
        raise RuntimeError(f"corrupt checkpoint file {path / FINETUNE_CONFIG_FILE}: {e}") from e
    proprio_files = sorted(path.glob("proprio_projector--*checkpoint.pt"))
    lora = None
    if need_lora:
        lora = safetensors_load(_require(path / LORA_ADAPTER_DIR / "adapter_model.safetensors"))
    merged = safetensors_load(_require(path / MERGED_MODEL_FILE)) if need_merged else None
    return LoadedCheckpoint(
        path=path,
        finetune_config=finetune_config,
        action_head=torch_load(_single(path, "action_head--*checkpoint.pt")),
        proprio_projector=torch_load(proprio_files[0]) if proprio_files else None,
        action_queries=safetensors_load(_require(path / ACTION_QUERIES_FILE))["action_queries.weight"],
        lora_adapter=lora,
        merged_vlm=merged,
        training_state=torch_load(_require(path / TRAINING_STATE_FILE)),
    )
