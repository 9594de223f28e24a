"""An independent, plainly written CRaFT optimisation step, to pin `train_step` down (CRAFT_SPEC.md, steps 1-5).

Nothing here imports the implementation's CRaFT code: θ0 is a deep copy of the initial model, the features
are pooled and compared by hand, the two gradients come from `torch.autograd.grad` one micro-batch at a
time, and the projection, λ, clipping, AdamW and the dual update are written out per tensor in float64:

    per micro-batch j of G:   L_act,j = out.loss / G           g_act += ∇ L_act,j
                              L_ret,j = MSE(Φ(θ), Φ(θ0)) / G   g_ret += ∇ L_ret,j
    per tensor i:             dot_i = <a_i, r_i>;   if dot_i < 0:  a_i -= dot_i / ‖r_i‖² · r_i
                              (global: one projection of the concatenated vectors, missing parts = 0)
    g_i = a_i' + λ r_i;  clip by the global norm;  AdamW (torch's formulas);  λ <- clip(λ + η (Σ_j L_ret,j - ε), 0, λ_max)

`--craft_normalize_parts`: each part of Φ and Φ0 divided by the RMS of that anchor part over the FIRST
step's global batch (all micro-batches), fixed afterwards. `monitor_retention`: g = g_act (L_ret only logged).
"""

from __future__ import annotations

import copy
import math
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
from torch import nn

MODEL_KEYS = ("input_ids", "attention_mask", "pixel_values", "proprio")


@dataclass
class ReferenceConfig:
    lam: float = 1.0  # initial λ (craft_retention_weight)
    budget: float = 0.1  # ε
    dual_lr: float = 0.01  # η
    lambda_max: float = 10.0
    enable_projection: bool = True
    enable_dual: bool = True
    anchor_type: str = "concat"
    pooling: str = "mean"
    granularity: str = "tensor"
    normalize_parts: bool = False
    monitor_only: bool = False
    layer: int = 2
    lr: float = 1e-2
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    max_grad_norm: float | None = None
    autocast_dtype: torch.dtype | None = None


@dataclass
class StepRecord:
    """What one reference step computed (host values), for comparison with `train_step`'s metrics."""

    grads: dict[str, torch.Tensor]  # final gradient written for the optimizer (after clipping), fp64
    loss: float
    retention_loss: float
    lam_after: float
    grad_norm: float  # before clipping
    num_conflicting: int
    num_both: int
    cosine: float
    energy_removed: float
    extra: dict = field(default_factory=dict)


def _pool(tokens: torch.Tensor, pooling: str) -> torch.Tensor:
    tokens = tokens.float()
    return tokens.mean(dim=1) if pooling == "mean" else tokens.max(dim=1).values


