"""Conflict-aware gradient projection (A-GEM's one-sided rule) and the CRaFT gradient combination.

Pure tensor functions over lists of per-parameter gradients (no modules, no `.grad` access):

    project_conflicting:  g_act,i <- g_act,i - <g_act,i, g_ret,i> / (‖g_ret,i‖² + δ) · g_ret,i   if the dot < 0
    combine:              g_i = g_act,i' + λ · g_ret,i
    project_and_combine_: both at once, IN PLACE: g_i = g_act,i + (λ - c_i) · g_ret,i written into g_act,i

The trainer uses `project_and_combine_` (memory: the two gradients + one scratch chunk; see below); the
out-of-place `project_conflicting` / `combine` / `measure_conflicts` run the same code on copies.

Why the textbook formula is not used as written: early in fine-tuning g_ret is ~0 (Φ(θ) ≈ Φ(θ0)), and
in bf16 runs ‖g_ret,i‖² easily drops to 1e-12 … 1e-24. Once ‖r‖² << δ the coefficient dot / (‖r‖² + δ)
becomes ≈ dot / δ, i.e. a factor ‖r‖² / δ too small: the projection silently does nothing and the
"projected" gradient still conflicts. (In fp32, ‖r‖² itself underflows to 0 once the elements of r are
below ~1e-19.) Here every g_ret,i is first rescaled IN PLACE by a power of two s_i so that
max |r̂_i| ∈ [1, 2) (exact in floating point), and the rule is applied to r̂_i:

    a' = a - <a, r̂> / (‖r̂‖² + δ) · r̂            (identical to the textbook rule with δ·s² in place of δ)

Since ‖r̂‖² >= 1, δ only guards a zero division (r ≡ 0) and perturbs the coefficient by at most a relative
δ: after projection <a', r> >= -(δ + O(fp32 eps)) ‖a‖ ‖r‖ whatever the scale of r.

Accumulation without float64: a sequential fp32 sum over n elements is off by up to ~n·eps relative (CPU
BLAS dots and norm kernels accumulate that way: 1e-5 at n = 1e6, 1e-3 at n = 1.6e7), which breaks the
guarantee for large tensors. Every per-tensor sum here is `torch.sum` over an fp32 product written into a
reused scratch chunk of CHUNK_NUMEL elements: torch's fp32 sum is a cascade (pairwise) sum on CPU and a
tree reduction on CUDA, with error ~log(n)·eps, and the chunks (at most a few hundred per tensor) are
summed the same way. Measured worst case of <a', r> / (‖a‖ ‖r‖) over random and strongly conflicting fp32
tensors up to 1.6e7 elements: a few 1e-8. No float64 temporaries; per-tensor scalars (a few hundred
numbers) are combined in float64, which costs nothing.

Memory (`project_and_combine_`): g_act and g_ret are modified in place; the only temporary of gradient
size is one scratch chunk (<= CHUNK_NUMEL fp32 elements). The function consumes g_ret (its tensors end up
holding (λ s_i - c_i) r̂_i; for parameters without g_act they ARE the returned gradient).

Everything is batched over tensors with `torch._foreach_*` and stacked per-tensor scalars where torch has
a batched op, with no host-side read of device values: the number of host syncs does not depend on the
number of parameters (here: zero; the caller reads `ProjectionStats.as_tensor()` together with its other
metrics).

Parameters that received only one of the two gradients (None for the other): the missing gradient is
treated as zero. With per-tensor granularity nothing is projected there and the tensor does not count as
"received both". With global granularity the projection acts on the concatenated vector, so a tensor
with only g_ret gets g_act,i' = -c · g_ret,i (without it, <g_act', g_ret> would stay negative by
c·‖g_ret,i‖²).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import torch
from torch import Tensor

from prismatic.training.craft.config import GRANULARITIES

# Elements per scratch chunk of the fp32 products (16 MB). Bounds the temporary memory; on CUDA it also
# keeps the per-thread serial part of each reduction short.
CHUNK_NUMEL = 1 << 22


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


def _stack(values: list[Tensor], device: torch.device, dtype: torch.dtype = torch.float32) -> Tensor:
    return torch.stack(values).to(dtype) if values else torch.zeros(0, dtype=dtype, device=device)


class _Sums:
    """Accurate fp32 sums of elementwise products through one reused scratch chunk (see module docstring)."""

    def __init__(self, tensors: Sequence[Tensor], device: torch.device) -> None:
        largest = max((t.numel() for t in tensors), default=0)
        self.chunk = max(1, min(largest, CHUNK_NUMEL))
        self.scratch = torch.empty(self.chunk, dtype=torch.float32, device=device)

    def dot(self, x: Tensor, y: Tensor) -> Tensor:
        """Σ x·y (0-dim fp32) for fp32 tensors of equal shape."""
        xf, yf = x.reshape(-1), y.reshape(-1)
        n = xf.numel()
        if n <= self.chunk:
            return torch.mul(xf, yf, out=self.scratch[:n]).sum()
        parts = [torch.mul(xf[s : s + self.chunk], yf[s : s + self.chunk], out=self.scratch[: min(self.chunk, n - s)])
                 .sum() for s in range(0, n, self.chunk)]
        return torch.stack(parts).sum()


def _abs_max(t: Tensor) -> Tensor:
    """max |t| without an |t| temporary (two reductions)."""
    return torch.maximum(t.amax(), t.amin().neg())


def _surgery_(
    act: list[Tensor | None],
    ret: list[Tensor | None],
    lam: float | Tensor,
    eps: float,
    granularity: str,
    apply: bool,
    ret_only_output: bool,
) -> tuple[list[Tensor | None], ProjectionStats]:
    """The shared core. `act` / `ret` are fp32 tensors owned by the caller and modified in place:
    act[i] <- act[i] + (λ s_i - c_i) r̂_i (i received both), ret[i] <- (λ s_i - c_i) r̂_i.

    Returns the final gradient per parameter (act[i] if present, else ret[i] when `ret_only_output`, else
    None) and the statistics. λ = 0 gives the projected g_act' alone.
    """
    device = _check_inputs(act, ret, eps, granularity)
    n = len(act)
    act_idx = [i for i in range(n) if act[i] is not None]
    ret_idx = [i for i in range(n) if ret[i] is not None and ret[i].numel() > 0]
    act_set, ret_set = set(act_idx), set(ret_idx)
    both_idx = [i for i in act_idx if i in ret_set]
    pos_in_ret = {i: k for k, i in enumerate(ret_idx)}
    both_pos = [pos_in_ret[i] for i in both_idx]
    ret_list = [ret[i] for i in ret_idx]
    sums = _Sums([*(act[i] for i in act_idx), *ret_list], device)

    # ---- exact power-of-two rescaling of g_ret, in place: max |r̂_i| ∈ [1, 2) ----
    if ret_list:
        amax = torch.stack([_abs_max(r) for r in ret_list])  # (R,) exact: a max, no rounding
        _, exponent = torch.frexp(amax)
        scales = torch.ldexp(torch.ones_like(amax), exponent - 1)
        nonzero = (amax > 0) & (scales > 0)
        # All-zero (or denormal-tiny) tensors keep scale 1: finite division, ~0 contribution.
        scales = torch.where(nonzero, scales, torch.ones_like(scales))
        torch._foreach_mul_(ret_list, list(torch.reciprocal(scales).unbind()))  # exact: powers of two
    else:
        scales = torch.zeros(0, device=device)
        nonzero = torch.zeros(0, dtype=torch.bool, device=device)

    # ---- per-tensor sums (fp32, accurate), then float64 scalar math ----
    rr = _stack([sums.dot(r, r) for r in ret_list], device, torch.float64)  # (R,) ‖r̂_i‖² >= 1 if non-zero
    aa = _stack([sums.dot(act[i], act[i]) for i in act_idx], device, torch.float64)  # (A,) ‖a_i‖²
    dot = _stack([sums.dot(act[i], ret[i]) for i in both_idx], device, torch.float64)  # (K,) <a_i, r̂_i>
    # Global scale S = the largest per-tensor scale; w_i = s_i / S (powers of two, exact).
    s64 = torch.where(nonzero, scales, torch.zeros_like(scales)).double()
    global_scale = s64.max() if s64.numel() else torch.ones((), dtype=torch.float64, device=device)
    global_scale = torch.where(global_scale > 0, global_scale, torch.ones_like(global_scale))
    w = s64 / global_scale  # (R,); 0 for all-zero tensors
    # Subsets of the (R,) vectors for the "both" tensors, picked with host-side indices over unbound views
    # (an index tensor copied to the device would be a host-to-device copy, i.e. a stream sync on CUDA).
    rr_list, w_list = rr.unbind(), w.unbind()
    rr_both = _stack([rr_list[k] for k in both_pos], device, torch.float64)
    w_both = _stack([w_list[k] for k in both_pos], device, torch.float64)
    conflicting = dot < 0  # (K,)
    dot_rel = (w_both * dot).sum()  # <g_act, g_ret> / S
    ret_sq_rel = (w.pow(2) * rr).sum()  # ‖g_ret‖² / S²

    # ---- coefficients c_i in r̂_i units (a_i' = a_i - c_i r̂_i), for every g_ret tensor ----
    if not apply:
        coeff = torch.zeros_like(rr)
    elif granularity == "tensor":
        c_both = torch.where(conflicting, dot / (rr_both + eps), torch.zeros_like(dot))
        coeff_list = [torch.zeros((), dtype=torch.float64, device=device)] * len(ret_idx)
        for k, c in zip(both_pos, c_both.unbind()):
            coeff_list[k] = c
        coeff = _stack(coeff_list, device, torch.float64)
    else:  # global: one A-GEM step on the concatenated gradient, written per tensor (c_i = ĉ · s_i / S)
        c_global = torch.where(dot_rel < 0, dot_rel / (ret_sq_rel + eps), torch.zeros_like(dot_rel))
        coeff = c_global * w
    coeff = coeff.float().double()  # the coefficient as applied (rounded to fp32 once)

    # ---- the update: one multiply of r̂ in place, one add into g_act ----
    lam_t = lam.reshape(()).to(device=device, dtype=torch.float64) if isinstance(lam, Tensor) else float(lam)
    k_ret = (lam_t * scales.double() - coeff).float() if ret_list else scales  # (R,) λ s_i - c_i
    if ret_list:
        torch._foreach_mul_(ret_list, list(k_ret.unbind()))
    if both_idx:
        torch._foreach_add_([act[i] for i in both_idx], [ret[i] for i in both_idx])
    out: list[Tensor | None] = [None] * n
    for i in act_idx:
        out[i] = act[i]
    if ret_only_output or (apply and granularity == "global"):
        for i in ret_idx:
            if i not in act_set:
                out[i] = ret[i]

    # ---- statistics (global over all parameters; float64 over per-tensor scalars) ----
    aa_list = aa.unbind()
    act_pos = {i: k for k, i in enumerate(act_idx)}
    aa_both = _stack([aa_list[act_pos[i]] for i in both_idx], device, torch.float64)
    coeff_list_all = coeff.unbind()
    c_both_applied = _stack([coeff_list_all[k] for k in both_pos], device, torch.float64)
    act_sq = aa.sum()
    # ‖a_i - c r̂_i‖² = ‖a_i‖² - 2 c <a_i, r̂_i> + c² ‖r̂_i‖²; act-only tensors keep ‖a_i‖²; tensors with g_ret
    # only (global granularity) get c² ‖r̂_i‖².
    proj_both = (aa_both - 2.0 * c_both_applied * dot + c_both_applied.pow(2) * rr_both).clamp_min(0.0)
    ret_only_pos = [pos_in_ret[i] for i in ret_idx if i not in act_set]
    proj_ret_only = _stack([coeff_list_all[k].pow(2) * rr_list[k] for k in ret_only_pos], device, torch.float64)
    proj_sq = act_sq - aa_both.sum() + proj_both.sum() + proj_ret_only.sum()
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
        projected_act_norm=proj_sq.clamp_min(0.0).sqrt().float(),
        ret_norm=(ret_norm_rel * global_scale).float(),
    )
    return out, stats


def _owned_fp32(tensors: Sequence[Tensor | None]) -> list[Tensor | None]:
    """fp32 copies (never aliasing the inputs)."""
    return [None if t is None else t.detach().to(torch.float32, copy=True) for t in tensors]


def _in_place_fp32(tensors: Sequence[Tensor | None]) -> list[Tensor | None]:
    """The tensors themselves where they are fp32 (modified in place), fp32 copies otherwise."""
    return [None if t is None else (t if t.dtype == torch.float32 else t.float()) for t in tensors]


def project_and_combine_(
    g_act: Sequence[Tensor | None],
    g_ret: Sequence[Tensor | None],
    lam: float | Tensor,
    eps: float = 1e-8,
    granularity: str = "tensor",
    project: bool = True,
) -> tuple[list[Tensor | None], ProjectionStats]:
    """g = project(g_act, g_ret) + λ g_ret (or g_act + λ g_ret with `project=False`), IN PLACE.

    g_act's fp32 tensors receive the result; g_ret's tensors are consumed (overwritten). Non-fp32 inputs are
    upcast to fp32 copies first (rounding the result back to bf16 would re-introduce a conflict of ~4e-3
    ‖a‖ ‖r‖; the caller casts when it writes `.grad`).

    Returns (the final gradient per parameter: g_act's tensor, or g_ret's where g_act is None, None where
    both are; ProjectionStats of the projection, or of the conflicts alone with `project=False`:
    energy_removed = 0 and projected_act_norm = act_norm).
    """
    return _surgery_(_in_place_fp32(g_act), _in_place_fp32(g_ret), lam, eps, granularity, apply=project,
                     ret_only_output=True)


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
        (g_act' as fp32 tensors, None where g_act was None — except, with global granularity, tensors that
        have only g_ret, which get -c g_ret,i; ProjectionStats). Inputs are never modified.
    """
    return _surgery_(_owned_fp32(g_act), _owned_fp32(g_ret), 0.0, eps, granularity, apply=True,
                     ret_only_output=False)


def measure_conflicts(
    g_act: Sequence[Tensor | None],
    g_ret: Sequence[Tensor | None],
    granularity: str = "tensor",
) -> ProjectionStats:
    """The statistics of `project_conflicting` without projecting (for `craft_enable_projection False`):
    conflicts, cosine and norms as usual; energy_removed = 0 and projected_act_norm = act_norm."""
    _, stats = _surgery_(_owned_fp32(g_act), _owned_fp32(g_ret), 0.0, 1e-8, granularity, apply=False,
                         ret_only_output=False)
    return stats


def combine(
    g_act: Sequence[Tensor | None], g_ret: Sequence[Tensor | None], lam: float | Tensor
) -> list[Tensor | None]:
    """g_i = g_act,i + λ g_ret,i in fp32 (a missing gradient counts as zero; None if both are missing).

    `lam` may be a Python number or a 0-dim tensor (kept on the gradients' device, so no host sync).
    Inputs are never modified.
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
