"""Run K optimizer steps of the real `train_step` on fixed, seeded batches; used by the equivalence tests.

Usable in-process (world size 1) and as a torchrun script (`python -m torch.distributed.run
--nproc_per_node 2 tests/training/equivalence.py OUT ...`), where every rank takes its slice of the same
global batch. Head noise is off here (the trainer draws it once per step for the global batch, see
prismatic/training/randomness.py; test_world_size_invariance.py covers it end to end).
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile

import numpy as np
import torch

import prismatic  # noqa: F401
from prismatic.models.config import get_preset
from prismatic.models.processing import build_tiny_tokenizer
from prismatic.models.random_inputs import random_batch
from prismatic.training.distributed import DistInfo, broadcast_parameters_, cleanup_distributed, init_distributed
from prismatic.training.lora import apply_lora, trainable_named_parameters
from prismatic.training.schedule import make_scheduler
from prismatic.training.step import StepContext, train_step

# CRaFT variants (FinetuneConfig flags on top of run()'s defaults), by the names the tests use.
CRAFT_VARIANTS = {
    "default": {},
    "no_projection": {"craft_enable_projection": False},
    "fixed_lambda": {"craft_enable_dual": False, "craft_retention_weight": 0.5},
    "raw_only": {"craft_anchor_type": "raw_only"},
    "aq_only": {"craft_anchor_type": "aq_only"},
    "global_granularity": {"craft_projection_granularity": "global"},
    "max_pooling": {"craft_pooling": "max"},
    "normalize_parts": {"craft_normalize_parts": True},
    "anchor_cache": {"craft_anchor_cache": True, "image_aug": False},
    "monitor_retention": {"use_craft": False, "monitor_retention": True},
}


def tiny_config():
    cfg = get_preset("tiny")
    cfg.action_head.train_noise_std = 0.0
    return cfg


def make_global_batches(num_steps: int, global_batch: int, seed: int = 0) -> list[dict]:
    cfg = tiny_config()
    with tempfile.TemporaryDirectory() as d:
        tok = build_tiny_tokenizer(d, vocab_size=cfg.llm.vocab_size)
    rng = np.random.default_rng(seed)
    batches = [random_batch(cfg, tok, global_batch, rng) for _ in range(num_steps)]
    for step, batch in enumerate(batches):  # per-sample keys (the anchor cache needs them)
        batch["sample_keys"] = [f"sample-{seed}-{step}-{i}" for i in range(global_batch)]
    return batches


def slice_batch(batch: dict, start: int, stop: int) -> dict:
    return {k: v[start:stop] for k, v in batch.items()}


def _build(info: DistInfo, lr: float, accum: int, use_craft: bool, craft_overrides: dict | None, perturb: bool):
    """Model, optimizer, schedule and (CRaFT) runtime, as `train()` builds them (θ0 taken before any step)."""
    cfg = tiny_config()
    torch.manual_seed(0)
    from prismatic.models.vla import VLAAdapter

    model = apply_lora(VLAAdapter(cfg), rank=4, alpha=8, dropout=0.0)
    named = trainable_named_parameters(model)
    params = [p for _, p in named]
    broadcast_parameters_(params, info)
    craft = None
    if use_craft:
        from prismatic.training.config import FinetuneConfig
        from prismatic.training.craft.runtime import CraftRuntime

        flags = {"model_preset": "tiny", "use_craft": True, "craft_retention_budget": 0.0, "craft_dual_lr": 0.5,
                 "craft_log_freq": 1}
        flags.update(craft_overrides or {})
        ft = FinetuneConfig(**flags)
        craft = CraftRuntime.from_initial_model(model, ft.craft_config(), cfg, params,
                                                monitor_only=not ft.use_craft)
    if perturb:
        # Start AWAY from θ0 (LoRA B != 0, queries moved), the same on every rank: at θ0 itself g_ret ≡ 0 and
        # the projection has nothing to do.
        g = torch.Generator().manual_seed(1234)
        with torch.no_grad():
            for p in params:
                p.add_(0.05 * torch.randn(p.shape, generator=g))
    opt = torch.optim.AdamW(params, lr=lr)
    sched = make_scheduler(opt, 2, 3)
    ctx = StepContext(model=model, params=params, optimizer=opt, scheduler=sched, dist=info,
                      grad_accumulation_steps=accum, max_grad_norm=1.0, autocast_dtype=None, craft=craft)
    return model, named, ctx


def _round_trip(state: dict) -> dict:
    """What a checkpoint gives back: saved, then loaded with weights_only=True."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def run(info: DistInfo, batches: list[dict], accum: int, use_craft: bool, lr: float = 1e-3,
        craft_overrides: dict | None = None, perturb: bool = False,
        resume_after: int | None = None) -> dict[str, torch.Tensor]:
    """Train on `batches` (global batches); this rank uses its contiguous slice, split into `accum` micro-batches.

    perturb: start away from θ0 (see `_build`). resume_after=k: after k steps save everything a checkpoint
    holds (weights, optimizer, schedule, CRaFT state, RNG), rebuild from scratch as a resumed `train()` does
    (θ0 snapshot of the fresh model first, then the restore) and continue."""
    model, named, ctx = _build(info, lr, accum, use_craft, craft_overrides, perturb)
    model.train()
    history = []
    for step, gb in enumerate(batches):
        if resume_after is not None and step == resume_after:
            state = _round_trip({
                "weights": {n: p.detach().clone() for n, p in named}, "optimizer": ctx.optimizer.state_dict(),
                "scheduler": ctx.scheduler.state_dict(), "rng": torch.get_rng_state(),
                "craft": ctx.craft.state_dict() if ctx.craft is not None else None})
            model, named, ctx = _build(info, lr, accum, use_craft, craft_overrides, perturb=False)
            with torch.no_grad():
                for n, p in named:
                    p.copy_(state["weights"][n])
            ctx.optimizer.load_state_dict(state["optimizer"])
            ctx.scheduler.load_state_dict(state["scheduler"])
            if ctx.craft is not None:
                ctx.craft.load_state_dict(state["craft"])
            torch.set_rng_state(state["rng"])
            model.train()
        n = gb["input_ids"].shape[0]
        per_rank = n // info.world_size
        mine = slice_batch(gb, info.rank * per_rank, (info.rank + 1) * per_rank)
        mb = per_rank // accum
        micro = [slice_batch(mine, i * mb, (i + 1) * mb) for i in range(accum)]
        history.append(train_step(ctx, micro))
    out = {n: p.detach().clone() for n, p in named}
    out["__loss__"] = torch.tensor([h["loss"] for h in history])
    if ctx.craft is not None:
        out["__retention__"] = torch.tensor([h["retention_loss"] for h in history])
    if history and "lambda" in history[0]:
        out["__lambda__"] = torch.tensor([h["lambda"] for h in history])
        out["__conflict__"] = torch.tensor([h["conflict_ratio"] for h in history])
    out["__lr__"] = torch.tensor(ctx.optimizer.param_groups[0]["lr"])
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--global_batch", type=int, default=4)
    parser.add_argument("--accum", type=int, default=1)
    parser.add_argument("--craft", action="store_true")
    parser.add_argument("--variant", default="default", choices=sorted(CRAFT_VARIANTS))
    parser.add_argument("--perturb", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    info = init_distributed("cpu")
    try:
        result = run(info, make_global_batches(args.steps, args.global_batch), args.accum, args.craft,
                     craft_overrides=CRAFT_VARIANTS[args.variant], perturb=args.perturb)
        if info.rank == 0:
            torch.save(result, args.out)
        else:
            torch.save(result, args.out + f".rank{info.rank}")
    finally:
        cleanup_distributed()


if __name__ == "__main__":
    sys.path.insert(0, os.getcwd())
    main()
