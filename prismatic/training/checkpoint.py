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
        manifest.json                             sha256 + size of every file above (written last)
      {run_id}.overwritten-{time}/                an earlier run moved aside by `--overwrite True`

Each checkpoint is written by rank 0 into a hidden temporary directory `.tmp-{name}-{host}-{pid}` and renamed
into place, so a run killed mid-save leaves the previous checkpoint untouched and no half-written checkpoint
is ever found; temporary directories left by a killed run are removed when the run starts again
(`remove_stale_temp_dirs`). A checkpoint holding a non-finite tensor is never written. Loading verifies the
manifest first (prismatic/models/manifest.py), then uses safetensors and `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
import socket
import time
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
from prismatic.models.manifest import CorruptCheckpointError, verify_manifest, write_manifest
from prismatic.vla.normalization import save_dataset_statistics

log = logging.getLogger(__name__)

_CHKPT_RE = re.compile(r"^(?P<run_id>.+)--(?P<step>\d+)_chkpt$")
# A checkpoint being written (`.tmp-`) or an old one being replaced (`.stale-`): the writer's host and pid.
_TEMP_RE = re.compile(r"^\.(?:tmp|stale)-(?P<name>.+_chkpt)-(?P<host>[^/]+)-(?P<pid>\d+)$")


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


def non_finite_tensors(payload: CheckpointPayload) -> list[str]:
    """Names of the payload's model tensors holding inf / nan ("lora_adapter: base_model.x.lora_A.weight")."""
    parts = {"action_head": payload.action_head, "proprio_projector": payload.proprio_projector,
             "action_queries": {"weight": payload.action_queries}, "lora_adapter": payload.lora_adapter,
             "merged_vlm": payload.merged_vlm}
    bad = []
    for part, sd in parts.items():
        for name, t in (sd or {}).items():
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                bad.append(f"{part}: {name}")
    return bad


def last_checkpoint_note(run_root_dir: str | Path, run_id: str) -> str:
    """What is left to resume from, for error messages: the newest complete checkpoint, or that there is none."""
    found = list_checkpoints(run_root_dir, run_id)
    if not found:
        return f"no checkpoint of run {run_id!r} was written yet in {run_root_dir}"
    step = max(found)
    return f"the last intact checkpoint is {found[step]} (step {step})"


def _host() -> str:
    return socket.gethostname().replace("/", "_") or "localhost"


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def remove_stale_temp_dirs(run_root_dir: str | Path, run_id: str) -> list[Path]:
    """Remove the `.tmp-` / `.stale-` directories of `run_id` that a killed save left behind (kill -9, a full
    disk, a node failure). One written from this host by a process that is still running is kept (a second job
    on the same run id); one from another host cannot be checked and is, like a dead one, removed: a run id
    has one writer. Returns the removed paths."""
    root = Path(run_root_dir)
    removed = []
    if not root.is_dir():
        return removed
    for child in root.iterdir():
        m = _TEMP_RE.match(child.name)
        if not m or not child.is_dir():
            continue
        owner = _CHKPT_RE.match(m.group("name"))
        if owner is None or owner.group("run_id") != run_id:
            continue
        pid = int(m.group("pid"))
        if m.group("host") == _host() and pid != os.getpid() and _pid_alive(pid):
            log.warning("leaving %s: its writer (pid %d on this host) is still running", child, pid)
            continue
        shutil.rmtree(child, ignore_errors=True)
        removed.append(child)
        log.warning("removed %s, a checkpoint left half-written by an interrupted run", child)
    return removed


def existing_run_contents(run_root_dir: str | Path, run_id: str) -> list[Path]:
    """What an earlier run of `run_id` left in run_root_dir: its checkpoints and its run directory."""
    root = Path(run_root_dir)
    found = list(list_checkpoints(root, run_id).values())
    run_dir = root / run_id
    if run_dir.is_dir() and any(run_dir.iterdir()):
        found.insert(0, run_dir)
    return found


def check_fresh_run(run_root_dir: str | Path, run_id: str, overwrite: bool) -> list[Path]:
    """A fresh (not resumed) run must not write into an earlier run of the same id. An earlier run with
    checkpoints is refused (the error names the ways out) unless `overwrite`; what is to be moved aside is
    returned (an earlier run without a checkpoint, e.g. one that crashed before its first save, is moved aside
    without asking: there is nothing to resume, and its logs are kept). Call on every rank; `move_run_aside`
    on rank 0."""
    found = existing_run_contents(run_root_dir, run_id)
    steps = sorted(list_checkpoints(run_root_dir, run_id))
    if steps and not overwrite:
        raise FileExistsError(
            f"run {run_id!r} already exists in {run_root_dir} (checkpoints at steps {steps}); pass --resume True "
            f"to continue it, a new --run_id_note / --run_id_override to start another run, or --overwrite True "
            f"to start over (the old run is moved aside, not deleted)"
        )
    return found


def move_run_aside(run_root_dir: str | Path, run_id: str, paths: list[Path]) -> Path | None:
    """Move an earlier run's directory and checkpoints into `{run_id}.overwritten-{time}/` (rank 0)."""
    if not paths:
        return None
    root = Path(run_root_dir)
    aside = root / f"{run_id}.overwritten-{time.strftime('%Y%m%d-%H%M%S')}"
    suffix = 1
    while aside.exists():
        suffix += 1
        aside = root / f"{run_id}.overwritten-{time.strftime('%Y%m%d-%H%M%S')}-{suffix}"
    aside.mkdir()
    for path in paths:
        path.rename(aside / path.name)
    log.warning("--overwrite True: moved the earlier run %r (%d entries) to %s", run_id, len(paths), aside)
    return aside


def save_checkpoint(run_root_dir: str | Path, run_id: str, payload: CheckpointPayload,
                    keep_only_latest: bool = False) -> Path:
    """Write a checkpoint atomically (temp dir, manifest last, then rename). Rank 0 only.

    Refuses a payload with non-finite tensors (FloatingPointError). On any failure the temporary directory is
    removed; a full disk is one OSError naming the directory and the space a checkpoint needs."""
    root = Path(run_root_dir)
    bad = non_finite_tensors(payload)
    if bad:
        raise FloatingPointError(
            f"refusing to write checkpoint step {payload.step} of run {run_id!r}: {len(bad)} tensor(s) hold "
            f"inf/nan ({', '.join(bad[:5])}{', ...' if len(bad) > 5 else ''}); "
            f"{last_checkpoint_note(root, run_id)}"
        )
    root.mkdir(parents=True, exist_ok=True)
    final = checkpoint_dir(root, run_id, payload.step)
    tmp = root / f".tmp-{final.name}-{_host()}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        tmp.mkdir()
        _write_files(tmp, payload)
        write_manifest(tmp)
    except BaseException as e:  # KeyboardInterrupt included: never leave a half-written directory behind
        written = _dir_bytes(tmp) if tmp.exists() else 0
        full = isinstance(e, Exception) and _disk_full(e, root)
        shutil.rmtree(tmp, ignore_errors=True)
        if full:
            raise _no_space_error(root, run_id, final, written) from None
        raise
    step = payload.step

    # Swap into place: an existing checkpoint of the same step is moved aside first, removed after.
    stale = None
    if final.exists():
        stale = root / f".stale-{final.name}-{_host()}-{os.getpid()}"
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


def _write_files(tmp: Path, payload: CheckpointPayload) -> None:
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


def _disk_full(e: Exception, root: Path) -> bool:
    """Whether a failed write failed for lack of space. safetensors and torch.save report it in their own words
    ("os error 28", "unexpected pos ..."), so the filesystem is asked too: (almost) no space left."""
    if isinstance(e, OSError) and e.errno == errno.ENOSPC:
        return True
    if "No space left on device" in str(e) or "os error 28" in str(e):
        return True
    try:
        return shutil.disk_usage(root).free < 1 << 20
    except OSError:
        return False


def _no_space_error(root: Path, run_id: str, final: Path, written: int) -> OSError:
    found = list_checkpoints(root, run_id)
    if found:
        last = found[max(found)]
        need = f"a checkpoint of this run takes {_mib(_dir_bytes(last))} (the last one, {last.name})"
    else:
        need = f"this checkpoint needs more than the {_mib(written)} written before the disk filled up"
    free = shutil.disk_usage(root).free
    return OSError(errno.ENOSPC, f"No space left on device writing checkpoint {final}: {need}, "
                                 f"{_mib(free)} free in {root}; free space, then resume with --resume True "
                                 f"(the partial checkpoint was removed)")


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


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
        raise CorruptCheckpointError(f"corrupt checkpoint file {path}: {type(e).__name__}: {e}") from e


def safetensors_load(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except Exception as e:
        raise CorruptCheckpointError(f"corrupt checkpoint file {path}: {type(e).__name__}: {e}") from e


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
    """Read a checkpoint written by `save_checkpoint`, verified against its manifest first; every missing,
    damaged or unreadable file is a clear error naming it."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint directory not found: {path}")
    _require(path / TRAINING_STATE_FILE)  # what makes it one of ours (a released checkpoint cannot be resumed)
    verify_manifest(path)
    try:
        finetune_config = json.loads(_require(path / FINETUNE_CONFIG_FILE).read_text())
    except json.JSONDecodeError as e:
        raise CorruptCheckpointError(f"corrupt checkpoint file {path / FINETUNE_CONFIG_FILE}: {e}") from e
    proprio_files = sorted(path.glob("proprio_projector--*checkpoint.pt"))
    if finetune_config.get("use_proprio", True) and len(proprio_files) != 1:
        _single(path, "proprio_projector--*checkpoint.pt")  # the run trained one: never restart it from init
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
