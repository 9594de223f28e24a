"""`train_step` equals an independent, plainly written CRaFT step (tests/craft/reference_step.py), step by step.

Every ablation variant, gradient accumulation, bf16 autocast, LoRA and full fine-tuning. The runs start AWAY
from θ0 (the live weights are perturbed after θ0 is taken), so g_ret != 0, some tensors conflict and some do
not, λ moves (budget 0, large η) and clipping is active: skipping the projection, ignoring λ, clipping before
the combination, a wrong dual update, a wrong anchor, pooling or normalisation each change the final
gradients well beyond the tolerance.
"""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch

from prismatic.training.craft.config import CraftConfig
from prismatic.training.craft.runtime import CraftRuntime
from prismatic.training.distributed import DistInfo
from prismatic.training.schedule import make_scheduler
from prismatic.training.step import StepContext, train_step
from tests.craft.reference_step import ReferenceConfig, ReferenceCraft
from tests.craft.standin import NUM_LAYERS, lora_wrap, make_batch, make_model

SINGLE = DistInfo(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))
LAYER = 2
LR, WD, MAX_NORM = 1e-2, 0.01, 0.5
COMMON = dict(retention_weight=0.5, retention_budget=0.0, dual_lr=2.0, lambda_max=10.0, log_freq=1)

VARIANTS = {
    "default": {},
    "no_projection": {"enable_projection": False},
    "fixed_lambda": {"enable_dual": False},
    "raw_only": {"anchor_type": "raw_only"},
    "aq_only": {"anchor_type": "aq_only"},
    "global_granularity": {"projection_granularity": "global"},
    "max_pooling": {"pooling": "max"},
    "normalize_parts": {"normalize_parts": True},
    "anchor_cache": {"anchor_cache": True},
    "monitor_retention": {"monitor_only": True},
}


def _craft_config(flags: dict) -> CraftConfig:
    flags = {k: v for k, v in flags.items() if k != "monitor_only"}
    return CraftConfig(enabled=True, anchor_layer_idx=LAYER, **{**COMMON, **flags})


def _reference_config(cfg: CraftConfig, monitor_only: bool, autocast) -> ReferenceConfig:
    return ReferenceConfig(lam=cfg.retention_weight, budget=cfg.retention_budget, dual_lr=cfg.dual_lr,
                           lambda_max=cfg.lambda_max, enable_projection=cfg.enable_projection,
                           enable_dual=cfg.enable_dual, anchor_type=cfg.anchor_type, pooling=cfg.pooling,
                           granularity=cfg.projection_granularity, normalize_parts=cfg.normalize_parts,
                           monitor_only=monitor_only, layer=LAYER, lr=LR, weight_decay=WD, max_grad_norm=MAX_NORM,
                           autocast_dtype=autocast)


def _batches(steps: int, accum: int) -> list[list[dict]]:
    """Two distinct global batches of 4, alternating (a sample comes back: the anchor cache gets hits)."""
    pool = []
    for seed in (11, 12):
        batch = make_batch(batch_size=4, seed=seed)
        batch["sample_keys"] = [f"b{seed}/{i}" for i in range(4)]
        pool.append(batch)
    out = []
    for k in range(steps):
        batch, mb = pool[k % 2], 4 // accum
        out.append([{key: v[i * mb:(i + 1) * mb] for key, v in batch.items()} for i in range(accum)])
    return out


def _build(use_lora: bool, seed: int = 0):
    model = make_model(seed=seed, dropout=0.0)
    return lora_wrap(model) if use_lora else model


