"""`train(cfg)`: the fine-tuning run, top to bottom.

    set up processes and seeds -> build the model (+ LoRA) -> data stream -> optimizer + schedule
    -> [CRaFT: θ0 anchor + dual state] -> (resume) -> loop { train_step, log, save } -> final checkpoint

The step itself (micro-batches, gradient synchronisation, the CRaFT gradient surgery) is `train_step`
in step.py.
"""

from __future__ import annotations

import json
import logging
import math
import random
import sys
import tempfile
import time
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
from prismatic.training.interrupts import StopRequest, TrainingInterrupted, resume_command
from prismatic.training.lora import (
    apply_lora,
    base_module,
    lora_state_dict,
    merged_vlm_state_dict,
    trainable_named_parameters,
)
from prismatic.training.metrics import MetricsLogger, check_metrics_file, probe_line, progress_line, val_line
from prismatic.training.randomness import head_noise
from prismatic.training.schedule import make_scheduler
from prismatic.training.step import StepContext, to_device, train_step
from prismatic.training.validation import Validator, make_val_loader_factory, validation_due

log = logging.getLogger(__name__)

# Config fields that must match between a run and the checkpoint it resumes from.
# The optimizer hyper-parameters are here because the optimizer/scheduler state restored from the checkpoint
# would silently override new values; shuffle_buffer_size because the data position is replayed exactly.
# batch_size and grad_accumulation_steps may change as long as the GLOBAL batch (their product times the
# world size) does not: `_check_resume_global_batch` (elastic resume on another number of processes).
RESUME_MUST_MATCH = (
    "model_preset", "dataset_name", "use_lora", "lora_rank", "lora_alpha",
    "use_pro_version", "use_proprio", "use_craft", "craft_anchor_type", "craft_anchor_layer_idx", "n_shot_per_task",
    "seed", "image_aug", "monitor_retention", "shuffle_buffer_size", "learning_rate", "weight_decay",
    "lr_warmup_steps", "num_steps_before_decay", "val_fraction", "lora_dropout", "max_grad_norm",
)
# ... and, when the checkpoint's run used CRaFT (or monitored L_ret), every CRaFT flag: they define L_ret, the
# update rule and λ's dynamics. The restored λ would otherwise silently replace a new --craft_retention_weight
# (even with --craft_enable_dual False), and a new pooling / normalisation would change what L_ret measures
# mid-run. θ0 itself (the base reloaded from --vlm_path) is checked by its fingerprint in the CRaFT state.
RESUME_MUST_MATCH_CRAFT = (
    "craft_retention_weight", "craft_retention_budget", "craft_dual_lr", "craft_lambda_max", "craft_projection_eps",
    "craft_enable_projection", "craft_enable_dual", "craft_pooling", "craft_projection_granularity",
    "craft_normalize_parts", "craft_anchor_cache", "craft_log_freq",
)
# What a checkpoint written before a must-match flag existed was trained with.
RESUME_SAVED_DEFAULTS = {"val_fraction": 0.0}
# Flags `--resume_override_flags` may change on resume (the documented recovery from a divergence: resume the
# last finite checkpoint with a lower LR). Their new values are applied AFTER the optimizer / scheduler state
# is restored (`_apply_resume_overrides`), logged, and recorded in run_dir/resume_overrides.jsonl.
RESUME_OVERRIDABLE = {
    "learning_rate", "weight_decay", "lr_warmup_steps", "num_steps_before_decay", "max_grad_norm", "max_steps",
    # CRaFT flags that are safe to change at a resume: the dual ascent's target ε, step size η and cap (the
    # restored λ continues under them; a cap below the restored λ is refused when λ is restored), the metric
    # window, the anchor cache (a cost, never a result: not checkpointed). --craft_retention_weight resets λ to
    # the new value at the resume step (right after the CRaFT state is restored). Pooling, normalisation, anchor type /
    # layer, projection flags and lora_dropout change what L_ret or the update IS: a new run, not a resume.
    "craft_retention_budget", "craft_dual_lr", "craft_lambda_max", "craft_log_freq", "craft_anchor_cache",
    "craft_retention_weight",
}
RESUME_OVERRIDES_FILE = "resume_overrides.jsonl"


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


def global_batch_size(cfg: FinetuneConfig, world_size: int) -> int:
    """Samples per optimizer step over all processes: what the result depends on (not how it is split)."""
    return cfg.batch_size * cfg.grad_accumulation_steps * world_size


