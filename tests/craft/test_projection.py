"""Conflict-aware projection and combination on hand-computed cases, tiny gradients, bf16, granularity."""

import pytest
import torch

from prismatic.training.craft.projection import (
    ProjectionStats,
    combine,
    measure_conflicts,
    project_and_combine_,
    project_conflicting,
)

T = torch.tensor


def _dot64(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() * b.double()).sum())


def _norm64(a: torch.Tensor) -> float:
    return float(a.double().norm())


def _assert_non_conflicting(g_act, projected, g_ret, tol=1e-6):
    """The contract: <g_act', g_ret> >= -tol ‖g_act‖ ‖g_ret‖ per tensor, in fp64 on the given tensors.

    ‖g_act‖ is the norm BEFORE projection: the residual is rounding at the scale of g_act (when g_act is
    anti-parallel to g_ret, g_act' is ~0 and its own norm says nothing about the residual's size).
    """
    for a, p, r in zip(g_act, projected, g_ret):
        if a is None or r is None:
            continue
        assert _dot64(p, r) >= -tol * _norm64(a) * _norm64(r), (_dot64(p, r), _norm64(a), _norm64(r))


# ---------------------------------------------------------------------------------------------------
# hand-computed cases
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("a, r, expected", [
    # dot = -1, ‖r‖² = 2: a - (-1/2) r = (1, 0) + (-0.5, 0.5)
    ([1.0, 0.0], [-1.0, 1.0], [0.5, 0.5]),
    # dot = -3, ‖r‖² = 1: the conflicting coordinate is removed
    ([1.0, 2.0, 3.0], [0.0, 0.0, -1.0], [1.0, 2.0, 0.0]),
    # dot = -3, ‖r‖² = 5: (1,1,1) - (-3/5)(-1,0,-2) = (0.4, 1, -0.2)
    ([1.0, 1.0, 1.0], [-1.0, 0.0, -2.0], [0.4, 1.0, -0.2]),
])
def test_hand_computed_projection_is_orthogonal(a, r, expected):
    (out,), stats = project_conflicting([T(a)], [T(r)])
    assert torch.allclose(out, T(expected), atol=1e-6)
    assert abs(_dot64(out, T(r))) <= 1e-6
    assert int(stats.num_conflicting) == 1 and int(stats.num_both) == 1


@pytest.mark.parametrize("a, r", [([1.0, 2.0], [1.0, 0.0]), ([0.0, 2.0], [1.0, 0.0]), ([1.0, -1.0], [0.0, 0.0])])
def test_non_conflicting_inputs_are_unchanged_bitwise(a, r):
    (out,), stats = project_conflicting([T(a)], [T(r)])
    assert torch.equal(out, T(a))
    assert int(stats.num_conflicting) == 0 and float(stats.energy_removed) == 0.0


def test_projection_is_idempotent():
    g = torch.Generator().manual_seed(0)
    a = [torch.randn(5, 7, generator=g), torch.randn(11, generator=g), torch.randn(3, 3, 3, generator=g)]
    r = [-x + 0.3 * torch.randn(x.shape, generator=g) for x in a]  # all conflicting
    once, s1 = project_conflicting(a, r)
    twice, s2 = project_conflicting(once, r)
    assert int(s1.num_conflicting) == 3
    for x, p, y, rr in zip(a, once, twice, r):
        # The first projection did something: the conflict (most of a) is gone, <a', r> ≈ 0 ...
        assert (p - x).norm() > 0.5 * x.norm()
        assert abs(_dot64(p, rr)) <= 1e-6 * _norm64(x) * _norm64(rr)
        # ... and it equals the textbook A-GEM rule, computed in float64.
        x64, r64 = x.double(), rr.double()
        assert torch.allclose(p.double(), x64 - (x64 * r64).sum() / (r64 * r64).sum() * r64, atol=1e-6)
        # The second changes (almost) nothing: what is left is rounding, ~1e-7 of ‖a‖.
        assert (y - p).norm() <= 1e-6 * x.norm()
    assert float(s2.energy_removed) < 1e-6