def _perturb(model, seed: int = 1, scale: float = 0.1) -> None:
    """Move every trainable tensor away from θ0 (LoRA B included), so that L_ret and g_ret are not zero."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(scale * torch.randn(p.shape, generator=g))


def run_both(variant: str, accum: int = 2, steps: int = 3, use_lora: bool = True, autocast=None,
             extra: dict | None = None):
    """Run `train_step` and the reference side by side; returns per-step (impl grads, impl metrics, record)
    and the two models."""
    flags = {**VARIANTS[variant], **(extra or {})}
    monitor = bool(flags.get("monitor_only"))
    cfg = _craft_config(flags)
    model = _build(use_lora)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    params = [p for _, p in named]
    vla_config = SimpleNamespace(llm=SimpleNamespace(num_hidden_layers=NUM_LAYERS))
    craft = CraftRuntime.from_initial_model(model, cfg, vla_config, params, monitor_only=monitor)
    initial = copy.deepcopy(model)
    _perturb(model)
    ref_model = copy.deepcopy(model)
    reference = ReferenceCraft(ref_model, initial, _reference_config(cfg, monitor, autocast))

    opt = torch.optim.AdamW(params, lr=LR, weight_decay=WD)
    recorded: list[dict[str, torch.Tensor | None]] = []  # the gradients the optimizer sees, per step
    opt.register_step_pre_hook(lambda *_: recorded.append(
        {n: None if p.grad is None else p.grad.detach().clone() for n, p in named}))
    ctx = StepContext(model=model, params=params, optimizer=opt, scheduler=make_scheduler(opt, 0, 10**6),
                      dist=SINGLE, grad_accumulation_steps=accum, max_grad_norm=MAX_NORM, autocast_dtype=autocast,
                      craft=craft)
    model.train()
    history = []
    for micro in _batches(steps, accum):
        metrics = train_step(ctx, micro)
        record = reference.step(micro)
        history.append((recorded[-1], metrics, record))
    return history, model, ref_model


def _assert_close_grads(impl: dict, ref: dict, rtol: float, step: int) -> None:
    assert {n for n, g in impl.items() if g is not None} == set(ref), f"step {step}: different gradient sets"
    for n, r in ref.items():
        err = (impl[n].double() - r).abs().max().item()
        scale = r.abs().max().item()
        assert err <= rtol * scale + 1e-12, f"step {step}, {n}: |Δ| {err:.3e} vs max |g| {scale:.3e}"


def _check(history, impl_model, ref_model, rtol: float = 2e-5, monitor: bool = False) -> None:
    conflicts = []
    for step, (grads, m, rec) in enumerate(history):
        _assert_close_grads(grads, rec.grads, rtol, step)
        assert m["loss"] == pytest.approx(rec.loss, rel=1e-5)
        assert m["retention_loss"] == pytest.approx(rec.retention_loss, rel=1e-4, abs=1e-9)
        assert m["grad_norm"] == pytest.approx(rec.grad_norm, rel=1e-4)
        if not monitor:
            assert m["lambda"] == pytest.approx(rec.lam_after, rel=1e-5, abs=1e-9)
            assert m["conflict_ratio"] == pytest.approx(rec.num_conflicting / rec.num_both, abs=1e-9)
            assert m["grad_cosine"] == pytest.approx(rec.cosine, rel=1e-3, abs=1e-6)
            assert m["projection_energy_removed"] == pytest.approx(rec.energy_removed, rel=1e-3, abs=1e-6)
            conflicts.append((rec.num_conflicting, rec.num_both))
        else:
            assert "lambda" not in m
    for (n, p), (_, q) in zip(impl_model.named_parameters(), ref_model.named_parameters()):
        assert torch.allclose(p, q, rtol=0, atol=1e-5), f"{n} differs by {(p - q).abs().max():.3e}"
    if conflicts:  # the setting exercises the projection: some tensors conflict, some do not
        assert any(0 < c < b for c, b in conflicts), conflicts
        assert history[-1][2].retention_loss > 1e-4


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_train_step_equals_the_reference_step(variant):
    history, impl_model, ref_model = run_both(variant)
    _check(history, impl_model, ref_model, monitor=variant == "monitor_retention")
    lams = [m["lambda"] for _, m, _ in history] if variant != "monitor_retention" else []
    if variant == "fixed_lambda":
        assert lams == [COMMON["retention_weight"]] * len(lams)
    elif lams:
        assert len(set(lams)) == len(lams)  # λ moves every step


def test_no_accumulation_full_finetuning():
    history, impl_model, ref_model = run_both("default", accum=1, use_lora=False)
    _check(history, impl_model, ref_model)


def test_bf16_autocast():
    history, impl_model, ref_model = run_both("default", autocast=torch.bfloat16)
    _check(history, impl_model, ref_model, rtol=2e-3)


def test_bf16_autocast_normalize_parts_full_finetuning():
    history, impl_model, ref_model = run_both("normalize_parts", autocast=torch.bfloat16, use_lora=False)
    _check(history, impl_model, ref_model, rtol=2e-3)
