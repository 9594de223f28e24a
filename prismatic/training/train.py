"""`train(cfg)`: the fine-tuning run, top to bottom.

    set up processes and seeds -> build the model (+ LoRA) -> data stream -> optimizer + schedule
    -> [CRaFT: θ0 anchor + dual state] -> (resume) -> loop { train_step, log, save } -> final checkpoint

The step itself (micro-batches, gradient synchronisation, the CRaFT gradient surgery) is `train_step`
in step.py.
"""

from __future__ import annotations

import json
import logging
import random
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from prismatic.models.config import VLAConfig, get_preset
from prismatic.training import checkpoint as ckpt
from prismatic.training.config import FinetuneConfig
from prismatic.training.distributed import (
    DistInfo,
    barrier,
    broadcast_parameters_,
    cleanup_distributed,
    gather_objects,
    init_distributed,
)
from prismatic.training.lora import (
    apply_lora,
    base_module,
    lora_state_dict,
    merged_vlm_state_dict,
    trainable_named_parameters,
)
from prismatic.training.metrics import MetricsLogger, progress_line
from prismatic.training.schedule import make_scheduler
from prismatic.training.step import StepContext, to_device, train_step

log = logging.getLogger(__name__)

# Config fields that must match between a run and the checkpoint it resumes from.
# The optimizer hyper-parameters are here because the optimizer/scheduler state restored from the checkpoint
# would silently override new values; shuffle_buffer_size because the data position is replayed exactly.
RESUME_MUST_MATCH = (
    "model_preset", "dataset_name", "batch_size", "grad_accumulation_steps", "use_lora", "lora_rank", "lora_alpha",
    "use_pro_version", "use_proprio", "use_craft", "craft_anchor_type", "craft_anchor_layer_idx", "n_shot_per_task",
    "seed", "image_aug", "monitor_retention", "shuffle_buffer_size", "learning_rate", "weight_decay",
    "lr_warmup_steps", "num_steps_before_decay",
)


@dataclass
class TrainResult:
    run_id: str
    final_step: int
    final_metrics: dict[str, float]
    last_checkpoint: Path | None
    run_dir: Path


def make_run_id(cfg: FinetuneConfig) -> str:
    """Upstream-style run id: {model}+{dataset}+b{batch*accum}+lr-{lr}[+lora-r{r}+dropout-{d}]... ."""
    if cfg.run_id_override:
        return cfg.run_id_override
    run_id = f"{cfg.model_preset}+{cfg.dataset_name}+b{cfg.batch_size * cfg.grad_accumulation_steps}+lr-{cfg.learning_rate}"
    run_id += f"+lora-r{cfg.lora_rank}+dropout-{cfg.lora_dropout}" if cfg.use_lora else "+full-ft"
    if cfg.n_shot_per_task:
        run_id += f"+{cfg.n_shot_per_task}shot"
    if cfg.image_aug:
        run_id += "--image_aug"
    if cfg.use_craft:
        run_id += "--craft"
    run_id += f"--seed{cfg.seed}"
    if cfg.run_id_note:
        run_id += f"--{cfg.run_id_note}"
    return run_id