def test_statistics_on_a_hand_computed_case():
    # a = (1, 0), r = (-1, 1): cos = -1/√2; a' = (0.5, 0.5): energy removed = 1 - 0.5/1.
    _, stats = project_conflicting([T([1.0, 0.0])], [T([-1.0, 1.0])])
    host = ProjectionStats.to_host_dict(stats.as_tensor().tolist())
    assert host["cosine"] == pytest.approx(-2 ** -0.5, rel=1e-6)
    assert host["energy_removed"] == pytest.approx(0.5, rel=1e-6)
    assert host["act_norm"] == pytest.approx(1.0) and host["projected_act_norm"] == pytest.approx(0.5 ** 0.5)
    assert host["ret_norm"] == pytest.approx(2 ** 0.5)
    assert (host["num_conflicting"], host["num_both"]) == (1.0, 1.0)
    assert list(host) == list(ProjectionStats.field_names())


# ---------------------------------------------------------------------------------------------------
# tiny g_ret, bf16
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("scale", [1e-6, 1e-12, 1e-20])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_tiny_retention_gradient_is_still_projected(scale, dtype):
    a = T([1.0, 0.0]).to(dtype)
    r = (T([-1.0, 1.0]) * scale).to(dtype)
    (out,), stats = project_conflicting([a], [r], eps=1e-8)
    assert out.dtype == torch.float32
    assert torch.allclose(out, T([0.5, 0.5]), atol=1e-6)
    _assert_non_conflicting([a], [out], [r])
    assert int(stats.num_conflicting) == 1
    assert float(stats.cosine) == pytest.approx(-2 ** -0.5, rel=1e-2)  # bf16 rounding of r
    assert float(stats.ret_norm) == pytest.approx(_norm64(r), rel=1e-5)


def test_the_textbook_formula_fails_on_tiny_gradients():
    """Why the implementation rescales: with ‖r‖² << δ, a - dot/(‖r‖²+δ) r is barely moved."""
    a, r, eps = T([1.0, 0.0]), T([-1.0, 1.0]) * 1e-6, 1e-8
    naive = a - (a @ r) / (r @ r + eps) * r
    assert _dot64(naive, r) < -1e-6 * _norm64(a) * _norm64(r)  # the contract is violated
    (ours,), _ = project_conflicting([a], [r], eps=eps)
    _assert_non_conflicting([a], [ours], [r])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_random_mixed_scale_tensors_satisfy_the_contract(dtype):
    g = torch.Generator().manual_seed(1)
    shapes = [(64, 32), (128,), (7, 3, 5), (1,), (256, 16), (33,), (20000,)]  # long sums need fp64 accumulation
    a, r = [], []
    for i, shape in enumerate(shapes * 4):
        x = torch.randn(shape, generator=g) * 10 ** float(torch.randint(-3, 3, (1,), generator=g))
        y = torch.randn(shape, generator=g) * 10 ** float(torch.randint(-24, 2, (1,), generator=g))
        if i % 3 == 0:
            y = -x * 10 ** float(torch.randint(-20, 0, (1,), generator=g)) + 1e-3 * y  # strongly conflicting
        a.append(x.to(dtype))
        r.append(y.to(dtype))
    before = [t.clone() for t in a + r]
    out, stats = project_conflicting(a, r)
    _assert_non_conflicting(a, out, r)
    n_conf = 0
    for x, y, o in zip(a, r, out):
        if _dot64(x, y) < 0:
            n_conf += 1
        else:
            assert torch.equal(o, x.float())
    assert int(stats.num_conflicting) == n_conf > 0 and int(stats.num_both) == len(a)
    assert all(torch.equal(t, b) for t, b in zip(a + r, before))  # inputs untouched


@pytest.mark.slow
def test_the_bound_holds_for_large_tensors_without_float64():
    """n up to 2^24 + 3 elements (several scratch chunks): a plain fp32 dot / norm kernel is off by ~1e-3
    relative there, the chunked cascade sums keep <a', r> >= -1e-6 ‖a‖ ‖r‖."""
    g = torch.Generator().manual_seed(7)
    n = (1 << 24) + 3
    a = torch.randn(n, generator=g)
    cases = {
        "anti-parallel + noise": -a + 1e-3 * torch.randn(n, generator=g),
        "random, one-sided": -(a.abs() * torch.rand(n, generator=g)) * a.sign() * 1e-12,  # tiny, strongly conflicting
        "mixed": torch.where(torch.rand(n, generator=g) < 0.6, -a, torch.randn(n, generator=g)),
    }
    for name, r in cases.items():
        (out,), stats = project_conflicting([a], [r])
        assert int(stats.num_conflicting) == 1, name
        residual = _dot64(out, r) / (_norm64(a) * _norm64(r))
        assert residual >= -1e-6, (name, residual)
        assert abs(residual) < 1e-6, (name, residual)  # and it is orthogonal, not over-projected
        del out


