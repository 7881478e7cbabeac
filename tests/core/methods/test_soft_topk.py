"""Spartan's soft top-k: budget, limits in β, implicit gradient, hard projection."""
import pytest
import torch

from mmsparse.core.patterns import topk_mask
from mmsparse.core.methods.soft_topk import hard_topk, soft_topk, solve_offset


def _problem(n=500, seed=0, dtype=torch.float64, unit=False):
    gen = torch.Generator().manual_seed(seed)
    values = torch.rand(n, generator=gen, dtype=dtype) * 3
    costs = (torch.ones((), dtype=dtype) if unit else
             torch.rand(n, generator=gen, dtype=dtype) * 4 + 0.25)
    return values, costs


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
@pytest.mark.parametrize('beta', [0.0, 0.3, 5.0, 80.0, 1e4])
def test_budget_is_met_to_1e_4(dtype, beta):
    for seed in range(3):
        for unit in (True, False):
            values, costs = _problem(2000, seed, dtype, unit)
            total = float(costs.expand_as(values).sum())
            for fraction in (0.03, 0.5, 0.9):
                budget = fraction * total
                mask, _ = soft_topk(values, costs, budget, beta)
                spent = float((costs * mask).sum(dtype=torch.float64))
                assert abs(spent - budget) <= 1e-4 * budget, (seed, unit, fraction)
                assert mask.dtype == dtype and bool(((mask >= 0) & (mask <= 1)).all())


def test_large_beta_gives_the_hard_top_k():
    values = torch.randperm(1000, generator=torch.Generator().manual_seed(1)).double() / 1000
    for keep in (1, 137, 500, 999):
        mask, _ = soft_topk(values, torch.ones((), dtype=torch.float64), keep, 1e6)
        assert torch.equal(mask > 0.5, topk_mask(values, keep))
        assert torch.allclose(mask, topk_mask(values, keep).double(), atol=1e-3)


def test_large_beta_with_costs_gives_the_greedy_knapsack():
    values, costs = _problem(300, seed=2)
    budget = 0.4 * float(costs.sum())
    mask, _ = soft_topk(values, costs, budget, 1e7, tol=1e-9)
    greedy = hard_topk(values, costs, budget)
    # The relaxation's optimum is the greedy prefix plus at most one fractional entry.
    assert int(((mask > 0.5) != greedy).sum()) <= 1
    assert int(((mask > 1e-3) & (mask < 1 - 1e-3)).sum()) <= 1
    assert float((costs * greedy).sum()) <= budget


def test_small_beta_gives_the_uniform_mask():
    values, unit = _problem(400, unit=True)
    for beta in (0.0, 1e-7):
        mask, _ = soft_topk(values, unit, 100, beta)
        assert torch.allclose(mask, torch.full_like(mask, 100 / 400), atol=1e-6)


@pytest.mark.parametrize('unit', [True, False])
def test_implicit_backward_matches_finite_differences(unit):
    values, costs = _problem(40, seed=3, unit=unit)
    budget = 0.3 * float(costs.expand_as(values).sum())
    values.requires_grad_(True)

    def fn(v):
        return soft_topk(v, costs, budget, 2.5, tol=1e-13)[0]

    assert torch.autograd.gradcheck(fn, (values, ), eps=1e-6, atol=1e-7)


def test_gradient_keeps_the_budget():
    """Moving along the gradient of Σ c·m cannot change Σ c·m: its gradient is zero."""
    values, costs = _problem(200, seed=4)
    values.requires_grad_(True)
    mask, _ = soft_topk(values, costs, 0.2 * float(costs.sum()), 3.0)
    (grad, ) = torch.autograd.grad((costs * mask).sum(), values)
    assert float(grad.abs().max()) < 1e-10
    (grad, ) = torch.autograd.grad(soft_topk(values, costs, 0.2 * float(costs.sum()), 3.0)[0]
                                   .sum(), values)
    assert float(grad.abs().max()) > 1e-3  # while an ordinary loss has one


def test_warm_start_converges_in_a_step_or_two():
    values, unit = _problem(100_000, unit=True, dtype=torch.float32)
    z = 200 * values
    mu, cold, _ = solve_offset(z, unit, 20_000.0)
    assert solve_offset(z, unit, 20_000.0, mu_init=mu)[1] == 0  # already solved: no step
    mu2, warm, _ = solve_offset(z * 1.001, unit, 20_000.0, mu_init=mu)  # weights moved a bit
    assert warm < cold and warm <= 2 and abs(mu2 - mu) < 1.0


def test_hard_topk_is_exact_with_ties_on_large_tensors():
    gen = torch.Generator().manual_seed(5)
    values = torch.rand(600_000, generator=gen)
    values[::7] = values[3]  # many ties at one value
    for keep in (1, 85_000, 300_000, 599_999):
        assert torch.equal(hard_topk(values, torch.ones(()), keep), topk_mask(values, keep))


def test_bad_input_fails_early():
    values, costs = _problem(10)
    with pytest.raises(ValueError, match='budget'):
        soft_topk(values, costs, float(costs.sum()) + 1, 1.0)
    with pytest.raises(ValueError, match='budget'):
        soft_topk(values, costs, 0.0, 1.0)
    with pytest.raises(ValueError, match='beta'):
        soft_topk(values, costs, 1.0, -1.0)
    with pytest.raises(ValueError, match='costs'):
        soft_topk(values, -costs, 1.0, 1.0)
    with pytest.raises(TypeError, match='floating'):
        soft_topk(torch.arange(10), costs, 1.0, 1.0)