def model_config_for(cfg: FinetuneConfig) -> VLAConfig:
    vla_config = get_preset(cfg.model_preset, use_pro_version=cfg.use_pro_version)
    vla_config.num_images_in_input = cfg.num_images_in_input
    vla_config.use_proprio = cfg.use_proprio
    return vla_config


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def rng_state() -> dict:
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"key": np_state[1].tolist(), "pos": int(np_state[2]), "has_gauss": int(np_state[3]),
                  "cached_gaussian": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state(("MT19937", np.array(n["key"], dtype=np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def build_tokenizer(cfg: FinetuneConfig, vla_config: VLAConfig):
    from prismatic.models.processing import build_tiny_tokenizer, load_tokenizer

    if cfg.model_preset in ("tiny", "mid"):
        # Random-initialised presets come with a generated tokenizer (deterministic; nothing downloaded).
        with tempfile.TemporaryDirectory() as d:
            return build_tiny_tokenizer(d, vocab_size=vla_config.llm.vocab_size)
    return load_tokenizer(cfg.config_file_path or cfg.vlm_path)


def build_model(cfg: FinetuneConfig, vla_config: VLAConfig, device: torch.device) -> torch.nn.Module:
    """The VLAAdapter with base weights (random for tiny/mid, the Prismatic VLM otherwise) and LoRA."""
    from prismatic.models.loading import load_base_vlm
    from prismatic.models.vla import VLAAdapter

    torch.manual_seed(cfg.seed)  # identical initial weights on every rank and across resumes
    if cfg.model_preset in ("vla-adapter", "vla-adapter-pro"):
        model = load_base_vlm(cfg.vlm_path, vla_config)  # queries, head, proprio projector: seeded random init
    else:
        model = VLAAdapter(vla_config)
    model.to(device)
    if cfg.use_lora:
        model = apply_lora(model, rank=cfg.lora_rank, alpha=cfg.lora_alpha or 2 * cfg.lora_rank, dropout=cfg.lora_dropout)
    else:
        model.requires_grad_(True)
    return model


def build_data(cfg: FinetuneConfig, vla_config: VLAConfig, tokenizer, info: DistInfo, skip_samples: int):
    from prismatic.models.processing import VLAProcessor
    from prismatic.vla.datasets import PaddedCollator, RLDSBatchTransform, RLDSDataset

    if cfg.create_synthetic_dataset:
        from prismatic.vla.datasets.synthetic import ensure_synthetic_dataset

        if info.is_main:
            ensure_synthetic_dataset(cfg.data_root_dir, name=cfg.dataset_name)
        barrier(info)
    processor = VLAProcessor(tokenizer, vla_config.vision.image_size, vla_config.num_images_in_input,
                             vla_config.num_action_queries)
    dataset = RLDSDataset(
        data_root_dir=cfg.data_root_dir,
        dataset_name=cfg.dataset_name,
        batch_transform=RLDSBatchTransform(processor),
        model_config=vla_config,
        train=True,
        image_aug=cfg.image_aug,
        shuffle_buffer_size=cfg.shuffle_buffer_size,
        seed=cfg.seed,
        rank=info.rank,
        world_size=info.world_size,
        n_shot_per_task=cfg.n_shot_per_task,
        skip_samples=skip_samples,
    )
    # A private generator: creating the loader's iterator draws a seed from it, and drawing from the global
    # RNG here would shift the head-noise stream of a resumed run against an uninterrupted one.
    loader = torch.utils.data.DataLoader(dataset, batch_size=cfg.batch_size, collate_fn=PaddedCollator(processor),
                                         num_workers=0, generator=torch.Generator().manual_seed(cfg.seed))
    return dataset, loader


def _check_resume_config(cfg: FinetuneConfig, saved: dict, path: Path) -> None:
    mismatched = [f"{k}: checkpoint {saved.get(k)!r} vs now {getattr(cfg, k)!r}"
                  for k in RESUME_MUST_MATCH if saved.get(k) != getattr(cfg, k)]
    if mismatched:
        raise ValueError(f"cannot resume from {path}: flags differ from the checkpoint's: " + "; ".join(mismatched))


def _restore_weights(model: torch.nn.Module, loaded: ckpt.LoadedCheckpoint, cfg: FinetuneConfig) -> None:
    vla = base_module(model)
    with torch.no_grad():
        if cfg.use_lora:
            from peft import set_peft_model_state_dict

            result = set_peft_model_state_dict(model, loaded.lora_adapter)
            unexpected = getattr(result, "unexpected_keys", [])
            if unexpected:
                raise RuntimeError(f"LoRA adapter in {loaded.path} has unexpected keys: {unexpected[:10]}")
        else:
            missing, unexpected = _load_partial(vla, loaded.merged_vlm)
            if missing or unexpected:
                raise RuntimeError(f"merged VLM in {loaded.path}: missing {missing[:10]}, unexpected {unexpected[:10]}")
        vla.action_queries.weight.copy_(loaded.action_queries)
        vla.action_head.load_state_dict(loaded.action_head, strict=True)
        if loaded.proprio_projector is not None:
            vla.proprio_projector.load_state_dict(loaded.proprio_projector, strict=True)


def _load_partial(vla: torch.nn.Module, state: dict[str, torch.Tensor]) -> tuple[list[str], list[str]]:
    own = {k: v for k, v in vla.state_dict().items()
           if not k.startswith(("action_head.", "proprio_projector.", "language_model.lm_head"))}
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    for k, v in state.items():
        if k in own:
            own[k].copy_(v)
    return missing, unexpected


def train(cfg: FinetuneConfig) -> TrainResult:
    info = init_distributed(cfg.device)
    try:
        return _train(cfg, info)
    finally:
        cleanup_distributed()


def _train(cfg: FinetuneConfig, info: DistInfo) -> TrainResult:
    run_id = make_run_id(cfg)
    run_root = Path(cfg.run_root_dir)
    run_dir = run_root / run_id
    vla_config = model_config_for(cfg)
    if cfg.use_craft or cfg.monitor_retention:
        cfg.craft_config().validate_against_model(vla_config.llm.num_hidden_layers)
    autocast_dtype = None
    precision = cfg.precision if cfg.precision != "auto" else ("bf16" if info.device.type == "cuda" else "fp32")
    if precision == "bf16":
        autocast_dtype = torch.bfloat16
    log.info("run %s on %s (world size %d, %s)", run_id, info.device, info.world_size, precision)

    # ---- resume: locate and read the checkpoint first (errors before any heavy work) ----
    loaded = None
    start_step = 0
    if cfg.resume:
        path = ckpt.find_checkpoint(run_root, run_id, cfg.resume_step)
        loaded = ckpt.load_checkpoint(path, need_lora=cfg.use_lora, need_merged=not cfg.use_lora)
        _check_resume_config(cfg, loaded.finetune_config, path)
        saved_world = len(loaded.training_state["rng"])
        if saved_world != info.world_size:
            raise ValueError(
                f"cannot resume from {path}: it was written by {saved_world} process(es), this run has "
                f"{info.world_size}; data shards and RNG streams are per rank, so resume with "
                f"--nproc_per_node {saved_world} (or start a new run)"
            )
        start_step = int(loaded.training_state["step"])
        if start_step >= cfg.max_steps:
            raise ValueError(f"checkpoint {path} is at step {start_step} >= --max_steps {cfg.max_steps}; nothing to do")
        log.info("resuming from %s (step %d)", path, start_step)

    # ---- model ----
    tokenizer = build_tokenizer(cfg, vla_config)
    model = build_model(cfg, vla_config, info.device)
    named = trainable_named_parameters(model)
    params = [p for _, p in named]
    broadcast_parameters_(params, info)
    log.info("trainable parameters: %.2fM in %d tensors", sum(p.numel() for p in params) / 1e6, len(params))

    # ---- CRaFT: θ0 is the state at the START of fine-tuning, captured before any resume restore ----
    craft = None
    if cfg.use_craft or cfg.monitor_retention:
        from prismatic.training.craft.runtime import CraftRuntime

        craft = CraftRuntime.from_initial_model(model, cfg.craft_config(), vla_config, params,
                                                monitor_only=not cfg.use_craft)
    if loaded is not None:
        _restore_weights(model, loaded, cfg)

    # ---- optimizer + schedule ----
    # Fused AdamW on CUDA: one kernel for all parameters and no per-parameter host reads of the step counts.
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay,
                                  fused=info.device.type == "cuda")
    scheduler = make_scheduler(optimizer, cfg.lr_warmup_steps, cfg.num_steps_before_decay)
    samples_per_step = cfg.batch_size * cfg.grad_accumulation_steps
    if loaded is not None:
        state = loaded.training_state
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if craft is not None:
            craft.load_state_dict(state["craft"])
        set_rng_state(state["rng"][info.rank])
    else:
        seed_everything(cfg.seed + info.rank)  # per-rank streams for head noise / dropout

    # ---- data ----
    dataset, loader = build_data(cfg, vla_config, tokenizer, info, skip_samples=start_step * samples_per_step)
    stats = dataset.dataset_statistics
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "dataset_statistics.json").write_text(json.dumps(stats, indent=2))
        (run_dir / "selected_episodes.json").write_text(json.dumps(dataset.selected_episodes, indent=2))
        if cfg.n_shot_per_task:
            log.info("n-shot episodes (%d per task): %s", cfg.n_shot_per_task, dataset.selected_episodes)

    logger = None
    if info.is_main:
        resume_wandb = loaded.training_state.get("wandb_run_id") if loaded is not None else None
        logger = MetricsLogger(run_dir, cfg.wandb_mode, cfg.wandb_project, cfg.wandb_entity, f"ft+{run_id}",
                               cfg.to_dict(), resume_wandb, start_step)

    ctx = StepContext(model=model, params=params, optimizer=optimizer, scheduler=scheduler, dist=info,
                      grad_accumulation_steps=cfg.grad_accumulation_steps, max_grad_norm=cfg.max_grad_norm,
                      autocast_dtype=autocast_dtype, craft=craft)
    model.train()
    progress = _progress_bar(info, start_step, cfg.max_steps)
    data_iter = iter(loader)
    metrics: dict[str, float] = {}
    last_ckpt = None
    for step in range(start_step, cfg.max_steps):
        micro = [to_device(next(data_iter), info.device) for _ in range(cfg.grad_accumulation_steps)]
        metrics = train_step(ctx, micro)
        done = step + 1
        if info.is_main:
            if done % cfg.wandb_log_freq == 0 or done == cfg.max_steps or done == 1:
                logger.log(done, metrics)
                log.info("step %d: %s", done, progress_line(metrics))
            if progress is not None:
                progress.set_postfix_str(progress_line(metrics), refresh=False)
                progress.update(1)
        if done % cfg.save_freq == 0 or done == cfg.max_steps:
            last_ckpt = _save(cfg, info, run_id, done, model, vla_config, tokenizer, stats, optimizer, scheduler,
                              craft, logger, samples_per_step)
    if progress is not None:
        progress.close()
    if logger is not None:
        logger.close()
    return TrainResult(run_id=run_id, final_step=cfg.max_steps, final_metrics=metrics, last_checkpoint=last_ckpt,
                       run_dir=run_dir)


def _progress_bar(info: DistInfo, start: int, total: int):
    if not info.is_main:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=start, desc="train", dynamic_ncols=True, leave=False)