# ---------------------------------------------------------------------------------------------------
# granularity
# ---------------------------------------------------------------------------------------------------
def test_tensor_and_global_granularity_differ_on_a_crafted_case():
    # Tensor 1 conflicts (dot -1), tensor 2 agrees (dot +2): global dot = +1 -> global leaves g_act alone.
    a = [T([1.0, 0.0]), T([0.0, 1.0])]
    r = [T([-1.0, 0.0]), T([0.0, 2.0])]
    per_tensor, s_t = project_conflicting(a, r, granularity="tensor")
    global_, s_g = project_conflicting(a, r, granularity="global")
    assert torch.allclose(per_tensor[0], T([0.0, 0.0])) and torch.equal(per_tensor[1], a[1])
    assert torch.equal(global_[0], a[0]) and torch.equal(global_[1], a[1])
    assert int(s_t.num_conflicting) == int(s_g.num_conflicting) == 1  # per-tensor conflicts counted in both modes
    # Now the global dot is negative (-2 + 1 = -1, ‖r‖² = 5): a' = a + r / 5 on the whole vector.
    r2 = [T([-2.0, 0.0]), T([0.0, 1.0])]
    global2, _ = project_conflicting(a, r2, granularity="global")
    assert torch.allclose(global2[0], T([0.6, 0.0])) and torch.allclose(global2[1], T([0.0, 1.2]))
    assert abs(sum(_dot64(x, y) for x, y in zip(global2, r2))) < 1e-6
    per_tensor2, _ = project_conflicting(a, r2, granularity="tensor")
    assert torch.allclose(per_tensor2[0], T([0.0, 0.0])) and torch.equal(per_tensor2[1], a[1])


def test_global_granularity_projects_tensors_that_have_only_a_retention_gradient():
    # The concatenated vectors: a = (1, 0 | 0, 0 [missing]), r = (-1, 0 | 0, 1). dot = -1, ‖r‖² = 2: c = -1/2,
    # a' = a + r / 2 = (0.5, 0 | 0, 0.5), orthogonal to r. Applying the step to the first tensor only would
    # leave <a', r> = -0.5: still conflicting.
    a = [T([1.0, 0.0]), None]
    r = [T([-1.0, 0.0]), T([0.0, 1.0])]
    out, stats = project_conflicting(a, r, granularity="global")
    assert torch.allclose(out[0], T([0.5, 0.0])) and torch.allclose(out[1], T([0.0, 0.5]))
    assert abs(sum(_dot64(x, y) for x, y in zip(out, r))) < 1e-6
    assert float(stats.projected_act_norm) == pytest.approx(0.5 ** 0.5)
    assert float(stats.energy_removed) == pytest.approx(0.5)
    # Per-tensor granularity leaves the g_ret-only tensor alone (nothing to project: its dot is 0).
    out_t, _ = project_conflicting(a, r, granularity="tensor")
    assert torch.allclose(out_t[0], T([0.0, 0.0])) and out_t[1] is None
    # The in-place combination writes a' + λ r, for the g_ret-only tensor too.
    g, _ = project_and_combine_([t.clone() if t is not None else None for t in a], [t.clone() for t in r], 2.0,
                                granularity="global")
    assert torch.allclose(g[0], T([-1.5, 0.0])) and torch.allclose(g[1], T([0.0, 2.5]))


def test_global_granularity_with_tensors_of_very_different_scales():
    # ‖r1‖ = 1e-10, ‖r2‖ = 1e-20: global dot = -1e-10, ‖r‖² ≈ 1e-20 -> coefficient -1e10.
    a = [T([1.0, 0.0]), T([0.0, 1.0])]
    r = [T([-1e-10, 0.0]), T([0.0, 1e-20])]
    out, _ = project_conflicting(a, r, granularity="global")
    assert torch.allclose(out[0], T([0.0, 0.0]), atol=1e-6)
    assert torch.allclose(out[1], T([0.0, 1.0]), atol=1e-6)


