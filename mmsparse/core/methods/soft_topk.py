"""Spartan's soft top-k: the entropy-regularised knapsack and its implicit-gradient backward.

Given values ``v`` (e.g. ``|w|`` or block sums), positive costs ``c`` and a budget ``k``, the
entropy-regularised problem ``max Σ v·m + H(m)/β  s.t.  Σ c·m = k, 0 <= m <= 1`` has the fixed
point ``m = sigmoid(β·v/c + μ)``, with the offset ``μ`` (the dual variable of the budget; the
paper's ``-β·τ`` is folded into it) chosen so that ``Σ c·m = k``. β -> ∞ gives the hard
(greedy-knapsack) top-k, β -> 0 gives ``m = k / Σ c`` everywhere.

``Σ c·sigmoid(z + μ)`` is increasing in μ, so :func:`solve_offset` finds μ by Newton steps
inside a bisection bracket (never leaves it, converges quadratically, and warm-starts from the
previous step's μ in one or two passes). The backward is implicit differentiation of the
budget constraint, with ``s = m(1 - m)``::

    dL/dv_i = β·s_i·(g_i / c_i - Σ_j g_j s_j / Σ_j c_j s_j)

Everything works in float64 (gradcheck) and float32; sums are accumulated in float64.
"""
import math

import torch

from ..patterns import topk_mask


def _total(costs, values):
    """Σ costs over ``values``' entries (costs broadcast), as a Python float."""
    if costs.numel() == 1:
        return float(costs) * values.numel()
    return float(costs.expand_as(values).sum(dtype=torch.float64))


def _weighted_sum(costs, tensor):
    """Σ costs·tensor, without materialising the product for scalar costs."""
    if costs.numel() == 1:
        return float(costs) * float(tensor.sum())
    return float(torch.dot(costs.expand_as(tensor).reshape(-1), tensor.reshape(-1)))


def _check(values, costs, budget, beta):
    if not torch.is_floating_point(values):
        raise TypeError(f'soft top-k values must be floating point, got {values.dtype}')
    if not math.isfinite(beta) or beta < 0:
        raise ValueError(f'soft top-k beta must be finite and >= 0, got {beta}')
    if costs.numel() and float(costs.min()) <= 0:
        raise ValueError('soft top-k costs must be positive')
    total = _total(costs, values)
    if not 0 < budget < total:
        raise ValueError(f'soft top-k budget must be in (0, total cost = {total:g}), got '
                         f'{budget:g}')
    return total


def solve_offset(z, costs, budget, mu_init=None, tol=1e-4, max_iter=100):
    """The offset μ with ``Σ costs·sigmoid(z + μ) = budget`` to ``tol`` relative.

    Args:
        z: Scaled unit values ``β·v/c`` (any shape).
        costs: Positive costs, broadcastable to ``z``.
        budget: Target total cost, strictly between 0 and the total cost.
        mu_init: Warm start (e.g. the previous training step's μ).
        tol: Relative tolerance on the budget.
        max_iter: Most Newton/bisection steps.

    Returns:
        ``(mu, iterations, mask)`` with ``mask = sigmoid(z + mu)``.
    """
    density = budget / _total(costs, z)
    logit = math.log(density) - math.log1p(-density)
    # Σ c·sigmoid(z + μ) lies between total·sigmoid(z_min + μ) and total·sigmoid(z_max + μ):
    # these μ bracket the root.
    z_min, z_max = torch.aminmax(z)
    lo, hi = logit - float(z_max), logit - float(z_min)
    mu = min(max(mu_init, lo), hi) if mu_init is not None else 0.5 * (lo + hi)
    m = torch.empty_like(z)
    for iteration in range(max_iter + 1):
        torch.add(z, mu, out=m).sigmoid_()
        err = _weighted_sum(costs, m) - budget
        if abs(err) <= tol * budget or iteration == max_iter or hi - lo <= 1e-15 * max(
                1.0, abs(mu)):
            return mu, iteration, m
        if err > 0:
            hi = mu
        else:
            lo = mu
        # d/dμ Σ c·m = Σ c·m(1 - m)
        if costs.numel() == 1:
            slope = float(costs) * (float(m.sum()) - float(torch.dot(m.reshape(-1),
                                                                     m.reshape(-1))))
        else:
            slope = _weighted_sum(costs, m * (1 - m))
        step = mu - err / slope if slope > 0 else None
        # Newton where it stays inside the bracket, bisection otherwise.
        mu = step if step is not None and lo < step < hi else 0.5 * (lo + hi)
    return mu, max_iter, m


