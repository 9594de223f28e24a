"""Dual ascent on λ (clipping, fixed-λ mode, checkpointing) and the conflict-ratio window."""

import pytest
import torch

from prismatic.training.craft.config import CraftConfig
from prismatic.training.craft.dual import ConflictRatioMeter, DualState


def test_dual_ascent_step_by_hand():
    d = DualState(initial_lambda=1.0, budget=0.1, lr=0.5, lambda_max=10.0)
    assert float(d.update(0.3)) == pytest.approx(1.1)  # 1 + 0.5 (0.3 - 0.1)
    assert float(d.update(0.1)) == pytest.approx(1.1)  # on budget: unchanged
    assert float(d.update(0.0)) == pytest.approx(1.05)  # under budget: λ decreases
    assert d.num_updates == 3
    assert d.value.dtype == torch.float32 and float(d.value) == pytest.approx(1.05)


def test_lambda_is_clipped_at_zero_and_at_the_cap():
    d = DualState(initial_lambda=0.01, budget=0.5, lr=1.0, lambda_max=1.5)
    assert float(d.update(0.0)) == 0.0
    assert float(d.update(0.0)) == 0.0  # stays at 0, never negative
    assert float(d.update(100.0)) == 1.5
    assert float(d.update(100.0)) == 1.5


def test_fixed_lambda_mode_ignores_the_loss():
    d = DualState.from_config(CraftConfig(retention_weight=0.7, enable_dual=False))
    for loss in (0.0, 5.0, torch.tensor(100.0)):
        assert float(d.update(loss)) == pytest.approx(0.7)
    assert d.num_updates == 3


def test_tensor_and_float_losses_agree_and_lambda_accumulates_in_float64():
    a = DualState(5.0, budget=0.0, lr=1e-9, lambda_max=10.0)
    b = DualState(5.0, budget=0.0, lr=1e-9, lambda_max=10.0)
    for _ in range(1000):
        a.update(1.0)
        b.update(torch.tensor(1.0))
    # 1000 increments of 1e-9 on top of 5: lost entirely in float32 (ulp(5) ≈ 4.8e-7).
    assert float(a.lam) == pytest.approx(5.0 + 1e-6, abs=1e-12) and float(a.lam) == float(b.lam)
    with pytest.raises(ValueError, match="scalar"):
        a.update(torch.ones(2))


def test_state_dict_round_trip(tmp_path):
    d = DualState(1.0, budget=0.1, lr=0.5, lambda_max=10.0)
    d.update(2.0)
    torch.save({"dual": d.state_dict()}, tmp_path / "state.pt")
    loaded = torch.load(tmp_path / "state.pt", weights_only=True)["dual"]
    e = DualState(1.0, budget=0.1, lr=0.5, lambda_max=10.0)
    e.load_state_dict(loaded)
    assert float(e.lam) == float(d.lam) and e.num_updates == 1
    assert float(e.update(0.1)) == float(d.update(0.1))
    with pytest.raises(ValueError, match="craft_lambda_max"):
        DualState(1.0, 0.1, 0.5, lambda_max=1.0).load_state_dict({"lambda": 2.0, "num_updates": 1})
    with pytest.raises(KeyError, match="num_updates"):
        e.load_state_dict({"lambda": 1.0})


def test_constructor_validation():
    with pytest.raises(ValueError, match="λ_max"):
        DualState(2.0, 0.1, 0.01, lambda_max=1.0)
    with pytest.raises(ValueError, match=">= 0"):
        DualState(1.0, -0.1, 0.01, lambda_max=10.0)


def test_conflict_ratio_counts_over_the_window():
    m = ConflictRatioMeter()
    m.update(3, 10)
    m.update(torch.tensor(0), torch.tensor(10))  # device counts accumulate without a host read
    m.update(7, 10)
    assert m.steps == 3
    assert m.compute() == pytest.approx(10 / 30)
    state = m.state_dict()
    assert state == {"conflicting": 10, "both": 30, "steps": 3}
    assert m.compute_and_reset() == pytest.approx(10 / 30)
    assert m.compute() == 0.0 and m.steps == 0  # empty window: no tensor received both gradients
    m.load_state_dict(state)
    m.update(5, 10)
    assert m.compute() == pytest.approx(15 / 40)
    with pytest.raises(ValueError, match="inconsistent"):
        m.load_state_dict({"conflicting": 5, "both": 3, "steps": 1})