# ---------------------------------------------------------------------------------------------------
# missing gradients, combination, statistics without projection
# ---------------------------------------------------------------------------------------------------
def test_missing_gradients_count_as_zero_and_not_as_received_both():
    a = [T([1.0, 0.0]), None, T([2.0]), T([1.0, 1.0]), None]
    r = [T([-1.0, 1.0]), T([3.0]), None, T([1.0, 1.0]), None]
    out, stats = project_conflicting(a, r)
    assert torch.allclose(out[0], T([0.5, 0.5]))
    assert out[1] is None and out[4] is None
    assert torch.equal(out[2], a[2]) and torch.equal(out[3], a[3])
    assert (int(stats.num_conflicting), int(stats.num_both)) == (1, 2)
    # Norms cover every parameter: ‖g_act‖² = 1 + 4 + 2, ‖g_ret‖² = 2 + 9 + 2.
    assert float(stats.act_norm) == pytest.approx(7 ** 0.5) and float(stats.ret_norm) == pytest.approx(13 ** 0.5)
    combined = combine(out, r, 2.0)
    assert torch.allclose(combined[0], T([-1.5, 2.5])) and torch.allclose(combined[1], T([6.0]))
    assert torch.equal(combined[2], T([2.0])) and torch.allclose(combined[3], T([3.0, 3.0])) and combined[4] is None


def test_combine_with_float_and_tensor_lambda():
    a = [T([1.0, 2.0]).bfloat16(), T([3.0])]
    r = [T([0.5, -0.5]), T([1.0])]
    for lam in (0.5, torch.tensor(0.5, dtype=torch.float64)):
        out = combine(a, r, lam)
        assert all(t.dtype == torch.float32 for t in out)
        assert torch.allclose(out[0], T([1.25, 1.75])) and torch.allclose(out[1], T([3.5]))
    assert torch.equal(combine(a, r, 0.0)[1], T([3.0]))


def test_measure_conflicts_reports_without_projecting():
    stats = measure_conflicts([T([1.0, 0.0])], [T([-1.0, 1.0])])
    assert int(stats.num_conflicting) == 1 and float(stats.energy_removed) == 0.0
    assert float(stats.projected_act_norm) == pytest.approx(1.0)
    assert float(stats.cosine) == pytest.approx(-2 ** -0.5, rel=1e-6)


def test_empty_and_all_zero_inputs():
    out, stats = project_conflicting([], [])
    assert out == [] and int(stats.num_both) == 0 and float(stats.cosine) == 0.0
    out, stats = project_conflicting([T([0.0, 0.0])], [T([0.0, 0.0])])
    assert torch.equal(out[0], T([0.0, 0.0])) and float(stats.energy_removed) == 0.0 and float(stats.cosine) == 0.0


def test_input_errors():
    with pytest.raises(ValueError, match="one entry per parameter"):
        project_conflicting([T([1.0])], [])
    with pytest.raises(ValueError, match="shape"):
        project_conflicting([T([1.0])], [T([1.0, 2.0])])
    with pytest.raises(ValueError, match="granularity"):
        project_conflicting([T([1.0])], [T([1.0])], granularity="layer")
    with pytest.raises(ValueError, match="eps"):
        project_conflicting([T([1.0])], [T([1.0])], eps=0.0)
    with pytest.raises(ValueError, match="scalar"):
        combine([T([1.0])], [T([1.0])], torch.ones(2))


def test_no_host_reads_of_device_values(monkeypatch):
    """A constant number of host syncs per step: the projection itself reads nothing back."""
    def boom(*_args, **_kwargs):
        raise AssertionError("host read of a device value inside the projection")

    a = [torch.randn(4, 3), torch.randn(5), None, torch.randn(2)]
    r = [torch.randn(4, 3), torch.randn(5), torch.randn(3), None]
    for name in ("item", "tolist", "__bool__", "__float__", "__int__", "__index__"):
        monkeypatch.setattr(torch.Tensor, name, boom)
    out, stats = project_conflicting(a, r, granularity="tensor")
    project_conflicting(a, r, granularity="global")
    measure_conflicts(a, r)
    combine(out, r, torch.tensor(0.3))
    stats.as_tensor()
    monkeypatch.undo()
    with pytest.raises(AssertionError):  # the patch really intercepts host reads
        monkeypatch.setattr(torch.Tensor, "item", boom)
        torch.ones(()).item()
