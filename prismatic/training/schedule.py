"""Learning-rate schedule: linear warmup from 10% to 100%, then a x0.1 step decay.

A pure function of the optimizer step, wrapped in a LambdaLR so its state is a single step counter
that checkpoints and resumes exactly. (Upstream's default `lr_warmup_steps=0.1` reset the LR on every
micro-batch and silently nullified the decay; here warmup and decay compose.)
"""

from __future__ import annotations

import torch

WARMUP_START_FRACTION = 0.1
DECAY_FACTOR = 0.1


def lr_factor(step: int, warmup_steps: int, decay_step: int) -> float:
    """Multiplier on the peak LR for optimizer step `step` (0-based)."""
    factor = 1.0
    if warmup_steps > 0 and step < warmup_steps:
        factor = WARMUP_START_FRACTION + (1.0 - WARMUP_START_FRACTION) * step / warmup_steps
    if step >= decay_step:
        factor *= DECAY_FACTOR
    return factor


def make_scheduler(optimizer: torch.optim.Optimizer, warmup_steps: int, decay_step: int):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, warmup_steps, decay_step))