def seed_everything(seed: int) -> None:
    """The global RNGs, seeded identically on every rank. Training draws nothing from them: all its
    randomness is a function of (seed, step, global sample index) (prismatic.training.randomness)."""
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


@dataclass(frozen=True)
class ModelSources:
    """Local directories behind --vlm_path / --config_file_path (hub ids resolved); None for tiny / mid."""

    vlm_dir: Path | None
    tokenizer_dir: Path | None


def resolve_sources(cfg: FinetuneConfig, info: DistInfo | None = None) -> ModelSources:
    """Resolve --vlm_path / --config_file_path (a directory, or a hub id fetched into the HF cache: rank 0
    first, then a barrier). Offline and not cached raises `hub.HubModelNotFound` naming the flag and repo."""
    from prismatic.models.hub import resolve_model_dir

    if cfg.model_preset not in ("vla-adapter", "vla-adapter-pro") and not cfg.vlm_path:
        return ModelSources(None, None)  # tiny / mid without a base VLM: random init + generated tokenizer
    vlm_dir = resolve_model_dir(cfg.vlm_path, revision=cfg.hub_revision, flag="--vlm_path", kind="base_vlm",
                                dist_info=info)
    tokenizer_dir = vlm_dir
    if cfg.config_file_path:
        tokenizer_dir = resolve_model_dir(cfg.config_file_path, revision=cfg.hub_revision, flag="--config_file_path",
                                          kind="tokenizer", dist_info=info)
    return ModelSources(vlm_dir, tokenizer_dir)


def build_tokenizer(cfg: FinetuneConfig, vla_config: VLAConfig, sources: ModelSources):
    from prismatic.models.processing import build_tiny_tokenizer, load_tokenizer

    if sources.tokenizer_dir is None:
        # Random-initialised presets come with a generated tokenizer (deterministic; nothing downloaded).
        with tempfile.TemporaryDirectory() as d:
            return build_tiny_tokenizer(d, vocab_size=vla_config.llm.vocab_size)
    return load_tokenizer(sources.tokenizer_dir)


def build_model(cfg: FinetuneConfig, vla_config: VLAConfig, device: torch.device,
                sources: ModelSources) -> torch.nn.Module:
    """The VLAAdapter with base weights (the Prismatic VLM of --vlm_path; random for tiny / mid without one,
    e.g. with one: the pretrained tiny VLM of vla-scripts/pretrain_tiny_vlm.py) and LoRA."""
    from prismatic.models.loading import load_base_vlm
    from prismatic.models.vla import VLAAdapter

    torch.manual_seed(cfg.seed)  # identical initial weights on every rank and across resumes
    if sources.vlm_dir is not None:
        model = load_base_vlm(sources.vlm_dir, vla_config)  # queries, head, proprio projector: seeded random init
    else:
        model = VLAAdapter(vla_config)
    model.to(device)
    if cfg.use_lora:
        model = apply_lora(model, rank=cfg.lora_rank, alpha=cfg.lora_alpha or 2 * cfg.lora_rank, dropout=cfg.lora_dropout,
                           dropout_seed=cfg.seed)
    else:
        model.requires_grad_(True)
    return model


def build_data(cfg: FinetuneConfig, vla_config: VLAConfig, tokenizer, info: DistInfo, skip_samples: int):
    """The train stream of this rank: its slice of every global batch; `skip_samples` counts global samples."""
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
        global_batch_size=global_batch_size(cfg, info.world_size),
        n_shot_per_task=cfg.n_shot_per_task,
        val_fraction=cfg.val_fraction,  # held-out episodes (--use_val_set) are never trained on
        skip_samples=skip_samples,
    )
    # A private generator: creating the loader's iterator draws a seed from it, and drawing from the global
    # RNG here would shift the head-noise stream of a resumed run against an uninterrupted one.
    loader = torch.utils.data.DataLoader(dataset, batch_size=cfg.batch_size, collate_fn=PaddedCollator(processor),
                                         num_workers=0, generator=torch.Generator().manual_seed(cfg.seed))
    return dataset, loader


