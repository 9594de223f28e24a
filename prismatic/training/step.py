"""One optimisation step: micro-batches -> (CRaFT) gradients -> one all-reduce -> update.

    for each micro-batch:                         (no communication)
        out   = model(batch)                      forward; with CRaFT it also returns Φ(θ; x)
        L_act = out.loss / G
        [CRaFT] Φ0 = anchor(batch) (no_grad, θ0);  L_ret = MSE(Φ, Φ0) / G;  g_ret += ∇L_ret (graph kept)
        L_act.backward()                          g_act accumulates in .grad
    all-reduce mean of [g_act, g_ret, step losses] across ranks    (one coalesced call)
    [CRaFT] g = project(g_act, g_ret) + λ g_ret                     (identical on every rank)
    clip (optional) -> optimizer.step -> scheduler.step
    [CRaFT] λ <- clip(λ + η (L̄_ret - ε), 0, λ_max)

Every rank applies the same update computed from the same averaged gradients, so N ranks x B equals one
process on the global batch, and G micro-batches of B/G equal one batch of B.
The host reads device values once per step (losses, norms and CRaFT statistics together).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch

from prismatic.training.distributed import DistInfo, all_reduce_mean_
from prismatic.training.randomness import dropout_keys

MODEL_INPUT_KEYS = ("input_ids", "attention_mask", "pixel_values", "proprio", "actions")
# Passed on when the batch has them: the step's head noise (randomness.head_noise, set by the trainer).
OPTIONAL_MODEL_INPUT_KEYS = ("head_noise",)


@dataclass
class StepContext:
    """Everything a step needs besides the batch; built once by `train()`."""

    model: torch.nn.Module  # the (peft-wrapped) VLAAdapter; called directly (no DDP wrapper, see distributed.py)
    params: list[torch.nn.Parameter]  # trainable parameters, fixed order (the order of the gradient buffers)
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    dist: DistInfo
    grad_accumulation_steps: int
    max_grad_norm: float | None
    autocast_dtype: torch.dtype | None  # None = fp32
    craft: object | None = None  # prismatic.training.craft.CraftRuntime when --use_craft
    layout_verified: bool = False  # set after the first step's cross-rank check of which gradients exist


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


def _autocast(ctx: StepContext):
    if ctx.autocast_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=ctx.dist.device.type, dtype=ctx.autocast_dtype)


def _verify_gradient_layout(act_present: list, ret_present: list[bool], dist: DistInfo) -> None:
    """Once per run: every rank must have gradients for the same parameters (g_act and g_ret).

    The coalesced all-reduce packs the present gradients back to back; a rank missing one would shift every
    later tensor in the buffer (silently mixing parameters) or hang. One small all-reduce + host read."""
    if not dist.distributed:
        return
    mask = torch.tensor([g is not None for g in act_present] + list(ret_present), dtype=torch.float32,
                        device=dist.device)
    mine = mask.clone()
    all_reduce_mean_([mask], dist)
    differ = ((mask - mine).abs() > 0).nonzero().flatten().tolist()
    if differ:
        n = len(act_present)
        names = [f"g_act of parameter {i}" if i < n else f"g_ret of parameter {i - n}" for i in differ[:10]]
        raise RuntimeError(f"rank {dist.rank}: the set of parameters with a gradient differs across ranks "
                           f"({len(differ)} entries, first: {names}); every rank must run the same graph")


def train_step(ctx: StepContext, micro_batches: list[dict]) -> dict[str, float]:
    """Run one optimizer step over `micro_batches` (already on the device). Returns host-side metrics."""
    if len(micro_batches) != ctx.grad_accumulation_steps:
        raise ValueError(f"expected {ctx.grad_accumulation_steps} micro-batches, got {len(micro_batches)}")
    g = ctx.grad_accumulation_steps
    craft = ctx.craft
    device = ctx.dist.device
    # Per-step loss sums (device tensors; summed over micro-batches, divided by G).
    loss_sum = torch.zeros(6, device=device)  # [L_act, curr L1, next L1, L_ret, MSE raw part, MSE aq part]
    has_next = True  # False when the chunk has one step (no "next actions")
    if craft is not None:  # first step with --craft_normalize_parts: fix the per-part scale at θ0
        with _autocast(ctx):
            craft.begin_step(micro_batches, lambda tensors: all_reduce_mean_(tensors, ctx.dist))

    for batch in micro_batches:
        inputs = {k: batch[k] for k in MODEL_INPUT_KEYS}
        inputs.update({k: batch[k] for k in OPTIONAL_MODEL_INPUT_KEYS if k in batch})
        # LoRA dropout masks are keyed on the global sample indices (randomness.KeyedDropout).
        with _autocast(ctx), dropout_keys(batch.get("sample_indices")):
            out = ctx.model(**inputs, output_craft_features=craft is not None,
                            craft_layer_idx=craft.layer_idx if craft is not None else None)
        loss_act = out.loss.float() / g
        loss_sum[0] += loss_act.detach()
        loss_sum[1] += out.curr_action_l1.detach().float() / g
        if out.next_actions_l1 is None:
            has_next = False
        else:
            loss_sum[2] += out.next_actions_l1.detach().float() / g

        # ======================= CRaFT: retention gradient (micro-batch) =======================
        if craft is not None:
            with _autocast(ctx):
                loss_ret, part_mse = craft.retention_loss(out, batch)
            loss_ret = loss_ret / g
            craft.accumulate_retention_grad(loss_ret, ctx.params)  # autograd.grad, graph retained
            loss_sum[3] += loss_ret.detach().float()
            loss_sum[4:6] += part_mse.float() / g
        # ========================================================================================
        loss_act.backward()

    # Gradients that are None (parameters outside the graph, e.g. the last ViT block) stay None: which
    # parameters get a gradient is fixed by the graph, so it is identical on every rank.
    grads = [p.grad for p in ctx.params]
    if not ctx.layout_verified:
        _verify_gradient_layout(grads, craft.retention_grad_present() if craft is not None else [], ctx.dist)
        ctx.layout_verified = True
    sync = [gr for gr in grads if gr is not None] + [loss_sum]
    if craft is not None:
        sync += craft.retention_grads()
    all_reduce_mean_(sync, ctx.dist)

    # ======================= CRaFT: projection + combination (per step) ========================
    craft_stats = None
    if craft is not None:
        grads, craft_stats = craft.combine(grads)  # g = project(g_act, g_ret) + λ g_ret
    # ============================================================================================
    for p, grad in zip(ctx.params, grads):
        p.grad = None if grad is None else grad.to(p.dtype)

    present = [p.grad for p in ctx.params if p.grad is not None]
    grad_norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(present))) if present else loss_sum.new_zeros(())
    if ctx.max_grad_norm is not None and present:
        # clip_grad_norm_'s rule with the norm computed above (saves a second pass over the gradients).
        clip = (ctx.max_grad_norm / (grad_norm + 1e-6)).clamp(max=1.0)
        torch._foreach_mul_(present, clip.to(present[0].dtype))

    # One host sync per step: losses, norm and CRaFT statistics together.
    device_values = [loss_sum, grad_norm.reshape(1)]
    if craft_stats is not None:
        device_values.append(craft_stats)
    host = torch.cat([v.float().reshape(-1) for v in device_values]).tolist()
    l_act, curr_l1, next_l1, l_ret, mse_raw, mse_aq, norm = host[:7]
    if not math.isfinite(l_act) or (craft is not None and not math.isfinite(l_ret)):
        raise FloatingPointError(
            f"non-finite loss at optimizer step {ctx.scheduler.last_epoch}: action loss {l_act}, "
            f"retention loss {l_ret}; stopping"
        )
    if not math.isfinite(norm):
        raise FloatingPointError(f"non-finite gradient norm ({norm}) at optimizer step {ctx.scheduler.last_epoch}")

    lr = ctx.optimizer.param_groups[0]["lr"]
    ctx.optimizer.step()
    ctx.scheduler.step()
    ctx.optimizer.zero_grad(set_to_none=True)

    metrics = {"loss": l_act, "curr_action_l1": curr_l1, "grad_norm": norm, "lr": lr}
    if has_next:
        metrics["next_actions_l1"] = next_l1
    if craft is not None:
        metrics.update(craft.after_step(l_ret, [mse_raw, mse_aq], host[7:]))  # dual ascent on global mean L_ret
    return metrics
