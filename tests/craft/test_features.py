"""Φ pooling / anchor types and the retention loss, on hand-computed values."""

import pytest
import torch

from prismatic.training.craft.features import (
    PooledFeatures,
    build_features,
    part_scales_from_sums,
    part_sums_of_squares,
    pool_features,
    pool_tokens,
    retention_loss,
    select_features,
)

# B=2, T=3, D=2 token features with easy means/maxes.
RAW = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [5.0, 0.0]],
                    [[0.0, 0.0], [0.0, 6.0], [3.0, 0.0]]])
AQ = torch.tensor([[[1.0, 1.0], [-1.0, 3.0]],
                   [[2.0, -2.0], [4.0, 2.0]]])


def test_pooling_values():
    assert torch.equal(pool_tokens(RAW, "mean"), torch.tensor([[3.0, 2.0], [1.0, 2.0]]))
    assert torch.equal(pool_tokens(RAW, "max"), torch.tensor([[5.0, 4.0], [3.0, 6.0]]))
    assert torch.equal(pool_tokens(AQ, "mean"), torch.tensor([[0.0, 2.0], [3.0, 0.0]]))
    assert pool_tokens(RAW.bfloat16(), "mean").dtype == torch.float32
    with pytest.raises(ValueError, match="pooling"):
        pool_tokens(RAW, "median")
    with pytest.raises(ValueError, match=r"\(B, T, D\)"):
        pool_tokens(RAW[0], "mean")


@pytest.mark.parametrize("anchor_type, expected", [
    ("concat", [[3.0, 2.0, 0.0, 2.0], [1.0, 2.0, 3.0, 0.0]]),
    ("raw_only", [[3.0, 2.0], [1.0, 2.0]]),
    ("aq_only", [[0.0, 2.0], [3.0, 0.0]]),
])
def test_build_features_shapes_and_values(anchor_type, expected):
    phi = build_features(RAW, AQ, anchor_type, "mean")
    assert phi.dtype == torch.float32
    assert torch.equal(phi, torch.tensor(expected))


def test_build_features_needs_only_the_parts_it_uses():
    assert build_features(RAW, None, "raw_only", "max").shape == (2, 2)
    assert build_features(None, AQ, "aq_only", "max").shape == (2, 2)
    with pytest.raises(ValueError, match="'aq'"):
        build_features(RAW, None, "concat", "mean")
    with pytest.raises(ValueError, match="anchor type"):
        build_features(RAW, AQ, "both", "mean")


def test_retention_loss_is_the_mse_over_batch_and_feature_dims():
    cur = pool_features(RAW, AQ, "mean")  # raw [[3,2],[1,2]], aq [[0,2],[3,0]]
    ref = PooledFeatures(raw=torch.tensor([[3.0, 0.0], [1.0, 2.0]]), aq=torch.tensor([[0.0, 2.0], [1.0, 0.0]]))
    # raw squared errors: 0,4,0,0 -> mse 1; aq: 0,0,4,0 -> mse 1; concat: 8 / 8 = 1.
    out = retention_loss(cur, ref, "concat")
    assert out.loss.item() == pytest.approx(1.0)
    assert out.part_mse["raw"].item() == pytest.approx(1.0) and out.part_mse["aq"].item() == pytest.approx(1.0)
    ref2 = PooledFeatures(raw=ref.raw, aq=cur.aq)  # aq identical -> concat loss = (4 + 0) / 8
    assert retention_loss(cur, ref2, "concat").loss.item() == pytest.approx(0.5)
    assert retention_loss(cur, ref2, "raw_only").loss.item() == pytest.approx(1.0)
    assert retention_loss(cur, ref2, "aq_only").loss.item() == pytest.approx(0.0)
    # Parts outside the loss are still reported.
    assert set(retention_loss(cur, ref2, "raw_only").part_mse) == {"raw", "aq"}


def test_retention_loss_gradient_flows_to_current_only():
    cur_raw = torch.tensor([[1.0, 2.0]], requires_grad=True)
    ref_raw = torch.tensor([[0.0, 0.0]], requires_grad=True)
    loss = retention_loss(PooledFeatures(cur_raw, None), PooledFeatures(ref_raw, None), "raw_only").loss
    loss.backward()
    assert torch.allclose(cur_raw.grad, torch.tensor([[1.0, 2.0]]))  # d/dx mean(x²) = 2x / 2
    assert ref_raw.grad is None


def test_per_part_normalisation_divides_by_the_anchor_rms():
    # anchor raw RMS = sqrt(mean(9, 16, 9, 16)) = 3.5355..; anchor aq RMS = sqrt(mean(1e-6 * (1,1,1,1))) = 1e-3.
    ref = PooledFeatures(raw=torch.tensor([[3.0, 4.0], [3.0, 4.0]]), aq=torch.full((2, 2), 1e-3))
    cur = PooledFeatures(raw=ref.raw + torch.tensor([[1.0, 0.0], [0.0, 0.0]]), aq=ref.aq * 2)
    plain = retention_loss(cur, ref, "concat")
    assert plain.part_mse["raw"].item() == pytest.approx(0.25)
    assert plain.part_mse["aq"].item() == pytest.approx(1e-6)
    sums = part_sums_of_squares(ref)
    assert sums["raw"][0].item() == pytest.approx(50.0) and sums["raw"][1] == 4
    rms = part_scales_from_sums(torch.stack([sums["raw"][0], sums["aq"][0]]), [sums["raw"][1], sums["aq"][1]])
    assert rms.tolist() == pytest.approx([12.5 ** 0.5, 1e-3])
    scale = {"raw": rms[0], "aq": rms[1]}
    normed = retention_loss(cur, ref, "concat", scale)
    assert normed.part_mse["raw"].item() == pytest.approx(0.25 / 12.5)  # / rms² = 12.5
    assert normed.part_mse["aq"].item() == pytest.approx(1.0)  # relative error 100 % on every element
    assert normed.loss.item() == pytest.approx((0.25 / 12.5 + 1.0) / 2)
    # The scale is the anchor's, detached: the gradient w.r.t. the current features is 2 (x - x0) / rms² / N.
    cur_raw = cur.raw.clone().requires_grad_(True)
    retention_loss(PooledFeatures(cur_raw, None), PooledFeatures(ref.raw, None), "raw_only", scale).loss.backward()
    assert torch.allclose(cur_raw.grad, 2 * (cur.raw - ref.raw) / 12.5 / 4)


def test_select_features_and_shape_errors():
    pooled = PooledFeatures(raw=torch.zeros(2, 3), aq=torch.ones(2, 3))
    assert select_features(pooled, "concat").shape == (2, 6)
    with pytest.raises(ValueError, match="current"):
        retention_loss(PooledFeatures(None, None), pooled, "raw_only")
    with pytest.raises(ValueError, match="'raw' features"):
        retention_loss(PooledFeatures(torch.zeros(2, 4), None), pooled, "raw_only")