def _claim_run(cfg: FinetuneConfig, info: DistInfo, run_root: Path, run_id: str) -> None:
    """Before anything is written: a fresh run never writes into an earlier run of its id (refused, or moved
    aside with --overwrite True), and what a killed save left behind is removed."""
    earlier = [] if cfg.resume else ckpt.check_fresh_run(run_root, run_id, cfg.overwrite)  # every rank refuses
    barrier(info)  # every rank has looked before rank 0 moves anything
    if info.is_main:
        ckpt.remove_stale_temp_dirs(run_root, run_id)
        ckpt.move_run_aside(run_root, run_id, earlier)
        if cfg.resume:
            check_metrics_file(run_root / run_id)  # a torn / bad metrics.jsonl: repaired or named now, not later
    barrier(info)


def _check_resume_overrides(cfg: FinetuneConfig) -> None:
    bad = [n for n in cfg.resume_overrides() if n not in RESUME_OVERRIDABLE]
    if bad:
        raise ValueError(f"--resume_override_flags: {bad} cannot be overridden on resume; allowed: "
                         f"{sorted(RESUME_OVERRIDABLE)}")


def _check_resume_global_batch(cfg: FinetuneConfig, info: DistInfo, loaded: ckpt.LoadedCheckpoint, path: Path) -> None:
    """Elastic resume: any world size and any batch_size x grad_accumulation_steps split continue the run
    exactly, as long as the global batch is the one the checkpoint was trained with."""
    state, saved = loaded.training_state, loaded.finetune_config
    data = state.get("data") or {}
    saved_world = int(data.get("world_size", len(state["rng"])))
    if "global_batch_size" not in data and saved_world > 1:
        # Written before the data stream became global: each rank read its own episode shard, so its data
        # position cannot be continued (on any world size).
        raise ValueError(f"cannot resume from {path}: it was written by {saved_world} processes with per-rank "
                         f"episode shards (an older version); its data position cannot be continued exactly")
    saved_global = int(data.get("global_batch_size",
                                saved["batch_size"] * saved["grad_accumulation_steps"] * saved_world))
    now = global_batch_size(cfg, info.world_size)
    if saved_global != now:
        raise ValueError(
            f"cannot resume from {path}: the global batch differs: checkpoint {saved_global} (batch_size "
            f"{saved['batch_size']} x grad_accumulation_steps {saved['grad_accumulation_steps']} x {saved_world} "
            f"process(es)) vs now {now} (batch_size {cfg.batch_size} x grad_accumulation_steps "
            f"{cfg.grad_accumulation_steps} x {info.world_size}); any split of the same global batch resumes exactly")
    if saved_world != info.world_size or saved["batch_size"] != cfg.batch_size:
        log.info("elastic resume: %d process(es) x batch_size %d x %d accumulation steps -> %d x %d x %d "
                 "(global batch %d)", saved_world, saved["batch_size"], saved["grad_accumulation_steps"],
                 info.world_size, cfg.batch_size, cfg.grad_accumulation_steps, now)


def _check_resume_config(cfg: FinetuneConfig, saved: dict, path: Path) -> None:
    overrides = set(cfg.resume_overrides())
    keys = RESUME_MUST_MATCH
    if saved.get("use_craft") or saved.get("monitor_retention"):
        keys = keys + RESUME_MUST_MATCH_CRAFT
    mismatched = [f"{k}: checkpoint {saved.get(k)!r} vs now {getattr(cfg, k)!r}"
                  for k in keys
                  if k not in overrides and saved.get(k, RESUME_SAVED_DEFAULTS.get(k)) != getattr(cfg, k)]
    if mismatched:
        hint = [k.split(":")[0] for k in mismatched if k.split(":")[0] in RESUME_OVERRIDABLE]
        raise ValueError(f"cannot resume from {path}: flags differ from the checkpoint's: " + "; ".join(mismatched)
                         + (f" (to change them on purpose, add --resume_override_flags {','.join(hint)})"
                            if hint else ""))