def _save(cfg, info, run_id, step, model, vla_config, tokenizer, stats, optimizer, scheduler, craft, logger,
          samples_per_step) -> Path | None:
    rngs = gather_objects(rng_state(), info)  # every rank's RNG, so each rank resumes its own stream
    path = None
    if info.is_main:
        vla = base_module(model)
        merged = merged_vlm_state_dict(model) if (cfg.save_merged_model or not cfg.use_lora) else None
        payload = ckpt.CheckpointPayload(
            step=step,
            finetune_config=cfg.to_dict(),
            vla_config=vla_config.to_dict(),
            dataset_statistics=stats,
            tokenizer=tokenizer,
            action_head=vla.action_head.state_dict(),
            proprio_projector=vla.proprio_projector.state_dict() if vla.proprio_projector is not None else None,
            action_queries=vla.action_queries.weight,
            lora_adapter=lora_state_dict(model) if cfg.use_lora else None,
            lora_config=model.peft_config["default"] if cfg.use_lora else None,
            merged_vlm=merged,
            training_state={
                "step": step,
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "rng": rngs,
                "data": {"samples_consumed_per_rank": step * samples_per_step},
                "craft": craft.state_dict() if craft is not None else None,
                "wandb_run_id": logger.wandb_run_id if logger is not None else None,
            },
        )
        path = ckpt.save_checkpoint(cfg.run_root_dir, run_id, payload, keep_only_latest=cfg.save_latest_checkpoint_only)
    barrier(info)
    return path
