"""Run K optimizer steps of the real `train_step` on fixed, seeded batches; used by the equivalence tests.

Usable in-process (world size 1) and as a torchrun script (`python -m torch.distributed.run
--nproc_per_node 2 tests/training/equivalence.py OUT ...`), where every rank takes its slice of the same
global batch. Head noise is off (it is drawn per rank, so it cannot match a 1-process run by design).
"""

from __future__ import annotations

import argparse
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


def tiny_config():
    cfg = get_preset("tiny")
    cfg.action_head.train_noise_std = 0.0
    return cfg


def make_global_batches(num_steps: int, global_batch: int, seed: int = 0) -> list[dict]:
    cfg = tiny_config()
    with tempfile.TemporaryDirectory() as d:
        tok = build_tiny_tokenizer(d, vocab_size=cfg.llm.vocab_size)
    rng = np.random.default_rng(seed)
    return [random_batch(cfg, tok, global_batch, rng) for _ in range(num_steps)]


def slice_batch(batch: dict, start: int, stop: int) -> dict:
    return {k: v[start:stop] for k, v in batch.items()}


def run(info: DistInfo, batches: list[dict], accum: int, use_craft: bool, lr: float = 1e-3,
        craft_overrides: dict | None = None) -> dict[str, torch.Tensor]:
    """Train on `batches` (global batches); this rank uses its contiguous slice, split into `accum` micro-batches."""
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

        flags = {"model_preset": "tiny", "use_craft": True, "craft_retention_budget": 0.0, "craft_dual_lr": 0.5}
        flags.update(craft_overrides or {})
        craft = CraftRuntime.from_initial_model(model, FinetuneConfig(**flags).craft_config(), cfg, params)
    opt = torch.optim.AdamW(params, lr=lr)
    sched = make_scheduler(opt, 2, 3)
    ctx = StepContext(model=model, params=params, optimizer=opt, scheduler=sched, dist=info,
                      grad_accumulation_steps=accum, max_grad_norm=1.0, autocast_dtype=None, craft=craft)
    model.train()
    history = []
    for gb in batches:
        n = gb["input_ids"].shape[0]
        per_rank = n // info.world_size
        mine = slice_batch(gb, info.rank * per_rank, (info.rank + 1) * per_rank)
        mb = per_rank // accum
        micro = [slice_batch(mine, i * mb, (i + 1) * mb) for i in range(accum)]
        history.append(train_step(ctx, micro))
    out = {n: p.detach().clone() for n, p in named}
    out["__loss__"] = torch.tensor([h["loss"] for h in history])
    if craft is not None:
        out["__lambda__"] = torch.tensor([h["lambda"] for h in history])
    out["__lr__"] = torch.tensor(opt.param_groups[0]["lr"])
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--global_batch", type=int, default=4)
    parser.add_argument("--accum", type=int, default=1)
    parser.add_argument("--craft", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    info = init_distributed("cpu")
    try:
        result = run(info, make_global_batches(args.steps, args.global_batch), args.accum, args.craft)
        if info.rank == 0:
            torch.save(result, args.out)
        else:
            torch.save(result, args.out + f".rank{info.rank}")
    finally:
        cleanup_distributed()


if __name__ == "__main__":
    sys.path.insert(0, os.getcwd())
    main()
