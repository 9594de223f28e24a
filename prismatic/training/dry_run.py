"""`finetune.py --dry_run True`: check everything a run needs, cheaply, and describe what it would do.

    plan_run(cfg) -> Plan      (the CLI prints `plan.lines()` and exits 0; nothing is trained or written)

Checked, in the order a real run meets them (the first problem raises the same error the run would):
processes (world size, device), the run directory (an earlier run of this id is refused unless --resume /
--overwrite), the resume checkpoint and its flags, --vlm_path / --config_file_path (local or hub ids: resolved,
rank 0 first; offline and not cached fails naming the repo), the tokenizer, the base VLM's checkpoint file and
where its vision towers come from, the model built on the meta device with LoRA (parameter counts, no memory),
the dataset(s) (found, features checked, statistics read or computed once into their cache), then the schedule.
Only the dataset statistics cache may be written (what the first real run would write anyway).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import torch

from prismatic.plan import Plan
from prismatic.training import checkpoint as ckpt
from prismatic.training.config import FinetuneConfig
from prismatic.training.distributed import DistInfo, cleanup_distributed, init_distributed

log = logging.getLogger(__name__)


def plan_run(cfg: FinetuneConfig) -> Plan:
    info = init_distributed(cfg.device)  # world size + the process group the hub resolution's barrier needs
    try:
        return _plan(cfg, info)
    finally:
        cleanup_distributed()


def _plan(cfg: FinetuneConfig, info: DistInfo) -> Plan:
    from prismatic.training.train import (
        _check_resume_config,
        _check_resume_overrides,
        build_tokenizer,
        global_batch_size,
        make_run_id,
        model_config_for,
        resolve_sources,
    )

    plan = Plan(what="trained")
    run_id = make_run_id(cfg)
    run_root = Path(cfg.run_root_dir)
    run_dir = run_root / run_id
    vla_config = model_config_for(cfg)
    if cfg.use_craft or cfg.monitor_retention:
        cfg.craft_config().validate_against_model(vla_config.llm.num_hidden_layers)
    precision = cfg.precision if cfg.precision != "auto" else ("bf16" if info.device.type == "cuda" else "fp32")
    plan.add("processes", [("world size", info.world_size), ("device", info.device), ("precision", precision)])

    # ---- run directory / resume ----
    _check_resume_overrides(cfg)
    start_step, rows = 0, []
    if cfg.resume:
        path = ckpt.find_checkpoint(run_root, run_id, cfg.resume_step)
        start_step = next(step for step, p in ckpt.list_checkpoints(run_root, run_id).items() if p == path)
        config_file = path / ckpt.FINETUNE_CONFIG_FILE
        if not config_file.is_file():
            raise FileNotFoundError(f"cannot resume from {path}: {config_file.name} is missing")
        _check_resume_config(cfg, json.loads(config_file.read_text()), path)
        if start_step >= cfg.max_steps:
            raise ValueError(f"checkpoint {path} is at step {start_step} >= --max_steps {cfg.max_steps}; nothing to do")
        rows.append(("resume from", f"{path} (step {start_step})"))
    else:
        earlier = ckpt.check_fresh_run(run_root, run_id, cfg.overwrite)
        if earlier:
            rows.append(("earlier run", f"moved aside when the run starts: {', '.join(str(p) for p in earlier)}"))
    plan.add("run", [("run id", run_id), ("run dir", run_dir),
                     ("checkpoints", f"{run_root}/{run_id}--<step>_chkpt" + (" (latest only)"
                                                                            if cfg.save_latest_checkpoint_only else "")),
                     ("wandb", f"{cfg.wandb_mode} (project {cfg.wandb_project})"), *rows])

    # ---- model sources (hub ids resolved here) ----
    sources = resolve_sources(cfg, info)
    tokenizer = build_tokenizer(cfg, vla_config, sources)
    rows = [("preset", cfg.model_preset),
            ("head", "Pro" if vla_config.action_head.use_pro_version else "original"),
            ("tokenizer", f"{sources.tokenizer_dir or 'generated (random-init preset)'} ({len(tokenizer)} tokens)")]
    if sources.vlm_dir is not None:  # real presets always; tiny / mid with --vlm_path (a pretrained tiny VLM)
        rows += _base_vlm_rows(cfg, sources.vlm_dir, vla_config)
    else:
        rows.append(("base weights", "random init (seeded)"))

    # ---- model on the meta device: parameter counts without memory ----
    total, trainable = count_parameters(cfg, vla_config)
    rows += [("parameters", f"{total:,} total, {trainable:,} trainable"
                            + (f" (LoRA r={cfg.lora_rank}, alpha={cfg.lora_alpha or 2 * cfg.lora_rank})"
                               if cfg.use_lora else " (full fine-tuning)"))]
    plan.add("model", rows)
    plan.numbers.update(total_parameters=total, trainable_parameters=trainable, world_size=info.world_size,
                        start_step=start_step, run_dir=str(run_dir))

    # ---- data ----
    rows, samples_per_epoch = _data_rows(cfg, vla_config, info)
    plan.add("data", rows)

    # ---- schedule ----
    global_batch = global_batch_size(cfg, info.world_size)
    steps = cfg.max_steps - start_step
    saves = [s for s in range(start_step + 1, cfg.max_steps + 1) if s % cfg.save_freq == 0 or s == cfg.max_steps]
    rows = [("optimizer steps", f"{start_step} -> {cfg.max_steps} ({steps} to run)"),
            ("batch", f"{cfg.batch_size} per device x {cfg.grad_accumulation_steps} accumulation x "
                      f"{info.world_size} processes = {global_batch} samples per step"),
            ("samples", f"{steps * global_batch:,}"
                        + (f" (~{steps * global_batch / samples_per_epoch:.2f} epochs of {samples_per_epoch:,})"
                           if samples_per_epoch else "")),
            ("learning rate", f"{cfg.learning_rate} (warmup {cfg.lr_warmup_steps} steps, x0.1 from step "
                              f"{cfg.num_steps_before_decay})"),
            ("checkpoint steps", _abbrev_steps(saves)),
            ("CRaFT", _craft_summary(cfg))]
    plan.add("schedule", rows)
    plan.numbers.update(global_batch=global_batch, samples_per_epoch=samples_per_epoch, num_checkpoints=len(saves))
    return plan


def count_parameters(cfg: FinetuneConfig, vla_config) -> tuple[int, int]:
    """(total, trainable) parameters of the run's model (LoRA included), built on the meta device."""
    from prismatic.models.vla import VLAAdapter
    from prismatic.training.lora import apply_lora, trainable_named_parameters

    with torch.device("meta"):
        model = VLAAdapter(vla_config, attn_implementation="sdpa")
        if cfg.use_lora:
            model = apply_lora(model, rank=cfg.lora_rank, alpha=cfg.lora_alpha or 2 * cfg.lora_rank,
                               dropout=cfg.lora_dropout)
        else:
            model.requires_grad_(True)
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for _, p in trainable_named_parameters(model))
    return total, trainable