def _apply_resume_overrides(cfg: FinetuneConfig, saved: dict, path: Path, start_step: int, optimizer, scheduler,
                            run_dir: Path | None) -> list[dict]:
    """Give the restored optimizer / scheduler the overridden values. Restoring their state brought back the
    checkpoint's (param_groups' lr / weight_decay, the scheduler's base_lrs); the schedule's warmup and decay
    steps come from the new flags already (the LambdaLR's function is built from cfg, not stored).
    Logs every override; rank 0 appends them to run_dir/resume_overrides.jsonl. Returns the records."""
    records = []
    for name in cfg.resume_overrides():
        old, new = saved.get(name), getattr(cfg, name)
        records.append({"step": start_step, "flag": name, "checkpoint": old, "now": new, "from": str(path)})
        log.warning("resume override --%s: checkpoint %r -> now %r%s", name, old, new,
                    "" if old != new else " (unchanged)")
    names = set(cfg.resume_overrides())
    if names & {"learning_rate", "lr_warmup_steps", "num_steps_before_decay"}:
        scheduler.base_lrs = [cfg.learning_rate for _ in optimizer.param_groups]
        for group in optimizer.param_groups:
            group["initial_lr"] = cfg.learning_rate
        # The LR of the next step, exactly as an uninterrupted run with these flags would have it.
        lr = [base * scheduler.lr_lambdas[0](scheduler.last_epoch) for base in scheduler.base_lrs]
        for group, value in zip(optimizer.param_groups, lr):
            group["lr"] = value
        scheduler._last_lr = lr
    if "weight_decay" in names:
        for group in optimizer.param_groups:
            group["weight_decay"] = cfg.weight_decay
    if run_dir is not None and records:
        run_dir.mkdir(parents=True, exist_ok=True)
        with (run_dir / RESUME_OVERRIDES_FILE).open("a") as f:
            for record in records:
                f.write(json.dumps(record) + "\n")
    return records


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
    if cfg.dry_run:
        raise ValueError("--dry_run True trains nothing: use prismatic.training.dry_run.plan_run(cfg) (finetune.py does)")
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
    _check_resume_overrides(cfg)
    _claim_run(cfg, info, run_root, run_id)
    if cfg.resume:
        path = ckpt.find_checkpoint(run_root, run_id, cfg.resume_step)
        loaded = ckpt.load_checkpoint(path, need_lora=cfg.use_lora, need_merged=not cfg.use_lora)
        _check_resume_config(cfg, loaded.finetune_config, path)
        _check_resume_global_batch(cfg, info, loaded, path)
        start_step = int(loaded.training_state["step"])
        if start_step >= cfg.max_steps:
            raise ValueError(f"checkpoint {path} is at step {start_step} >= --max_steps {cfg.max_steps}; nothing to do")
        log.info("resuming from %s (step %d)", path, start_step)

    # ---- model ----
    sources = resolve_sources(cfg, info)
    tokenizer = build_tokenizer(cfg, vla_config, sources)
    model = build_model(cfg, vla_config, info.device, sources)
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
    # ---- retention probe: its CKA reference is θ0 too, read before any resume restore ----
    probe = _build_probe(cfg, vla_config, tokenizer, info, model, autocast_dtype)
    if loaded is not None:
        _restore_weights(model, loaded, cfg)

    # ---- optimizer + schedule ----
    # Fused AdamW on CUDA: one kernel for all parameters and no per-parameter host reads of the step counts.
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay,
                                  fused=info.device.type == "cuda")
    scheduler = make_scheduler(optimizer, cfg.lr_warmup_steps, cfg.num_steps_before_decay)
    samples_per_step = global_batch_size(cfg, info.world_size)  # over all ranks
    if loaded is not None:
        state = loaded.training_state
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        _apply_resume_overrides(cfg, loaded.finetune_config, loaded.path, start_step, optimizer, scheduler,
                                run_dir if info.is_main else None)
        if craft is not None:
            craft.load_state_dict(state["craft"])
            if "craft_retention_weight" in cfg.resume_overrides():
                log.warning("resume override --craft_retention_weight: λ %.6g (restored) -> %.6g",
                            float(craft.dual.lam), cfg.craft_retention_weight)
                craft.dual.reset(cfg.craft_retention_weight)
        set_rng_state(state["rng"][0])  # the same on every rank (nothing in training draws from it)
    else:
        seed_everything(cfg.seed)

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
    validator = None
    if cfg.use_val_set:
        validator = Validator(make_val_loader_factory(cfg, vla_config, tokenizer, info), ctx, cfg.val_time_limit)
    model.train()
    progress = _progress_bar(info, start_step, cfg.max_steps)
    pace = _Pace(start_step, cfg.max_steps)
    data_iter = iter(loader)
    metrics: dict[str, float] = {}
    last_ckpt = None
    stop = StopRequest(cfg.save_on_sigterm, info)
    done = start_step
    try:
        for step in range(start_step, cfg.max_steps):
            noise = head_noise(cfg.seed, step, vla_config.num_actions_chunk,
                               vla_config.action_dim * vla_config.llm.hidden_size)  # shared by the global batch
            micro = [to_device({**next(data_iter), "head_noise": noise}, info.device)
                     for _ in range(cfg.grad_accumulation_steps)]
            try:
                metrics = train_step(ctx, micro)
            except FloatingPointError as e:  # a divergence: say what is left and how to recover
                raise FloatingPointError(f"{e}; {_recovery_note(cfg, info, run_root, run_id)}") from None
            done = step + 1
            val_metrics = {}
            if validator is not None and validation_due(done, cfg.val_freq):
                val_metrics = validator.run()  # every rank (one all-reduce); logged in this step's row
            probe_metrics = _run_probe(probe, cfg, info, model, done)  # rank 0; the others wait at a barrier
            if info.is_main:
                if (done % cfg.wandb_log_freq == 0 or done == cfg.max_steps or done == 1 or val_metrics
                        or probe_metrics):
                    logger.log(done, {**metrics, **val_metrics, **probe_metrics})
                    log.info("step %d/%d: %s | %s", done, cfg.max_steps, progress_line(metrics), pace.line(done))
                    if val_metrics:
                        log.info("step %d validation: %s", done, val_line(val_metrics))
                    if probe_metrics:
                        log.info("step %d retention probe: %s", done, probe_line(probe_metrics))
                if progress is not None:
                    progress.set_postfix_str(progress_line(metrics), refresh=False)
                    progress.update(1)
            stopping = stop.requested() and done < cfg.max_steps
            if done % cfg.save_freq == 0 or done == cfg.max_steps or stopping:
                last_ckpt = _save(cfg, info, run_id, done, model, vla_config, tokenizer, stats, optimizer,
                                  scheduler, craft, logger, samples_per_step, run_root)
            if stopping:
                raise TrainingInterrupted(_interrupt_message("SIGTERM", done, cfg, info, run_root, run_id), 143)
    except TrainingInterrupted as e:
        _close_on_interrupt(progress, logger, e)
        raise
    except KeyboardInterrupt:
        e = TrainingInterrupted(_interrupt_message("SIGINT", done + 1, cfg, info, run_root, run_id), 130)
        _close_on_interrupt(progress, logger, e)
        raise e from None
    finally:
        stop.close()
    if progress is not None:
        progress.close()
    if logger is not None:
        logger.close()
    return TrainResult(run_id=run_id, final_step=cfg.max_steps, final_metrics=metrics, last_checkpoint=last_ckpt,
                       run_dir=run_dir)


