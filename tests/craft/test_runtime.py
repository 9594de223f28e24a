"""The `.grad` plumbing of CRaFT and the step around it: owned g_ret buffers, the cross-rank gradient layout
check, one-step action chunks, the --lora_dropout decision."""

from __future__ import annotations

import pytest
import torch

import prismatic.training.step as step_module
from prismatic.models.config import get_preset
from prismatic.training.config import FinetuneConfig
from prismatic.training.craft.config import CraftConfig
from prismatic.training.craft.runtime import CraftRuntime
from prismatic.training.distributed import DistInfo
from prismatic.training.schedule import make_scheduler
from prismatic.training.step import StepContext, train_step
from tests.craft.standin import make_batch, make_model

CPU = torch.device("cpu")


def test_retention_gradients_accumulate_in_owned_buffers():
    """autograd.grad returns ONE stride-0 tensor for both leaves of (a + b).sum(): adding the next micro-batch
    into it in place would fail (or count the gradient twice); the runtime keeps its own buffers."""
    a = torch.zeros(3, requires_grad=True)
    b = torch.zeros(3, requires_grad=True)
    first = torch.autograd.grad((a + b).sum(), [a, b])
    assert first[0] is first[1] and first[0].stride() == (0,)  # the hazard is real
    runtime = CraftRuntime(CraftConfig(enabled=True), anchor=None, model=None, layer_idx=1)
    weights = torch.tensor([1.0, 2.0, 3.0])
    runtime.accumulate_retention_grad((a + b).sum(), [a, b])
    runtime.accumulate_retention_grad(((a + b) * weights).sum(), [a, b])
    ga, gb = runtime.retention_grads()
    assert ga is not gb
    assert torch.equal(ga, 1 + weights) and torch.equal(gb, 1 + weights)
    with pytest.raises(RuntimeError, match="changed between micro-batches"):
        runtime.accumulate_retention_grad(a.sum(), [a, b])  # b gets none this time


def _standin_ctx(dist: DistInfo, craft=None, chunk_model=None):
    model = chunk_model if chunk_model is not None else make_model(dropout=0.0)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3)
    return StepContext(model=model, params=params, optimizer=opt, scheduler=make_scheduler(opt, 0, 10**6),
                       dist=dist, grad_accumulation_steps=1, max_grad_norm=None, autocast_dtype=None, craft=craft)


def test_gradient_layout_is_verified_across_ranks_once(monkeypatch):
    """A rank without a gradient for some parameter would shift every later tensor in the coalesced
    all-reduce. The first step compares the layouts (simulated here: the other rank lacks parameter 0's)."""
    calls = []

    def fake_all_reduce_mean_(tensors, info):
        calls.append([t.numel() for t in tensors])
        if len(tensors) == 1 and tensors[0].numel() == n_params:  # the layout mask
            remote = tensors[0].clone()
            remote[0] = 0.0
            tensors[0].copy_((tensors[0] + remote) / 2)

    two_ranks = DistInfo(rank=0, local_rank=0, world_size=2, device=CPU)
    ctx = _standin_ctx(two_ranks)
    n_params = len(ctx.params)
    monkeypatch.setattr(step_module, "all_reduce_mean_", fake_all_reduce_mean_)
    with pytest.raises(RuntimeError, match="differs across ranks.*g_act of parameter 0"):
        train_step(ctx, [make_batch()])

    # Identical layouts: checked at the first step only, then a single all-reduce per step.
    monkeypatch.setattr(step_module, "all_reduce_mean_", lambda tensors, info: calls.append(len(tensors)))
    ctx = _standin_ctx(two_ranks)
    calls.clear()
    train_step(ctx, [make_batch()])
    train_step(ctx, [make_batch(seed=1)])
    assert len(calls) == 3 and ctx.layout_verified


@pytest.mark.parametrize("use_craft", [False, True])
def test_one_step_action_chunk_trains(use_craft):
    """num_actions_chunk == 1: there are no "next actions" (next_actions_l1 is None); the step must not crash
    and must not log a made-up value for it."""
    from prismatic.models.vla import VLAAdapter
    from prismatic.training.lora import apply_lora, trainable_named_parameters
    from tests.training.equivalence import make_global_batches

    cfg = get_preset("tiny")
    cfg.num_actions_chunk = 1
    cfg.action_head.train_noise_std = 0.0
    torch.manual_seed(0)
    model = apply_lora(VLAAdapter(cfg, attn_implementation="sdpa"), rank=4, alpha=8, dropout=0.0)
    params = [p for _, p in trainable_named_parameters(model)]
    craft = None
    if use_craft:
        craft = CraftRuntime.from_initial_model(model, CraftConfig(enabled=True), cfg, params)
    single = DistInfo(rank=0, local_rank=0, world_size=1, device=CPU)
    ctx = _standin_ctx(single, craft=craft, chunk_model=model)
    batch = make_global_batches(1, 2)[0]
    batch["actions"] = batch["actions"][:, :1]
    metrics = train_step(ctx, [batch])
    assert "next_actions_l1" not in metrics
    assert metrics["loss"] == pytest.approx(metrics["curr_action_l1"])


def test_lora_dropout_with_craft_is_a_config_error():
    """Decision (documented on the flag): with LoRA dropout the current features Φ(θ) carry dropout noise that
    the anchor Φ(θ0) (adapters off, eval mode) never has, so L_ret would include E‖noise‖², which no update can
    remove, and the dual ascent would push λ up against it. CRaFT therefore requires --lora_dropout 0.0 (the
    upstream default); a baseline run may use dropout (and --monitor_retention then reports that floor)."""
    with pytest.raises(ValueError, match="--lora_dropout"):
        FinetuneConfig(model_preset="tiny", use_craft=True, lora_dropout=0.1)
    FinetuneConfig(model_preset="tiny", use_craft=True, lora_dropout=0.0)
    FinetuneConfig(model_preset="tiny", use_craft=False, lora_dropout=0.1, monitor_retention=True)


def test_dropout_noise_floor_that_the_decision_avoids():
    """Why: away from θ0, the features of a training-mode forward with dropout differ from the dropout-free
    ones by noise, so MSE(Φ(θ; dropout), Φ(θ0)) > MSE(Φ(θ), Φ(θ0)) by a floor the anchor never sees."""
    from tests.craft.standin import features

    batch = make_batch()
    model = make_model(dropout=0.3)
    anchor_raw, _ = features(make_model(dropout=0.3), batch, 2)  # θ0 (eval mode: no dropout)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    clean_raw, _ = features(model, batch, 2)
    model.train()
    with torch.no_grad():
        noisy = [model(batch["input_ids"], batch["attention_mask"], batch["pixel_values"], batch["proprio"],
                       output_craft_features=True, craft_layer_idx=2).raw_latent_features for _ in range(8)]
    clean = float((clean_raw.mean(1) - anchor_raw.mean(1)).pow(2).mean())
    noisy_mse = sum(float((x.mean(1) - anchor_raw.mean(1)).pow(2).mean()) for x in noisy) / len(noisy)
    assert noisy_mse > 1.2 * clean