def _base_vlm_rows(cfg: FinetuneConfig, vlm_dir: Path, vla_config) -> list[tuple[str, object]]:
    """The base VLM checkpoint file, and where each vision tower's weights will come from."""
    from prismatic.models.loading import VISION_WEIGHTS_SUBDIR, _tagged_timm_id, find_prismatic_checkpoint

    ckpt_path = vlm_dir if vlm_dir.is_file() else find_prismatic_checkpoint(vlm_dir)
    raw = torch.load(ckpt_path, map_location="cpu", weights_only=True, mmap=True)  # mmap: metadata only
    native = raw.get("model") if isinstance(raw, dict) else None
    if not isinstance(native, dict) or not {"projector", "llm_backbone"} <= set(native):
        raise ValueError(f'--vlm_path {cfg.vlm_path}: {ckpt_path} is not a Prismatic checkpoint (expected '
                         f'torch.load(...)["model"] with "projector" and "llm_backbone")')
    rows = [("base VLM", f"{cfg.vlm_path} -> {ckpt_path}")]
    if "vision_backbone" in native:
        rows.append(("vision towers", "from the base VLM checkpoint"))
        return rows
    vision_dir = (vlm_dir.parent.parent if vlm_dir.is_file() else vlm_dir) / VISION_WEIGHTS_SUBDIR
    for name, model_id in (("DINOv2 tower", vla_config.vision.dino_model_id),
                           ("SigLIP tower", vla_config.vision.siglip_model_id)):
        rows.append((name, _tower_source(model_id, vision_dir, _tagged_timm_id(model_id))))
    return rows