def probe_due(step: int, probe_freq: int, max_steps: int) -> bool:
    """--probe_freq N: at every positive multiple of N optimizer steps, and at the last step."""
    return probe_freq > 0 and step > 0 and (step % probe_freq == 0 or step == max_steps)


def _build_probe(cfg: FinetuneConfig, vla_config: VLAConfig, tokenizer, info: DistInfo, model: torch.nn.Module,
                 autocast_dtype: torch.dtype | None):
    """--probe_freq > 0: the retention probe (rank 0 only), its CKA reference captured from `model` at θ0."""
    if cfg.probe_freq == 0:
        return None
    probe = None
    if info.is_main:
        from prismatic.eval.retention_probe import RetentionProbe

        t0 = time.monotonic()
        probe = RetentionProbe(cfg.probe_data, tokenizer, vla_config,
                               layer_idx=cfg.craft_config().resolve_anchor_layer(vla_config.llm.num_hidden_layers),
                               pooling=cfg.craft_pooling, batch_size=cfg.probe_batch_size, device=info.device,
                               autocast_dtype=autocast_dtype)
        probe.capture_reference(model)
        log.info("retention probe on %s: %d held-out questions, %d train / %d held-out scenes; θ0 reference "
                 "features in %.1fs", cfg.probe_data, len(probe.data.heldout_questions), len(probe.data.train_images),
                 len(probe.data.heldout_images), time.monotonic() - t0)
    barrier(info)
    return probe


def _run_probe(probe, cfg: FinetuneConfig, info: DistInfo, model: torch.nn.Module, done: int) -> dict[str, float]:
    """The probe's metrics when due (rank 0 runs it on the unwrapped model; every rank meets at the barrier
    after it, so no rank races ahead into the next step's collectives while rank 0 is busy)."""
    if not probe_due(done, cfg.probe_freq, cfg.max_steps):
        return {}
    metrics = probe.run(model).metrics() if info.is_main else {}
    barrier(info)
    return metrics


