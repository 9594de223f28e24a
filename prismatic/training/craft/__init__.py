"""CRaFT building blocks (CRAFT_SPEC.md), one module per concept, free of the trainer's `.grad` plumbing.

    config      CraftConfig: the --use_craft / --craft_* flags, validated
    features    Φ: token pooling of the bridge conditions, L_ret (with optional per-part normalisation)
    anchor      θ0: LoRA-disabled / snapshot anchor, the no-grad anchor forward, per-sample cache
    projection  A-GEM one-sided projection of g_act against g_ret, g = g_act' + λ g_ret
    dual        λ's projected dual ascent, the conflict-ratio window
"""

from prismatic.training.craft.anchor import AnchorFeatureCache, AnchorModel, lora_b_is_zero, unwrap_model
from prismatic.training.craft.config import CraftConfig
from prismatic.training.craft.dual import ConflictRatioMeter, DualState
from prismatic.training.craft.features import (
    PooledFeatures,
    RetentionLoss,
    build_features,
    pool_features,
    pool_tokens,
    retention_loss,
    select_features,
)
from prismatic.training.craft.projection import ProjectionStats, combine, measure_conflicts, project_conflicting

__all__ = [
    "AnchorFeatureCache",
    "AnchorModel",
    "ConflictRatioMeter",
    "CraftConfig",
    "DualState",
    "PooledFeatures",
    "ProjectionStats",
    "RetentionLoss",
    "build_features",
    "combine",
    "lora_b_is_zero",
    "measure_conflicts",
    "pool_features",
    "pool_tokens",
    "project_conflicting",
    "retention_loss",
    "select_features",
    "unwrap_model",
]