class _SoftTopKFunction(torch.autograd.Function):
    """``m = sigmoid(β·v/c + μ)`` with μ solved for the budget; implicit backward."""

    @staticmethod
    def forward(ctx, values, costs, budget, beta, mu_init, tol, max_iter, info):
        z = values * (beta / costs) if costs.numel() != 1 else values * (beta / float(costs))
        mu, iterations, mask = solve_offset(z, costs, budget, mu_init, tol, max_iter)
        del z
        info.update(mu=mu, iterations=iterations)
        ctx.save_for_backward(mask, costs)
        ctx.beta = beta
        return mask

    @staticmethod
    def backward(ctx, grad):
        mask, costs = ctx.saved_tensors
        s = mask * (1 - mask)
        numerator = float(torch.dot(grad.reshape(-1), s.reshape(-1)))
        denominator = _weighted_sum(costs, s)
        # dμ/dv follows from differentiating Σ c·m = k; it couples every entry.
        shared = numerator / denominator if denominator > 0 else 0.0
        if costs.numel() == 1:
            out = grad * (ctx.beta / float(costs))
        else:
            out = grad * (ctx.beta / costs)
        out.sub_(ctx.beta * shared).mul_(s)
        return out, None, None, None, None, None, None, None


def soft_topk(values, costs, budget, beta, mu_init=None, tol=1e-4, max_iter=100):
    """Soft top-k mask of ``values`` under ``Σ costs·m = budget`` (differentiable in values).

    Args:
        values: Floating tensor (any shape); gradients flow back to it.
        costs: Positive costs, broadcastable to ``values`` (a scalar tensor for unit costs).
        budget: Total cost to keep, in (0, total cost).
        beta: Sharpness (>= 0). 0 gives the uniform mask ``budget / total``.
        mu_init: Warm start for the offset (the value returned by the previous call).
        tol: Relative tolerance of the budget (1e-4 by default).
        max_iter: Most solver steps.

    Returns:
        ``(mask, mu)``: mask in (0, 1) with ``values``' shape and dtype, and the offset μ.
    """
    costs = torch.as_tensor(costs, dtype=values.dtype, device=values.device)
    _check(values, costs, budget, beta)
    info = {}
    mask = _SoftTopKFunction.apply(values, costs, float(budget), float(beta), mu_init, tol,
                                   max_iter, info)
    return mask, info['mu']


@torch.no_grad()
def hard_topk(values, costs, budget):
    """The β -> ∞ limit: keep the highest value-per-cost entries within ``budget``.

    With equal costs this keeps exactly ``round(budget / cost)`` entries (ties broken by
    index, like every mask in mmsparse); with unequal costs it is the greedy knapsack
    (entries in decreasing ``v / c`` while the cumulative cost stays within the budget).

    Returns:
        Bool mask with ``values``' shape.
    """
    costs = torch.as_tensor(costs, dtype=values.dtype, device=values.device)
    if costs.numel() == 1 or bool(costs.min() == costs.max()):
        return _topk_count(values, int(round(budget / float(costs.reshape(-1)[0]))))
    flat_costs = costs.expand_as(values).reshape(-1)
    unit = (values.reshape(-1) / flat_costs).float()
    order = torch.argsort(unit, descending=True, stable=True)
    within = flat_costs[order].double().cumsum(0) <= budget * (1 + 1e-9)
    mask = torch.zeros(values.numel(), dtype=torch.bool, device=values.device)
    mask[order[within]] = True
    return mask.view(values.shape)


def _topk_count(values, keep):
    """Exactly ``keep`` largest values (ties: lower index first), by one selection pass."""
    flat = values.reshape(-1)
    if keep >= flat.numel():
        return torch.ones_like(values, dtype=torch.bool)
    if keep <= 0:
        return torch.zeros_like(values, dtype=torch.bool)
    if flat.numel() <= (1 << 16):
        return topk_mask(values, keep)
    threshold = _kth_largest(flat, keep)
    mask = flat > threshold
    missing = keep - int(mask.sum())
    if missing > 0:  # ties at the threshold: the lowest indices
        mask[torch.nonzero(flat == threshold).squeeze(1)[:missing]] = True
    return mask.view(values.shape)


def _kth_largest(flat, keep, sample_size=1 << 16):
    """The ``keep``-th largest entry of a large 1-D tensor.

    A strided sample brackets it (Floyd-Rivest selection), so the exact selection only runs
    on the few entries inside the bracket; if the bracket misses, a full ``kthvalue`` runs.
    The result is exact either way.
    """
    n = flat.numel()
    if n <= 4 * sample_size:
        return torch.kthvalue(flat, n - keep + 1).values
    sample = flat[::n // sample_size]
    s = sample.numel()
    rank = keep * s / n  # the target's expected rank (from the top) in the sample
    margin = 4.0 * math.sqrt(s) + 8
    upper_rank, lower_rank = int(rank - margin), int(rank + margin) + 1
    hi = (torch.kthvalue(sample, s - upper_rank + 1).values if upper_rank >= 1
          else flat.new_tensor(float('inf')))
    lo = (torch.kthvalue(sample, s - lower_rank + 1).values if lower_rank <= s
          else flat.new_tensor(float('-inf')))
    above = int((flat > hi).sum())
    window = flat[(flat >= lo) & (flat <= hi)]
    need = keep - above
    if 1 <= need <= window.numel():
        return torch.kthvalue(window, window.numel() - need + 1).values
    return torch.kthvalue(flat, n - keep + 1).values
