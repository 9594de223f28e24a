"""Conflict-aware gradient projection (A-GEM's one-sided rule) and the CRaFT gradient combination.

Pure tensor functions over lists of per-parameter gradients (no modules, no `.grad` access):

    project_conflicting:  g_act,i <- g_act,i - <g_act,i, g_ret,i> / (‖g_ret,i‖² + δ) · g_ret,i   if the dot < 0
    combine:              g_i = g_act,i' + λ · g_ret,i

Why the textbook formula is not used as written: early in fine-tuning g_ret is ~0 (Φ(θ) ≈ Φ(θ0)), and
in bf16 runs ‖g_ret,i‖² easily drops to 1e-12 … 1e-24. Once ‖r‖² << δ the coefficient dot / (‖r‖² + δ)
becomes ≈ dot / δ, i.e. a factor ‖r‖² / δ too small: the projection silently does nothing and the
"projected" gradient still conflicts. (In fp32, ‖r‖² itself underflows to 0 once the elements of r are
below ~1e-19.) Here every g_ret,i is first rescaled by a power of two s_i so that max |r̂_i| ∈ [1, 2)
(exact in floating point), and the rule is applied to r̂_i:

    a' = a - <a, r̂> / (‖r̂‖² + δ) · r̂            (identical to the textbook rule with δ·s² in place of δ)

Since ‖r̂‖² >= 1, δ only guards a zero division (r ≡ 0) and perturbs the coefficient by at most a relative
δ: after projection <a', r> >= -(δ + O(fp32 eps)) ‖a‖ ‖r‖ whatever the scale of r (measured worst case
over random mixed-scale fp32/bf16 tensors: 5e-8). Products are formed in fp32 from (possibly bf16)
inputs and the dot products and norms are accumulated in float64 (a plain fp32 sum over a large tensor
is off by up to ~n·eps, enough to break the guarantee). Outputs are fp32: rounding the projected
gradient back to bf16 would re-introduce a conflict of ~4e-3 ‖a‖ ‖r‖; the caller casts when it writes
`.grad`. Temporary memory: a few fp32 copies (r̂, products, outputs) of the gradients that received both.

Everything is batched over tensors with `torch._foreach_*` and stacked per-tensor scalars, with no
host-side read of device values: the number of host syncs does not depend on the number of parameters
(here: zero; the caller reads `ProjectionStats.as_tensor()` together with its other metrics).

Parameters that received only one of the two gradients (None for the other): the missing gradient is
treated as zero, so nothing is projected and the tensor does not count as "received both".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import torch
from torch import Tensor

from prismatic.training.craft.config import GRANULARITIES


@dataclass
class ProjectionStats:
    """Per-step projection statistics, all 0-dim device tensors (read them with one host sync)."""

    num_conflicting: Tensor  # tensors with <g_act,i, g_ret,i> < 0 among those that received both (any granularity)
    num_both: Tensor  # tensors that received both gradients (non-empty)
    cosine: Tensor  # global cosine(g_act, g_ret) over all parameters; 0 if either gradient is zero
    energy_removed: Tensor  # 1 - ‖g_act'‖² / ‖g_act‖² (global); 0 if ‖g_act‖ = 0
    act_norm: Tensor  # ‖g_act‖ (global, before projection)
    projected_act_norm: Tensor  # ‖g_act'‖ (global)
    ret_norm: Tensor  # ‖g_ret‖ (global)

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    def as_tensor(self) -> Tensor:
        """All fields stacked into one fp32 vector, in `field_names()` order."""
        return torch.stack([getattr(self, name).float().reshape(()) for name in self.field_names()])

    @classmethod
    def to_host_dict(cls, values: Sequence[float]) -> dict[str, float]:
        """Name the host-side values of `as_tensor()` (e.g. `as_tensor().tolist()`, or a slice of a larger read)."""
        names = cls.field_names()
        if len(values) != len(names):
            raise ValueError(f"expected {len(names)} projection statistics, got {len(values)}")
        return {name: float(v) for name, v in zip(names, values)}


def _check_inputs(g_act: Sequence[Tensor | None], g_ret: Sequence[Tensor | None], eps: float, granularity: str):
    if len(g_act) != len(g_ret):
        raise ValueError(f"g_act and g_ret must have one entry per parameter: {len(g_act)} vs {len(g_ret)}")
    if not eps > 0:
        raise ValueError(f"projection eps (δ) must be > 0, got {eps}")
    if granularity not in GRANULARITIES:
        raise ValueError(f"unknown projection granularity {granularity!r}; choose one of {GRANULARITIES}")
    devices = set()
    for i, (a, r) in enumerate(zip(g_act, g_ret)):
        if a is not None and r is not None and a.shape != r.shape:
            raise ValueError(f"gradient {i}: g_act shape {tuple(a.shape)} != g_ret shape {tuple(r.shape)}")
        devices.update(t.device for t in (a, r) if t is not None)
    if len(devices) > 1:
        raise ValueError(f"all gradients must live on one device, got {sorted(map(str, devices))}")
    return next(iter(devices)) if devices else torch.device("cpu")


def _stack(values: list[Tensor], device: torch.device) -> Tensor:
    return torch.stack(values) if values else torch.zeros(0, device=device)


def _power_of_two_scales(tensors: list[Tensor], device: torch.device) -> tuple[Tensor, Tensor]:
    """Per tensor: s = 2^(e-1) with max|t| ∈ [s, 2s) (exact rescaling), and whether the tensor is non-zero.

    Returns (scales (k,), nonzero (k,) bool). All-zero (or denormal-tiny) tensors get scale 1 so that the
    division stays finite; their rescaled copy is ~0 and contributes nothing.
    """
    if not tensors:
        return torch.zeros(0, device=device), torch.zeros(0, dtype=torch.bool, device=device)
    amax = torch.stack(list(torch._foreach_norm(tensors, float("inf"))))  # exact: a max, no rounding
    _, exponent = torch.frexp(amax)
    scales = torch.ldexp(torch.ones_like(amax), exponent - 1)
    nonzero = (amax > 0) & (scales > 0)
    return torch.where(nonzero, scales, torch.ones_like(scales)), nonzero


def _norms64(tensors: list[Tensor], ord: float, device: torch.device) -> Tensor:
    """Per-tensor norms accumulated in float64, stacked to (k,) float64.

    fp32 accumulation is not enough for the projection guarantee: a sequential fp32 sum over n elements
    has a relative error up to ~n·eps (3e-7 already at n = 3000 on CPU), and an error δc in the projection
    coefficient leaves a residual conflict of δc·|<a, r>|. `_foreach_norm(dtype=float64)` accumulates in
    float64 on CPU and CUDA alike (the elements themselves stay fp32 in memory).
    """
    if not tensors:
        return torch.zeros(0, dtype=torch.float64, device=device)
    return torch.stack(list(torch._foreach_norm(tensors, ord, dtype=torch.float64)))


def _signed_sums(products: list[Tensor], device: torch.device) -> Tensor:
    """Per-tensor sum of elements, batched: Σp = ‖p‖₁ - 2 ‖min(p, 0)‖₁ (foreach has no plain sum).

    Accumulated in float64: the absolute error is O(fp32 eps · Σ|p|), from forming the products only.
    """
    negative = torch._foreach_clamp_max(products, 0.0)
    return _norms64(products, 1, device) - 2.0 * _norms64(negative, 1, device)


def _sum_sq_norms(tensors: list[Tensor], device: torch.device) -> Tensor:
    """Σ ‖t‖² over the list, float64 0-dim."""
    return _norms64(tensors, 2, device).pow(2).sum()


def _project(
    g_act: Sequence[Tensor | None],
    g_ret: Sequence[Tensor | None],
    eps: float,
    granularity: str,
    apply: bool,
) -> tuple[list[Tensor | None], ProjectionStats]:
    device = _check_inputs(g_act, g_ret, eps, granularity)
    n = len(g_act)
    act_idx = [i for i in range(n) if g_act[i] is not None]
    ret_idx = [i for i in range(n) if g_ret[i] is not None and g_ret[i].numel() > 0]
    ret_set = set(ret_idx)
    both_idx = [i for i in act_idx if i in ret_set]
    both_pos_in_ret = {i: k for k, i in enumerate(ret_idx)}

    # fp32 views/copies (`.float()` is a no-op for fp32 inputs; nothing below writes into them).
    act32 = {i: g_act[i].float() for i in act_idx}
    ret32 = [g_ret[i].float() for i in ret_idx]

    # ---- rescaled g_ret (exact power-of-two scaling) and its squared norms ----
    scales, nonzero = _power_of_two_scales(ret32, device)  # (R,)
    ret_hat = torch._foreach_div(ret32, list(scales.unbind())) if ret32 else []
    rr_hat = _norms64(ret_hat, 2, device).pow(2)  # (R,) float64, >= 1 for non-zero tensors
    # Global scale: the largest non-zero per-tensor scale; w_i = s_i / S (powers of two, exact).
    scales64 = scales.double()
    nz_scales = torch.where(nonzero, scales64, torch.zeros_like(scales64))
    global_scale = nz_scales.max() if nz_scales.numel() else torch.ones((), dtype=torch.float64, device=device)
    global_scale = torch.where(global_scale > 0, global_scale, torch.ones_like(global_scale))
    weights = nz_scales / global_scale  # (R,); 0 for all-zero tensors
    ret_sq_rel = (weights.pow(2) * rr_hat).sum()  # ‖g_ret‖² / S²

    # ---- dot products of the tensors that received both ----
    # Subsets are picked with host-side indices over unbound 0-dim views (an index tensor built from a
    # Python list would be a host-to-device copy, i.e. a stream sync on CUDA).
    pos = [both_pos_in_ret[i] for i in both_idx]
    both_hat = [ret_hat[k] for k in pos]
    both_act = [act32[i] for i in both_idx]
    dot_hat = (  # (K,) float64 <a_i, r̂_i>
        _signed_sums(torch._foreach_mul(both_act, both_hat), device) if both_idx
        else torch.zeros(0, dtype=torch.float64, device=device)
    )
    rr_list, w_list = rr_hat.unbind(), weights.unbind()
    rr_both = _stack([rr_list[k] for k in pos], device).double()  # (K,) ‖r̂_i‖², float64
    w_both = _stack([w_list[k] for k in pos], device).double()  # (K,) s_i / S, float64
    conflicting = dot_hat < 0  # (K,)
    dot_rel = (w_both * dot_hat).sum()  # <g_act, g_ret> / S (global)

    # ---- coefficients c_i (in r̂_i units): a_i' = a_i - c_i r̂_i ----
    if not apply or not both_idx:
        coeff = torch.zeros_like(dot_hat)
    elif granularity == "tensor":
        coeff = torch.where(conflicting, dot_hat / (rr_both + eps), torch.zeros_like(dot_hat))
    else:  # global: one A-GEM step on the concatenated gradient, written per tensor (c_i = ĉ · s_i / S)
        c_global = torch.where(dot_rel < 0, dot_rel / (ret_sq_rel + eps), torch.zeros_like(dot_rel))
        coeff = c_global * w_both

    # The coefficient is rounded to fp32 once; the update itself is one fp32 multiply-subtract. (A list of
    # 0-dim tensors as the second operand takes foreach's per-tensor path: one launch per tensor, no sync.)
    coeff32 = coeff.float()
    if both_idx:
        projected_both = torch._foreach_sub(both_act, torch._foreach_mul(both_hat, list(coeff32.unbind())))
    else:
        projected_both = []
    out: list[Tensor | None] = [None] * n
    for i in act_idx:
        out[i] = act32[i]
    for k, i in enumerate(both_idx):
        out[i] = projected_both[k]

    # ---- statistics (global over all parameters) ----
    act_only = [act32[i] for i in act_idx if i not in ret_set]
    act_only_sq = _sum_sq_norms(act_only, device)
    aa_both = _norms64(both_act, 2, device).pow(2)  # (K,) ‖a_i‖²
    # ‖a_i - c r̂_i‖² = ‖a_i‖² - 2 c <a_i, r̂_i> + c² ‖r̂_i‖² in float64: saves a pass over the gradients.
    c64 = coeff32.double()
    proj_both_sq = (aa_both - 2.0 * c64 * dot_hat + c64.pow(2) * rr_both).clamp_min(0.0)
    act_sq = aa_both.sum() + act_only_sq
    proj_sq = proj_both_sq.sum() + act_only_sq
    act_norm = act_sq.sqrt()
    ret_norm_rel = ret_sq_rel.sqrt()
    denom = act_norm * ret_norm_rel
    cosine = torch.where(denom > 0, dot_rel / torch.where(denom > 0, denom, torch.ones_like(denom)),
                         torch.zeros_like(denom)).clamp(-1.0, 1.0)
    energy = torch.where(act_sq > 0, 1.0 - proj_sq / torch.where(act_sq > 0, act_sq, torch.ones_like(act_sq)),
                         torch.zeros_like(act_sq))
    stats = ProjectionStats(
        num_conflicting=conflicting.sum(),
        num_both=torch.full((), len(both_idx), dtype=torch.long, device=device),  # a fill, not a host copy
        cosine=cosine.float(),
        energy_removed=energy.float(),
        act_norm=act_norm.float(),
        projected_act_norm=proj_sq.sqrt().float(),
        ret_norm=(ret_norm_rel * global_scale).float(),
    )
    return out, stats


def project_conflicting(
    g_act: Sequence[Tensor | None],
    g_ret: Sequence[Tensor | None],
    eps: float = 1e-8,
    granularity: str = "tensor",
) -> tuple[list[Tensor | None], ProjectionStats]:
    """A-GEM one-sided projection of g_act against g_ret, per tensor (default) or on the global gradient.

    Args:
        g_act: action-loss gradient per parameter (None = the parameter got none).
        g_ret: retention-loss gradient per parameter, same order and shapes (None = none).
        eps: δ, relative guard of the division (see module docstring).
        granularity: "tensor" (project each tensor whose dot is negative) or "global" (one projection of
            the concatenated gradient when the global dot is negative).
    Returns:
        (g_act' as fp32 tensors, None where g_act was None; ProjectionStats). Inputs are never modified.
    """
    return _project(g_act, g_ret, eps, granularity, apply=True)


def measure_conflicts(
    g_act: Sequence[Tensor | None],
    g_ret: Sequence[Tensor | None],
    granularity: str = "tensor",
) -> ProjectionStats:
    """The statistics of `project_conflicting` without projecting (for `craft_enable_projection False`):
    conflicts, cosine and norms as usual; energy_removed = 0 and projected_act_norm = act_norm."""
    _, stats = _project(g_act, g_ret, 1e-8, granularity, apply=False)
    return stats


def combine(
    g_act: Sequence[Tensor | None], g_ret: Sequence[Tensor | None], lam: float | Tensor
) -> list[Tensor | None]:
    """g_i = g_act,i + λ g_ret,i in fp32 (a missing gradient counts as zero; None if both are missing).

    `lam` may be a Python number or a 0-dim tensor (kept on the gradients' device, so no host sync).
    """
    if len(g_act) != len(g_ret):
        raise ValueError(f"g_act and g_ret must have one entry per parameter: {len(g_act)} vs {len(g_ret)}")
    n = len(g_act)
    both_idx = [i for i in range(n) if g_act[i] is not None and g_ret[i] is not None]
    for i in both_idx:
        if g_act[i].shape != g_ret[i].shape:
            raise ValueError(f"gradient {i}: g_act shape {tuple(g_act[i].shape)} != g_ret shape "
                             f"{tuple(g_ret[i].shape)}")
    ret_only = [i for i in range(n) if g_act[i] is None and g_ret[i] is not None]
    scaled_idx = both_idx + ret_only
    ret32 = [g_ret[i].float() for i in scaled_idx]
    if isinstance(lam, Tensor):
        if lam.numel() != 1:
            raise ValueError(f"λ must be a scalar, got shape {tuple(lam.shape)}")
        device = ret32[0].device if ret32 else lam.device
        scaled = torch._foreach_mul(ret32, lam.reshape(()).to(device=device, dtype=torch.float32)) if ret32 else []
    else:
        scaled = torch._foreach_mul(ret32, float(lam)) if ret32 else []
    out: list[Tensor | None] = [None if a is None else a.float() for a in g_act]
    summed = torch._foreach_add([out[i] for i in both_idx], scaled[: len(both_idx)]) if both_idx else []
    for k, i in enumerate(both_idx):
        out[i] = summed[k]
    for k, i in enumerate(ret_only):
        out[i] = scaled[len(both_idx) + k]
    return out
