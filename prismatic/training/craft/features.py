"""The bridge-condition features Φ and the retention loss L_ret (CRAFT_SPEC.md, "Features Φ", "Losses").

    C_R  = raw_latent_features     (B, P, D)  LLM layer m at the vision-patch positions
    C_AQ = action_query_features   (B, Q, D)  last (normed) layer at the action-query positions
    pooled over tokens -> (B, D) each;  Φ = [C_R ‖ C_AQ] (B, 2D) | C_R (B, D) | C_AQ (B, D)
    L_ret = mean over batch and feature dims of (Φ(θ; x) - Φ(θ0; x))²

Pooling and the loss run in fp32 whatever the autocast dtype: a bf16 mean over hundreds of tokens, or
a bf16 squared difference of two nearby features, loses most of the signal L_ret is meant to measure.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from prismatic.training.craft.config import ANCHOR_TYPES, POOLINGS

# Part names, in concat order; also the keys of `RetentionLoss.part_mse`.
PARTS = ("raw", "aq")
# Parts each anchor type uses.
PARTS_BY_ANCHOR_TYPE = {"concat": ("raw", "aq"), "raw_only": ("raw",), "aq_only": ("aq",)}
# Floor on the anchor RMS used by per-part normalisation (an all-zero anchor part would divide by zero).
RMS_FLOOR = 1e-6


class PooledFeatures(NamedTuple):
    """Token-pooled bridge conditions, fp32. A part may be None when the anchor type does not use it."""

    raw: Tensor | None  # (B, D) pooled C_R
    aq: Tensor | None  # (B, D) pooled C_AQ

    def part(self, name: str) -> Tensor | None:
        return self.raw if name == "raw" else self.aq


@dataclass
class RetentionLoss:
    loss: Tensor  # scalar fp32 L_ret, differentiable w.r.t. the current features
    part_mse: dict[str, Tensor]  # detached per-part MSE (as it enters the loss), for logging; keys ⊆ PARTS


def pool_tokens(tokens: Tensor, pooling: str) -> Tensor:
    """(B, T, D) -> (B, D) fp32, mean or max over the token axis."""
    if tokens.dim() != 3:
        raise ValueError(f"expected token features of shape (B, T, D), got {tuple(tokens.shape)}")
    if tokens.shape[1] == 0:
        raise ValueError("cannot pool over zero tokens")
    tokens = tokens.float()
    if pooling == "mean":
        return tokens.mean(dim=1)
    if pooling == "max":
        return tokens.amax(dim=1)
    raise ValueError(f"unknown pooling {pooling!r}; choose one of {POOLINGS}")


def pool_features(raw_tokens: Tensor | None, aq_tokens: Tensor | None, pooling: str) -> PooledFeatures:
    """Pool both token-level parts (either may be None) to (B, D) each."""
    raw = None if raw_tokens is None else pool_tokens(raw_tokens, pooling)
    aq = None if aq_tokens is None else pool_tokens(aq_tokens, pooling)
    if raw is not None and aq is not None and raw.shape != aq.shape:
        raise ValueError(f"raw and action-query features pool to different shapes: {tuple(raw.shape)} vs "
                         f"{tuple(aq.shape)}")
    return PooledFeatures(raw=raw, aq=aq)


def _required_parts(anchor_type: str) -> tuple[str, ...]:
    if anchor_type not in PARTS_BY_ANCHOR_TYPE:
        raise ValueError(f"unknown anchor type {anchor_type!r}; choose one of {ANCHOR_TYPES}")
    return PARTS_BY_ANCHOR_TYPE[anchor_type]


def select_features(pooled: PooledFeatures, anchor_type: str) -> Tensor:
    """Φ from pooled parts: (B, 2D) for concat (C_R first), (B, D) otherwise."""
    parts = []
    for name in _required_parts(anchor_type):
        part = pooled.part(name)
        if part is None:
            raise ValueError(f"anchor type {anchor_type!r} needs the {name!r} features, which are missing")
        parts.append(part)
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)


def build_features(raw: Tensor | None, aq: Tensor | None, anchor_type: str, pooling: str) -> Tensor:
    """Φ from token-level features: raw (B, P, D), aq (B, Q, D) -> (B, 2D) | (B, D), fp32."""
    needed = _required_parts(anchor_type)
    return select_features(
        pool_features(raw if "raw" in needed else None, aq if "aq" in needed else None, pooling), anchor_type
    )


def part_sums_of_squares(anchor: PooledFeatures) -> dict[str, tuple[Tensor, int]]:
    """Per part present: (Σ x² over (B, D) in fp32, number of elements) of the anchor features.

    Summed over the micro-batches of the first step and all-reduced across ranks, these give the fixed
    per-part scale of `--craft_normalize_parts` (`part_scales_from_sums`)."""
    out = {}
    for name in PARTS:
        part = anchor.part(name)
        if part is not None:
            out[name] = (part.detach().float().pow(2).sum(), part.numel())
    return out


def part_scales_from_sums(sum_sq: Tensor, counts: Sequence[int]) -> Tensor:
    """RMS per part from summed squares (P,) and element counts: sqrt(Σx² / n), floored at RMS_FLOOR."""
    n = torch.tensor([float(c) for c in counts], dtype=sum_sq.dtype, device=sum_sq.device)
    return (sum_sq / n).sqrt().clamp_min(RMS_FLOOR)


def retention_loss(
    current: PooledFeatures,
    anchor: PooledFeatures,
    anchor_type: str,
    part_scale: Mapping[str, Tensor] | None = None,
) -> RetentionLoss:
    """L_ret = MSE(Φ(θ), Φ(θ0)), mean over batch and feature dims (so concat = mean of the two part MSEs).

    `part_scale` (per-part normalisation, `--craft_normalize_parts`): each part of both the current and the
    anchor features is divided by the given constant, the anchor part's RMS at θ0 measured ONCE (on the first
    optimizer step's global batch, then fixed and checkpointed: a per-micro-batch RMS would make L_ret and λ
    depend on the micro-batch size and world size). `part_mse` holds every part present in both inputs,
    including one the anchor type leaves out of the loss (useful to watch the ablations), each as it would
    enter the loss.
    """
    used = _required_parts(anchor_type)
    part_mse: dict[str, Tensor] = {}
    squared_errors: list[Tensor] = []
    for name in PARTS:
        cur, ref = current.part(name), anchor.part(name)
        if cur is None or ref is None:
            if name in used:
                which = "current" if cur is None else "anchor"
                raise ValueError(f"anchor type {anchor_type!r} needs {name!r} features; the {which} ones are missing")
            continue
        if cur.shape != ref.shape:
            raise ValueError(f"{name!r} features: current {tuple(cur.shape)} vs anchor {tuple(ref.shape)}")
        cur, ref = cur.float(), ref.detach().float()
        if part_scale is not None:
            if name not in part_scale:
                raise ValueError(f"per-part normalisation has no scale for the {name!r} features")
            scale = part_scale[name].detach().float()
            cur, ref = cur / scale, ref / scale
        sq = (cur - ref).pow(2)
        part_mse[name] = sq.detach().mean()
        if name in used:
            squared_errors.append(sq)
    # Mean over the concatenated feature dim = mean over all squared errors (parts have equal width D).
    loss = squared_errors[0].mean() if len(squared_errors) == 1 else torch.cat(squared_errors, dim=-1).mean()
    return RetentionLoss(loss=loss, part_mse=part_mse)