def _close_on_interrupt(progress, logger, e: TrainingInterrupted) -> None:
    if progress is not None:
        progress.close()
    if logger is not None:  # rank 0
        log.error("%s", e.message)
        logger.close()


def _interrupt_message(signal_name: str, step: int, cfg: FinetuneConfig, info: DistInfo, run_root: Path,
                       run_id: str) -> str:
    what = "saved a checkpoint and stopped" if signal_name == "SIGTERM" else f"interrupted during step {step}"
    if not ckpt.list_checkpoints(run_root, run_id):
        return (f"{signal_name}: {what}; {ckpt.last_checkpoint_note(run_root, run_id)}, so there is nothing to "
                f"resume: start again (with --overwrite True to replace what this run logged)")
    return (f"{signal_name}: {what}; {ckpt.last_checkpoint_note(run_root, run_id)}; resume with:\n  "
            f"{resume_command(cfg, info.world_size)}")


def _recovery_note(cfg: FinetuneConfig, info: DistInfo, run_root: Path, run_id: str) -> str:
    """For a divergence: the checkpoint to go back to (checkpoints are only ever written finite) and the command."""
    note = ckpt.last_checkpoint_note(run_root, run_id)
    if not ckpt.list_checkpoints(run_root, run_id):
        return f"{note}: start again with a lower --learning_rate (and --overwrite True)"
    command = resume_command(cfg, info.world_size, omit=("learning_rate",))
    return (f"{note}; to continue from it with a lower learning rate: {command} "
            f"--resume_override_flags learning_rate --learning_rate <lower>")


def _check_finite_parameters(model: torch.nn.Module, step: int, cfg: FinetuneConfig, info: DistInfo, run_root: Path,
                             run_id: str) -> None:
    """Every rank, before a save: the updated parameters must be finite (a finite loss says nothing about the
    update it produced, e.g. with a huge learning rate). Never write a non-finite checkpoint."""
    bad = [name for name, p in trainable_named_parameters(model) if not bool(torch.isfinite(p).all())]
    if bad:
        raise FloatingPointError(
            f"non-finite parameters after optimizer step {step} ({len(bad)} tensor(s), e.g. {', '.join(bad[:3])}); "
            f"not saving a checkpoint; {_recovery_note(cfg, info, run_root, run_id)}"
        )


class _Pace:
    """Steps per second and the time left, for the plain progress line (measured from the first step)."""

    def __init__(self, start: int, total: int) -> None:
        self.start, self.total, self.t0 = start, total, time.monotonic()

    def line(self, done: int) -> str:
        elapsed = time.monotonic() - self.t0
        rate = (done - self.start) / elapsed if elapsed > 0 else 0.0
        eta = (self.total - done) / rate if rate > 0 else float("nan")
        return f"{100 * done / self.total:.0f}% | {rate:.2f} steps/s | ETA {_hms(eta)}"


def _hms(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _progress_bar(info: DistInfo, start: int, total: int):
    """A tqdm bar on rank 0 when stderr is a terminal. Otherwise (a log file, a driver's pipe, CI) none: its
    carriage-return frames would fill the log; the plain `step N/M: ...` line every --wandb_log_freq steps
    says the same."""
    if not info.is_main or not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=start, desc="train", dynamic_ncols=True, leave=False)


def _save(cfg, info, run_id, step, model, vla_config, tokenizer, stats, optimizer, scheduler, craft, logger,
          samples_per_step, run_root) -> Path | None:
    _check_finite_parameters(model, step, cfg, info, run_root, run_id)
    rngs = gather_objects(rng_state(), info)  # every rank's (identical: see seed_everything) global RNG state
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
                # The data position: global samples consumed (the stream is global, pipeline.py).
                "data": {"global_batch_size": samples_per_step, "global_samples_consumed": step * samples_per_step,
                         "world_size": info.world_size},
                "craft": craft.state_dict() if craft is not None else None,
                "wandb_run_id": logger.wandb_run_id if logger is not None else None,
            },
        )
        path = ckpt.save_checkpoint(cfg.run_root_dir, run_id, payload, keep_only_latest=cfg.save_latest_checkpoint_only)
    barrier(info)
    return path
