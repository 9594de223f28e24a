"""CRaFT inside the training step: the `.grad` plumbing around the pure pieces.

`train_step` (prismatic/training/step.py) calls, in its clearly marked CRaFT blocks:

    per step (start)  begin_step(micro_batches)           first step with --craft_normalize_parts: the
                                                           per-part scale of Φ at θ0 (global batch, fixed)
    per micro-batch   retention_loss(out, batch)          Φ(θ; x) from the step's forward vs Φ(θ0; x)
                      accumulate_retention_grad(L_ret)     g_ret += ∇L_ret (autograd.grad, graph kept for L_act)
    per step          retention_grads()                    joins the one coalesced all-reduce with g_act
                      combine(g_act)                       g = project(g_act, g_ret) + λ g_ret, IN PLACE in the
                                                           g_act buffers (projection.project_and_combine_)
                      after_step(L̄_ret, host stats)        dual ascent on λ (dual.py) + metrics

The pure math (features.py, projection.py, dual.py) never touches `.grad`; θ0 lives in anchor.py.
`monitor_only` computes and logs L_ret for a baseline run without constraining it (used to measure the
representation drift that plain fine-tuning reaches).

Memory: g_ret lives in buffers owned here (never in tensors returned by autograd, which may alias each
other or be expanded views); `combine` overwrites g_act (the `.grad` tensors) with the result and consumes
g_ret, so the step holds g_act + g_ret + one scratch chunk at its peak.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from prismatic.models.config import VLAConfig
from prismatic.training.craft.anchor import AnchorModel
from prismatic.training.craft.config import CraftConfig
from prismatic.training.craft.dual import ConflictRatioMeter, DualState
from prismatic.training.craft.features import (
    PARTS,
    PooledFeatures,
    part_scales_from_sums,
    part_sums_of_squares,
    pool_features,
    retention_loss,
)
from prismatic.training.craft.projection import ProjectionStats, project_and_combine_

log = logging.getLogger(__name__)


class CraftRuntime:
    def __init__(self, config: CraftConfig, anchor: AnchorModel, model: nn.Module, layer_idx: int,
                 monitor_only: bool = False) -> None:
        self.config = config
        self.anchor = anchor
        self.model = model
        self.layer_idx = layer_idx
        self.monitor_only = monitor_only
        # λ lives on the host (float64): the dual update then needs no device read, and combine() takes it
        # as a plain number.
        self.dual = DualState.from_config(config, device="cpu")
        self.meter = ConflictRatioMeter()
        self.window_conflict_ratio = 0.0  # conflict ratio of the last completed log window
        # --craft_normalize_parts: RMS of each anchor part at θ0 over the FIRST optimizer step's global batch
        # (PARTS order), fixed for the run and checkpointed. None until measured.
        self.part_scale: Tensor | None = None
        self._g_ret: list[Tensor | None] | None = None
        self._pending_anchor: list[PooledFeatures] = []  # anchor features computed by begin_step, in order
        self._num_stats = len(ProjectionStats.field_names())

    @classmethod
    def from_initial_model(cls, model: nn.Module, config: CraftConfig, vla_config: VLAConfig,
                           params: list[nn.Parameter], monitor_only: bool = False) -> CraftRuntime:
        """Snapshot θ0 from `model` as it is now (call before any step and before restoring a checkpoint)."""
        layer = config.resolve_anchor_layer(vla_config.llm.num_hidden_layers)
        anchor = AnchorModel.from_initial_state(model, layer, pooling=config.pooling, use_cache=config.anchor_cache)
        return cls(config, anchor, model, layer, monitor_only=monitor_only)

    # ---- per step (start) ----
    def begin_step(self, micro_batches: Sequence[Mapping[str, Any]], all_reduce_mean) -> None:
        """First step with --craft_normalize_parts: measure the per-part anchor RMS on the step's global batch.

        The anchor features of every micro-batch are computed here (under the caller's autocast) and reused by
        `retention_loss`, so this costs no extra forward. `all_reduce_mean(tensors)` averages across ranks, so
        the scale is the same for any world size and micro-batch split of the same global batch.
        """
        self._pending_anchor = []
        if not self.config.normalize_parts or self.part_scale is not None:
            return
        anchors = [self._anchor_features(batch) for batch in micro_batches]
        sums, counts = [], []
        for name in PARTS:
            per_batch = [part_sums_of_squares(a)[name] for a in anchors]
            sums.append(torch.stack([s for s, _ in per_batch]).sum())
            counts.append(sum(c for _, c in per_batch))
        # [Σx² raw, Σx² aq, n raw, n aq]: the mean over ranks of the sums has the global ratio.
        stats = torch.cat([torch.stack(sums).double(),
                           torch.tensor([float(c) for c in counts], dtype=torch.float64, device=sums[0].device)])
        all_reduce_mean([stats])
        self.part_scale = part_scales_from_sums(stats[: len(PARTS)], stats[len(PARTS):].tolist()).float()
        self._pending_anchor = anchors
        log.info("CRaFT per-part normalisation: anchor RMS at θ0 %s (fixed for the run)",
                 dict(zip(PARTS, self.part_scale.tolist())))

    def _anchor_features(self, batch: Mapping[str, Any]) -> PooledFeatures:
        return self.anchor.anchor_features(self.model, batch, batch.get("sample_keys"))

    # ---- per micro-batch ----
    def retention_loss(self, out: Any, batch: Mapping[str, Any]) -> tuple[Tensor, Tensor]:
        """L_ret = MSE(Φ(θ; x), Φ(θ0; x)) for this micro-batch (scalar fp32, differentiable in θ), and the
        detached per-part MSEs [raw, action queries] (2,) for logging (each part is computed even when the
        anchor type leaves it out of the loss, so ablations show both)."""
        current = pool_features(out.raw_latent_features, out.action_query_features, self.config.pooling)
        anchor = self._pending_anchor.pop(0) if self._pending_anchor else self._anchor_features(batch)
        scale = None
        if self.config.normalize_parts:
            if self.part_scale is None:
                raise RuntimeError("--craft_normalize_parts: begin_step() must run before the first retention loss")
            device = next(t.device for t in current if t is not None)
            if self.part_scale.device != device:  # restored from a checkpoint on the host: move once
                self.part_scale = self.part_scale.to(device)
            scale = dict(zip(PARTS, self.part_scale.unbind()))
        ret = retention_loss(current, anchor, self.config.anchor_type, scale)
        zero = torch.zeros((), device=ret.loss.device)
        parts = torch.stack([ret.part_mse.get("raw", zero), ret.part_mse.get("aq", zero)])
        return ret.loss, parts

    def accumulate_retention_grad(self, loss_ret: Tensor, params: list[nn.Parameter]) -> None:
        """g_ret += ∇L_ret over `params`, leaving `.grad` (g_act) untouched; keeps the graph for L_act.

        The sums live in buffers owned here: autograd may return one tensor for two leaves, or an expanded
        view, so adding into its outputs in place could corrupt another gradient (or fail). The first
        micro-batch copies each output and drops it at once (peak: g_ret + one tensor)."""
        if self.monitor_only:
            return
        grads = list(torch.autograd.grad(loss_ret, params, retain_graph=True, allow_unused=True))
        if self._g_ret is None:
            owned: list[Tensor | None] = []
            for i in range(len(grads)):
                g, grads[i] = grads[i], None
                owned.append(None if g is None else g.detach().clone(memory_format=torch.contiguous_format))
            self._g_ret = owned
            return
        have = [i for i, g in enumerate(grads) if g is not None]
        if any(self._g_ret[i] is None for i in have) or sum(g is not None for g in self._g_ret) != len(have):
            raise RuntimeError("the set of parameters receiving a retention gradient changed between micro-batches")
        torch._foreach_add_([self._g_ret[i] for i in have], [grads[i] for i in have])

    # ---- per optimizer step ----
    def retention_grads(self) -> list[Tensor]:
        """The accumulated g_ret tensors, for the step's all-reduce (averaged in place)."""
        return [] if self._g_ret is None else [g for g in self._g_ret if g is not None]

    def retention_grad_present(self) -> list[bool]:
        """Per parameter: whether it received a retention gradient this step (for the cross-rank layout check)."""
        return [] if self._g_ret is None else [g is not None for g in self._g_ret]

    def combine(self, g_act: list[Tensor | None]) -> tuple[list[Tensor | None], Tensor]:
        """g = g_act' + λ g_ret (g_act' projected unless disabled) and the projection statistics (device).

        In place: fp32 g_act tensors (the `.grad` buffers) receive g; g_ret is consumed."""
        if self.monitor_only:
            return g_act, torch.zeros(0)
        g_ret, self._g_ret = self._g_ret, None
        if g_ret is None:
            raise RuntimeError("CRaFT combine() called without a retention gradient for this step")
        grads, stats = project_and_combine_(g_act, g_ret, float(self.dual.lam), self.config.projection_eps,
                                            self.config.projection_granularity,
                                            project=self.config.enable_projection)
        return grads, stats.as_tensor()

    def after_step(self, mean_retention_loss: float, part_mse: list[float], host_stats: list[float]) -> dict[str, float]:
        """Dual ascent with the step's global mean L̄_ret and the step's CRaFT metrics."""
        metrics = {"retention_loss": mean_retention_loss, "retention_mse_raw": part_mse[0],
                   "retention_mse_aq": part_mse[1]}
        if self.monitor_only:
            return metrics
        stats = ProjectionStats.to_host_dict(host_stats[: self._num_stats])
        self.dual.update(mean_retention_loss)
        self.meter.update(int(stats["num_conflicting"]), int(stats["num_both"]))
        if self.dual.num_updates % self.config.log_freq == 0:
            self.window_conflict_ratio = self.meter.compute_and_reset()
        metrics.update({
            "lambda": float(self.dual.lam),
            "conflict_ratio": self.window_conflict_ratio,
            "grad_cosine": stats["cosine"],
            "projection_energy_removed": stats["energy_removed"],
        })
        return metrics

    # ---- checkpointing ----
    def state_dict(self) -> dict[str, Any]:
        return {"dual": self.dual.state_dict(), "meter": self.meter.state_dict(),
                "window_conflict_ratio": self.window_conflict_ratio, "anchor": self.anchor.state_dict(),
                "part_scale": None if self.part_scale is None else [float(v) for v in self.part_scale.tolist()]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore λ, the metric window, θ0 and the per-part scale exactly as saved (θ0 is never
        re-snapshotted on resume; the frozen base weights must match the checkpoint's fingerprint)."""
        if state is None:
            raise ValueError("the checkpoint has no CRaFT state; it was written by a run without --use_craft")
        self.dual.load_state_dict(state["dual"])
        self.meter.load_state_dict(state["meter"])
        self.window_conflict_ratio = float(state["window_conflict_ratio"])
        self.anchor = AnchorModel.from_state_dict(self.model, state["anchor"], self.layer_idx,
                                                  pooling=self.config.pooling, use_cache=self.config.anchor_cache)
        scale = state.get("part_scale")
        if self.config.normalize_parts and scale is None and self.dual.num_updates > 0:
            raise ValueError("--craft_normalize_parts True, but the checkpoint has no per-part scale (it was written "
                             "by a version that measured it per micro-batch); start a new run")
        self.part_scale = None if scale is None else torch.tensor(scale, dtype=torch.float32)