def _tower_source(model_id: str, vision_dir: Path, tagged: str) -> str:
    from huggingface_hub import constants, try_to_load_from_cache

    from prismatic.models.loading import timm_pretrained_cfg

    local = vision_dir / f"{model_id}.safetensors"
    if local.is_file():
        return str(local)
    repo = getattr(timm_pretrained_cfg(tagged), "hf_hub_id", None)
    if not repo:
        raise FileNotFoundError(f"no weights for vision tower {model_id}: not at {local} and timm has no pretrained "
                                f"hub weights for {tagged}")
    cached = any(isinstance(try_to_load_from_cache(repo, name), str)
                 for name in ("model.safetensors", "open_clip_model.safetensors", "pytorch_model.bin"))
    if cached:
        return f"timm pretrained {tagged} (hub repo {repo}, cached in {constants.HF_HUB_CACHE})"
    if constants.HF_HUB_OFFLINE:
        raise FileNotFoundError(f"vision tower {model_id}: timm's pretrained weights (hub repo {repo}) are not in "
                                f"the local cache {constants.HF_HUB_CACHE} and HF_HUB_OFFLINE=1; fetch them once with "
                                f"network access, or put {local.name} in {vision_dir}")
    return f"timm pretrained {tagged} (hub repo {repo}, downloaded on first use)"


def _data_rows(cfg: FinetuneConfig, vla_config, info: DistInfo) -> tuple[list[tuple[str, object]], int | None]:
    from prismatic.vla.datasets import RLDSDataset
    from prismatic.vla.datasets.registry import resolve_dataset_mixture
    from prismatic.vla.datasets.source import resolve_builder_dir

    members = resolve_dataset_mixture(cfg.dataset_name)  # unknown names: the registry's error
    rows: list[tuple[str, object]] = [("dataset", f"{cfg.dataset_name} in {cfg.data_root_dir}")]
    if cfg.create_synthetic_dataset:
        missing = []
        for spec, _ in members:
            try:
                resolve_builder_dir(cfg.data_root_dir, spec.name)
            except FileNotFoundError:
                missing.append(spec.name)
        if missing:
            rows.append(("synthetic", f"{', '.join(missing)} generated in {cfg.data_root_dir} when the run starts"))
            return rows, None
    dataset = RLDSDataset(
        data_root_dir=cfg.data_root_dir, dataset_name=cfg.dataset_name, batch_transform=None, model_config=vla_config,
        train=True, image_aug=cfg.image_aug, shuffle_buffer_size=cfg.shuffle_buffer_size, seed=cfg.seed,
        rank=info.rank, world_size=info.world_size, n_shot_per_task=cfg.n_shot_per_task,
    )
    for src in dataset.sources:
        stats = src.statistics
        rows.append((src.spec.name, f"{src.builder_dir}: {len(src.selection.episodes)} episodes selected "
                                    f"({src.selection.split} split) of {stats.get('num_trajectories', '?')}, "
                                    f"{stats.get('num_transitions', '?')} transitions, weight {src.weight:g}"))
        for part in ("action", "proprio"):
            q01, q99 = stats[part]["q01"], stats[part]["q99"]
            if not all(map(math.isfinite, q01 + q99)):
                raise ValueError(f"dataset {src.spec.name!r}: non-finite {part} statistics in its cache")
        rows.append(("  statistics", f"action {len(stats['action']['q01'])}-d, proprio "
                                      f"{len(stats['proprio']['q01'])}-d (q01/q99 bounds)"))
    rows.append(("samples per epoch", f"{dataset.num_samples_per_epoch:,} (chunk starts of the selected episodes)"))
    if cfg.n_shot_per_task:
        rows.append(("n-shot", f"{cfg.n_shot_per_task} episodes per task"))
    return rows, dataset.num_samples_per_epoch


def _abbrev_steps(steps: list[int], limit: int = 6) -> str:
    if len(steps) <= limit:
        return ", ".join(map(str, steps)) or "none"
    return ", ".join(map(str, steps[: limit - 1])) + f", ... {steps[-1]} ({len(steps)} checkpoints)"


def _craft_summary(cfg: FinetuneConfig) -> str:
    if not cfg.use_craft:
        return "off" + (" (retention monitored)" if cfg.monitor_retention else "")
    return (f"on: budget {cfg.craft_retention_budget}, dual lr {cfg.craft_dual_lr}, projection "
            f"{cfg.craft_enable_projection}, dual {cfg.craft_enable_dual}, anchor {cfg.craft_anchor_type}")
