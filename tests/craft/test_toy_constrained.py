"""A toy constrained problem solved with the CRaFT pieces (projection + combination + dual ascent).

    minimise  L_act(θ) = ½ ‖θ - a‖²,  a = (3, 4 | 5)        θ = two "parameter tensors": (θ1, θ2) | θ3
    s.t.      L_ret(θ) = ‖(θ1, θ2) - θ0‖² <= ε = 1,  θ0 = 0   (θ3 does not influence the "features")

KKT by hand: θ* = (0.6, 0.8 | 5), λ* = (‖a_12‖ / √ε - 1) / 2 = 2, L_act* = ½ (2.4² + 3.2²) = 8.
Plain descent reaches a itself: L_ret = 25 = 25 ε.
"""

import pytest
import torch

from prismatic.training.craft import DualState, combine, project_conflicting

A = torch.tensor([3.0, 4.0, 5.0])
EPS_BUDGET, OPT_LAMBDA, OPT_LACT = 1.0, 2.0, 8.0


def _run(projection: bool, dual: bool, noise: float, steps: int, lr: float = 0.05, eta: float = 0.1, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    theta = [torch.zeros(2), torch.zeros(1)]
    state = DualState(initial_lambda=0.0, budget=EPS_BUDGET, lr=eta, lambda_max=100.0, enabled=dual)
    l_ret_history = []
    for _ in range(steps):
        g_act = [theta[0] - A[:2] + noise * torch.randn(2, generator=gen),
                 theta[1] - A[2:] + noise * torch.randn(1, generator=gen)]
        g_ret = [2 * theta[0], torch.zeros(1)]
        l_ret = float(theta[0].pow(2).sum())
        if projection:
            g_act, _ = project_conflicting(g_act, g_ret)
        g = combine(g_act, g_ret, state.value)
        theta = [p - lr * d for p, d in zip(theta, g)]
        state.update(l_ret)
        l_ret_history.append(l_ret)
    tail = torch.tensor(l_ret_history[steps // 2:])
    l_act = 0.5 * float((torch.cat(theta) - A).pow(2).sum())
    return theta, float(state.lam), tail, l_act


def test_dual_ascent_reaches_the_hand_computed_kkt_point():
    theta, lam, tail, l_act = _run(projection=False, dual=True, noise=0.0, steps=3000, lr=0.05)
    assert lam == pytest.approx(OPT_LAMBDA, abs=1e-3)
    assert torch.allclose(torch.cat(theta), torch.tensor([0.6, 0.8, 5.0]), atol=1e-3)
    assert float(tail[-1]) == pytest.approx(EPS_BUDGET, abs=1e-3) and l_act == pytest.approx(OPT_LACT, abs=1e-2)


def test_projection_and_dual_keep_the_constraint_near_the_budget_while_plain_descent_violates_it():
    # Noisy (minibatch-like) action gradients; the tail = the second half of the run.
    _, _, plain_tail, plain_l_act = _run(projection=False, dual=False, noise=1.0, steps=1500)
    _, craft_lam, craft_tail, craft_l_act = _run(projection=True, dual=True, noise=1.0, steps=1500)
    _, _, dual_tail, _ = _run(projection=False, dual=True, noise=1.0, steps=1500)
    assert float(plain_tail.mean()) > 20 * EPS_BUDGET  # the unconstrained optimum sits at L_ret = 25
    assert float(craft_tail.mean()) == pytest.approx(EPS_BUDGET, abs=0.05)
    assert float(craft_tail.max()) < 1.1 * EPS_BUDGET
    # Projection removes the constraint-violating part of the noisy action gradient: tighter than dual alone.
    assert float(craft_tail.max()) < float(dual_tail.max())
    # ...without giving up the action objective: near the constrained optimum (plain reaches ~0 by violating).
    assert OPT_LACT - 0.5 < craft_l_act < 1.1 * OPT_LACT and plain_l_act < 0.5
    assert 0.0 <= craft_lam < OPT_LAMBDA  # projection does most of the work λ does without it


def test_projection_without_dual_is_conservative_on_a_collinear_conflict():
    # Noise-free, θ1/θ2 move on the line to a where g_act is anti-parallel to g_ret: A-GEM removes it all,
    # so the features barely drift (L_ret << ε) while the free coordinate θ3 still reaches its target.
    theta, _, tail, _ = _run(projection=True, dual=False, noise=0.0, steps=500, lr=0.05)
    assert float(tail.max()) < 0.1 * EPS_BUDGET
    assert float(theta[1]) == pytest.approx(5.0, abs=1e-3)