class ReferenceCraft:
    """Trains `model` (its own copy) with the plain CRaFT step; θ0 = a frozen copy of `initial_model`."""

    def __init__(self, model: nn.Module, initial_model: nn.Module, cfg: ReferenceConfig) -> None:
        self.model = model
        self.theta0 = copy.deepcopy(initial_model).eval()
        for p in self.theta0.parameters():
            p.requires_grad_(False)
        self.cfg = cfg
        self.named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.lam = float(cfg.lam)
        self.exp_avg: dict[str, torch.Tensor] = {}
        self.exp_avg_sq: dict[str, torch.Tensor] = {}
        self.t = 0
        self.scale: dict[str, float] | None = None

    def _autocast(self):
        if self.cfg.autocast_dtype is None:
            return nullcontext()
        return torch.autocast("cpu", dtype=self.cfg.autocast_dtype)

    def _anchor(self, batch: dict) -> dict[str, torch.Tensor]:
        with torch.no_grad(), self._autocast():
            out = self.theta0(**{k: batch[k] for k in MODEL_KEYS}, output_craft_features=True,
                              craft_layer_idx=self.cfg.layer)
        return {"raw": _pool(out.raw_latent_features, self.cfg.pooling),
                "aq": _pool(out.action_query_features, self.cfg.pooling)}

    def _parts(self) -> tuple[str, ...]:
        return {"concat": ("raw", "aq"), "raw_only": ("raw",), "aq_only": ("aq",)}[self.cfg.anchor_type]

    def step(self, micro_batches: list[dict]) -> StepRecord:
        cfg = self.cfg
        g = len(micro_batches)
        anchors = [self._anchor(b) for b in micro_batches]
        if cfg.normalize_parts and self.scale is None:
            self.scale = {}
            for part in ("raw", "aq"):
                total = sum(float(a[part].double().pow(2).sum()) for a in anchors)
                count = sum(a[part].numel() for a in anchors)
                self.scale[part] = max(math.sqrt(total / count), 1e-6)
        g_act: dict[str, torch.Tensor | None] = {n: None for n, _ in self.named}
        g_ret: dict[str, torch.Tensor | None] = {n: None for n, _ in self.named}
        params = [p for _, p in self.named]
        loss_total, ret_total = 0.0, 0.0
        self.model.train()
        for batch, anchor in zip(micro_batches, anchors):
            with self._autocast():
                out = self.model(**{k: batch[k] for k in MODEL_KEYS}, actions=batch["actions"],
                                 output_craft_features=True, craft_layer_idx=cfg.layer)
            current = {"raw": _pool(out.raw_latent_features, cfg.pooling),
                       "aq": _pool(out.action_query_features, cfg.pooling)}
            errors = []
            for part in self._parts():
                s = self.scale[part] if cfg.normalize_parts else 1.0
                errors.append(((current[part] - anchor[part]) / s).pow(2))
            l_ret = torch.cat(errors, dim=-1).mean() / g
            l_act = out.loss.float() / g
            loss_total += float(l_act.detach())
            ret_total += float(l_ret.detach())
            ret_grads = torch.autograd.grad(l_ret, params, retain_graph=True, allow_unused=True)
            act_grads = torch.autograd.grad(l_act, params, allow_unused=True)
            for (name, _), ga, gr in zip(self.named, act_grads, ret_grads):
                if ga is not None:
                    g_act[name] = ga.double() if g_act[name] is None else g_act[name] + ga.double()
                if gr is not None:
                    g_ret[name] = gr.double() if g_ret[name] is None else g_ret[name] + gr.double()

        # ---- statistics of the raw gradients ----
        both = [n for n, _ in self.named if g_act[n] is not None and g_ret[n] is not None]
        dots = {n: float((g_act[n] * g_ret[n]).sum()) for n in both}
        act_sq = sum(float(a.pow(2).sum()) for a in g_act.values() if a is not None)
        ret_sq = sum(float(r.pow(2).sum()) for r in g_ret.values() if r is not None)
        dot_total = sum(dots.values())
        cosine = dot_total / math.sqrt(act_sq * ret_sq) if act_sq > 0 and ret_sq > 0 else 0.0
        num_conflicting = sum(d < 0 for d in dots.values())

        # ---- projection (only g_act changes) ----
        projected = {n: (None if a is None else a.clone()) for n, a in g_act.items()}
        if cfg.enable_projection and not cfg.monitor_only:
            if cfg.granularity == "tensor":
                for n in both:
                    if dots[n] < 0:
                        projected[n] = g_act[n] - dots[n] / float(g_ret[n].pow(2).sum()) * g_ret[n]
            elif dot_total < 0:
                coeff = dot_total / ret_sq
                for n, r in g_ret.items():
                    if r is not None:
                        base = projected[n] if projected[n] is not None else torch.zeros_like(r)
                        projected[n] = base - coeff * r
        proj_sq = sum(float(a.pow(2).sum()) for a in projected.values() if a is not None)
        energy = 1.0 - proj_sq / act_sq if act_sq > 0 and cfg.enable_projection else 0.0

        # ---- combination, norm, clipping ----
        final: dict[str, torch.Tensor] = {}
        for n, _ in self.named:
            a, r = projected[n], g_ret[n]
            if cfg.monitor_only:
                r = None
            if a is None and r is None:
                continue
            final[n] = (a if a is not None else 0.0) + (self.lam * r if r is not None else 0.0)
        norm = math.sqrt(sum(float(v.pow(2).sum()) for v in final.values()))
        if cfg.max_grad_norm is not None:
            clip = min(1.0, cfg.max_grad_norm / (norm + 1e-6))
            final = {n: v * clip for n, v in final.items()}

        # ---- AdamW (torch.optim.AdamW's update, written out) ----
        self.t += 1
        b1, b2 = cfg.betas
        with torch.no_grad():
            for n, p in self.named:
                if n not in final:
                    continue
                grad = final[n]
                m = self.exp_avg.get(n, torch.zeros_like(grad))
                v = self.exp_avg_sq.get(n, torch.zeros_like(grad))
                m = b1 * m + (1 - b1) * grad
                v = b2 * v + (1 - b2) * grad * grad
                self.exp_avg[n], self.exp_avg_sq[n] = m, v
                value = p.detach().double() * (1 - cfg.lr * cfg.weight_decay)
                denom = (v / (1 - b2 ** self.t)).sqrt() + cfg.adam_eps
                value = value - cfg.lr / (1 - b1 ** self.t) * m / denom
                p.copy_(value.to(p.dtype))

        # ---- dual ascent on the step's mean retention loss ----
        if cfg.enable_dual and not cfg.monitor_only:
            self.lam = min(max(self.lam + cfg.dual_lr * (ret_total - cfg.budget), 0.0), cfg.lambda_max)
        return StepRecord(grads=final, loss=loss_total, retention_loss=ret_total, lam_after=self.lam,
                          grad_norm=norm, num_conflicting=num_conflicting, num_both=len(both), cosine=cosine,
                          energy_removed=energy)
