"""CRaFT hyper-parameters (CRAFT_SPEC.md, "Flags") as one typed, validated dataclass.

The fine-tuning CLI exposes them as flat `--use_craft` / `--craft_<field>` flags; `CraftConfig.from_flat`
maps those names 1:1 onto the fields below, and every validation error names the CLI flag, not the field.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

ANCHOR_TYPES = ("concat", "raw_only", "aq_only")
POOLINGS = ("mean", "max")
GRANULARITIES = ("tensor", "global")
# Largest δ for which the post-projection guarantee <g_act', g_ret> >= -1e-6 ‖g_act‖ ‖g_ret‖ still holds with
# margin for fp32 rounding (the δ term contributes at most δ·‖g_act‖·‖g_ret‖, rounding about 2.4e-7 of it).
MAX_PROJECTION_EPS = 1e-7

# The CLI name of `enabled`; every other field `x` is `--craft_x`.
ENABLED_FLAG = "use_craft"


def flag_name(field_name: str, prefix: str = "craft_") -> str:
    """CLI flag of a CraftConfig field (`retention_budget` -> `craft_retention_budget`)."""
    return ENABLED_FLAG if field_name == "enabled" else f"{prefix}{field_name}"


@dataclass
class CraftConfig:
    # Turn CRaFT on (retention constraint + conflict-aware projection + dual ascent). Off = plain fine-tuning.
    enabled: bool = False
    # Initial Lagrange multiplier λ0 (and the fixed λ when enable_dual is False).
    retention_weight: float = 1.0
    # Drift budget ε on L_ret (in the units of L_ret: raw MSE, or relative MSE with normalize_parts).
    retention_budget: float = 0.1
    # Dual ascent step size η in λ <- clip(λ + η (L̄_ret - ε), 0, λ_max).
    dual_lr: float = 0.01
    # Upper clip of λ; keeps one bad step from making the retention term dominate for thousands of steps.
    lambda_max: float = 10.0
    # δ in g_act - <g_act, g_ret> / (‖g_ret‖² + δ) g_ret. Only guards a zero division: the projection works
    # on g_ret rescaled by a power of two to max |element| ∈ [1, 2), so δ is relative to ‖g_ret‖² and never
    # under-projects tiny gradients (see projection.py). Must be in (0, MAX_PROJECTION_EPS].
    projection_eps: float = 1e-8
    # Conflict-aware projection of g_act on/off (ablation "no projection": g = g_act + λ g_ret).
    enable_projection: bool = True
    # Adaptive λ on/off (ablation "no dual": λ stays at retention_weight).
    enable_dual: bool = True
    # LLM layer m whose hidden states at the vision patches form C_R (hidden_states[m], 0 = embeddings).
    # None = num_layers // 2 (resolved by `resolve_anchor_layer`). Valid range: [1, num_layers].
    anchor_layer_idx: int | None = None
    # Which bridge conditions form Φ: "concat" (C_R ‖ C_AQ, 2D), "raw_only" (C_R, D), "aq_only" (C_AQ, D).
    anchor_type: str = "concat"
    # Token pooling of each part to (B, D): "mean" or "max".
    pooling: str = "mean"
    # Projection per parameter tensor ("tensor", default) or on the whole concatenated gradient ("global").
    projection_granularity: str = "tensor"
    # Divide each pooled part (current and anchor) by the anchor part's RMS before the MSE. The mid-layer
    # residual stream and the normed last layer can differ in scale by orders of magnitude; without this,
    # the larger part dominates L_ret. Makes L_ret (and ε) relative. The RMS is measured once, at θ0 on the
    # first optimizer step's global batch (all micro-batches and ranks), then fixed and checkpointed.
    normalize_parts: bool = False
    # CRaFT metric window and logging period, in optimizer steps (the conflict ratio sums over the window).
    log_freq: int = 10
    # Cache anchor features per sample key (saves the θ0 forward after the first epoch). Only correct without
    # image augmentation: the anchor must be computed on exactly the input the current features see.
    anchor_cache: bool = False

    def __post_init__(self) -> None:
        for name in ("retention_weight", "retention_budget", "dual_lr", "projection_eps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"--{flag_name(name)} must be a finite number, got {value!r}")
        if isinstance(self.lambda_max, bool) or not isinstance(self.lambda_max, (int, float)) or math.isnan(
            self.lambda_max
        ):
            raise ValueError(f"--{flag_name('lambda_max')} must be a number (inf = no cap), got {self.lambda_max!r}")
        if self.retention_weight < 0:
            raise ValueError(f"--{flag_name('retention_weight')} (initial λ) must be >= 0, got {self.retention_weight}")
        if self.retention_budget < 0:
            raise ValueError(f"--{flag_name('retention_budget')} (ε) must be >= 0, got {self.retention_budget}")
        if self.dual_lr < 0:
            raise ValueError(f"--{flag_name('dual_lr')} (η) must be >= 0, got {self.dual_lr}")
        if self.lambda_max < self.retention_weight:
            raise ValueError(
                f"--{flag_name('lambda_max')} ({self.lambda_max}) must be >= --{flag_name('retention_weight')} "
                f"({self.retention_weight}): the initial λ would be clipped at the first update"
            )
        if not 0 < self.projection_eps <= MAX_PROJECTION_EPS:
            raise ValueError(
                f"--{flag_name('projection_eps')} (δ) must be in (0, {MAX_PROJECTION_EPS:g}], got "
                f"{self.projection_eps}: δ only guards a zero division; larger values leave a residual conflict "
                f"of up to δ·‖g_act‖·‖g_ret‖ after the projection"
            )
        if self.anchor_type not in ANCHOR_TYPES:
            raise ValueError(f"--{flag_name('anchor_type')} must be one of {ANCHOR_TYPES}, got {self.anchor_type!r}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"--{flag_name('pooling')} must be one of {POOLINGS}, got {self.pooling!r}")
        if self.projection_granularity not in GRANULARITIES:
            raise ValueError(
                f"--{flag_name('projection_granularity')} must be one of {GRANULARITIES}, "
                f"got {self.projection_granularity!r}"
            )
        if isinstance(self.log_freq, bool) or not isinstance(self.log_freq, int) or self.log_freq < 1:
            raise ValueError(f"--{flag_name('log_freq')} must be an integer >= 1, got {self.log_freq!r}")
        if self.anchor_layer_idx is not None and (
            isinstance(self.anchor_layer_idx, bool) or not isinstance(self.anchor_layer_idx, int)
        ):
            raise ValueError(
                f"--{flag_name('anchor_layer_idx')} must be an integer or None, got {self.anchor_layer_idx!r}"
            )

    # ---- checks that need the model or the data config ----
    def resolve_anchor_layer(self, num_layers: int) -> int:
        """The layer m for C_R: `anchor_layer_idx`, or num_layers // 2 when None. Raises if out of [1, num_layers]."""
        if num_layers < 1:
            raise ValueError(f"the model must have at least one LLM layer, got num_layers={num_layers}")
        m = num_layers // 2 if self.anchor_layer_idx is None else self.anchor_layer_idx
        if not 1 <= m <= num_layers:
            raise ValueError(
                f"--{flag_name('anchor_layer_idx')} must be in [1, {num_layers}] for this model "
                f"(hidden_states[m], 0 = embedding output; {num_layers} LLM layers), got {m}"
            )
        return m

    # Alias with the name the trainer may prefer; returns the resolved layer index.
    validate_against_model = resolve_anchor_layer

    def validate_against_data(self, image_aug: bool) -> None:
        """The anchor cache is only valid when the same sample always yields the same model input."""
        if self.enabled and self.anchor_cache and image_aug:
            raise ValueError(
                f"--{flag_name('anchor_cache')} True needs --image_aug False: cached anchor features would "
                f"belong to a different augmentation of the sample than the current features"
            )

    # ---- flat CLI mapping ----
    @classmethod
    def from_flat(cls, prefix: str = "craft_", enabled: bool | None = None, **flags: Any) -> CraftConfig:
        """Build from flat flags: `craft_<field>=value` (and `enabled` / `use_craft`).

        Flags not given keep their defaults; an unknown `craft_*` name is an error (a typo would otherwise
        silently run with the default).
        """
        fields = {f.name for f in dataclasses.fields(cls)}
        values: dict[str, Any] = {}
        if ENABLED_FLAG in flags:
            if enabled is not None:
                raise ValueError(f"pass either enabled= or {ENABLED_FLAG}=, not both")
            enabled = flags.pop(ENABLED_FLAG)
        if enabled is not None:
            values["enabled"] = enabled
        unknown = []
        for key, value in flags.items():
            name = key[len(prefix):] if key.startswith(prefix) else None
            if name is None or name not in fields or name == "enabled":
                unknown.append(key)
            else:
                values[name] = value
        if unknown:
            known = sorted(flag_name(f, prefix) for f in fields)
            raise ValueError(f"unknown CRaFT flag(s) {sorted(unknown)}; known flags: {known}")
        return cls(**values)

    @classmethod
    def from_mapping(cls, flags: Mapping[str, Any], prefix: str = "craft_") -> CraftConfig:
        """`from_flat` for a mapping that may hold unrelated keys (e.g. a whole FinetuneConfig dict)."""
        picked = {k: v for k, v in flags.items() if k.startswith(prefix) or k == ENABLED_FLAG}
        return cls.from_flat(prefix=prefix, **picked)

    def to_flat(self, prefix: str = "craft_") -> dict[str, Any]:
        """Inverse of `from_flat`: {"use_craft": ..., "craft_<field>": ...}."""
        return {flag_name(f.name, prefix): getattr(self, f.name) for f in dataclasses.fields(self)}
