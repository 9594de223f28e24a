"""CraftConfig: defaults, every validation error names its flag, flat-flag mapping, layer resolution."""

import math

import pytest

from prismatic.training.craft.config import MAX_PROJECTION_EPS, CraftConfig


def test_defaults_match_the_spec():
    c = CraftConfig()
    assert (c.enabled, c.retention_weight, c.retention_budget, c.dual_lr) == (False, 1.0, 0.1, 0.01)
    assert (c.projection_eps, c.enable_projection, c.enable_dual) == (1e-8, True, True)
    assert (c.anchor_layer_idx, c.anchor_type, c.log_freq) == (None, "concat", 10)
    assert (c.pooling, c.projection_granularity, c.normalize_parts, c.anchor_cache) == ("mean", "tensor", False, False)
    assert c.lambda_max >= c.retention_weight


@pytest.mark.parametrize(
    "kwargs, flag",
    [
        ({"retention_budget": -0.1}, "--craft_retention_budget"),
        ({"dual_lr": -1e-3}, "--craft_dual_lr"),
        ({"retention_weight": -1.0}, "--craft_retention_weight"),
        ({"retention_weight": 5.0, "lambda_max": 2.0}, "--craft_lambda_max"),
        ({"anchor_type": "raw"}, "--craft_anchor_type"),
        ({"pooling": "sum"}, "--craft_pooling"),
        ({"projection_granularity": "layer"}, "--craft_projection_granularity"),
        ({"projection_eps": 0.0}, "--craft_projection_eps"),
        ({"projection_eps": -1e-8}, "--craft_projection_eps"),
        ({"projection_eps": 10 * MAX_PROJECTION_EPS}, "--craft_projection_eps"),
        ({"log_freq": 0}, "--craft_log_freq"),
        ({"log_freq": 2.5}, "--craft_log_freq"),
        ({"retention_budget": math.nan}, "--craft_retention_budget"),
        ({"dual_lr": math.inf}, "--craft_dual_lr"),
        ({"lambda_max": math.nan}, "--craft_lambda_max"),
        ({"anchor_layer_idx": 1.5}, "--craft_anchor_layer_idx"),
    ],
)
def test_invalid_values_name_the_flag(kwargs, flag):
    with pytest.raises(ValueError, match=flag):
        CraftConfig(**kwargs)


def test_boundary_values_are_valid():
    CraftConfig(retention_budget=0.0, dual_lr=0.0, retention_weight=0.0, lambda_max=0.0)
    CraftConfig(retention_weight=3.0, lambda_max=3.0, projection_eps=MAX_PROJECTION_EPS, log_freq=1)
    CraftConfig(lambda_max=math.inf)  # no cap


def test_anchor_layer_resolution_and_range():
    assert CraftConfig().resolve_anchor_layer(24) == 12
    assert CraftConfig().resolve_anchor_layer(4) == 2
    assert CraftConfig(anchor_layer_idx=1).validate_against_model(4) == 1
    assert CraftConfig(anchor_layer_idx=4).validate_against_model(4) == 4
    for bad in (0, 5, -1):
        with pytest.raises(ValueError, match="--craft_anchor_layer_idx"):
            CraftConfig(anchor_layer_idx=bad).validate_against_model(4)
    with pytest.raises(ValueError, match="--craft_anchor_layer_idx"):
        CraftConfig().validate_against_model(1)  # 1 // 2 = 0 is the embedding output, not a layer


def test_anchor_cache_needs_no_augmentation():
    CraftConfig(enabled=True, anchor_cache=True).validate_against_data(image_aug=False)
    CraftConfig(enabled=False, anchor_cache=True).validate_against_data(image_aug=True)  # CRaFT off: irrelevant
    with pytest.raises(ValueError, match="--craft_anchor_cache"):
        CraftConfig(enabled=True, anchor_cache=True).validate_against_data(image_aug=True)


def test_from_flat_maps_names_one_to_one_and_round_trips():
    flat = {"craft_retention_weight": 0.5, "craft_retention_budget": 0.2, "craft_dual_lr": 0.1,
            "craft_projection_eps": 1e-9, "craft_enable_projection": False, "craft_enable_dual": False,
            "craft_anchor_layer_idx": 3, "craft_anchor_type": "aq_only", "craft_log_freq": 5, "craft_lambda_max": 4.0,
            "craft_pooling": "max", "craft_projection_granularity": "global", "craft_normalize_parts": True,
            "craft_anchor_cache": True}
    c = CraftConfig.from_flat(prefix="craft_", enabled=True, **flat)
    assert c.enabled and c.retention_weight == 0.5 and c.anchor_type == "aq_only" and c.pooling == "max"
    assert c.projection_granularity == "global" and c.normalize_parts and c.anchor_cache and c.anchor_layer_idx == 3
    assert c.to_flat() == {"use_craft": True, **flat}
    assert CraftConfig.from_flat(**c.to_flat()) == c
    assert CraftConfig.from_mapping({"batch_size": 8, **c.to_flat()}) == c


def test_from_flat_rejects_unknown_flags_and_names_flags_in_errors():
    with pytest.raises(ValueError, match="craft_retention_budgett"):
        CraftConfig.from_flat(craft_retention_budgett=0.1)
    with pytest.raises(ValueError, match="--craft_dual_lr"):
        CraftConfig.from_flat(craft_dual_lr=-1.0)
    with pytest.raises(ValueError, match="not both"):
        CraftConfig.from_flat(enabled=True, use_craft=True)
