"""AST (Alternating Sparse Training) as pure functions of the iteration counter and tensors.

AST trains K subnets of one set of shared weights by alternation: iteration t trains subnet
``t mod K``, so the cost is that of one sparse run. Each subnet's mask follows a cubic
gradual-pruning schedule to its density, then prune-and-regrow (drop the smallest |w| among
the kept weights, regrow the largest |grad| among the pruned ones) with a regrow fraction
cosine-decaying from 0.5 to 0.005.

Storage and nesting (a deliberate deviation from the paper's independent masks). mmsparse
stores all unstructured subnets of one network as *nested* levels (one uint8 per weight,
mask at the j-th sparsest-but-one ratio is ``level >= j + 1``), so one checkpoint holds any
number of them at 1 byte per weight. AST's masks therefore stay nested:

* during gradual pruning every unstructured mask is the magnitude top-k of the shared
  weights at that subnet's scheduled density, which is nested by construction;
* prune-and-regrow of subnet j works **within its level band**: it may drop only weights
  that the next sparser subnet does not keep (level == j + 1) and regrow only weights that
  the next denser subnet keeps (level == j; any pruned weight for the densest subnet). Each
  update changes subnet j's mask alone, keeps its count exact, and keeps the nesting. The
  sparsest subnet thus regrows only inside the next denser subnet's mask.

N:M subnets are independent bit masks and need no such constraint; their density is fixed
by N:M, so "gradual pruning" is a magnitude N:M mask re-derived at every update, and
prune-and-regrow swaps weights within a group of M so the N:M structure holds (see
:func:`regrow_nm`).
"""
import math

import torch

from ..patterns import check_ratio, global_levels, nested_levels, nm_mask, topk_mask
from .schedules import polynomial_progress


def check_ast_subnets(count):
    """Raise unless AST has at least one subnet to alternate."""
    if int(count) < 1:
        raise ValueError(f'AST needs at least one subnet, got {count}')


def ast_subnet_index(iteration, num_subnets):
    """The subnet iteration ``iteration`` trains: ``iteration mod K``."""
    check_ast_subnets(num_subnets)
    return int(iteration) % int(num_subnets)


def gradual_density(iteration, max_iters, final_density, start=0.0, end=0.5, power=3,
                    initial_density=1.0):
    """Cubic gradual-pruning density (Zhu & Gupta) of one subnet at ``iteration``.

    ``initial`` until ``start``, ``final`` from ``end`` on (fractions of ``max_iters``), in
    between ``final + (initial - final) (1 - x)^power``.
    """
    if not 0.0 < final_density <= initial_density <= 1.0:
        raise ValueError(f'need 0 < final_density <= initial_density <= 1, got '
                         f'{final_density} and {initial_density}')
    progress = polynomial_progress(iteration, max_iters, start, end, power)
    if progress >= 1.0:
        return float(final_density)  # exactly, not up to rounding
    return initial_density + (final_density - initial_density) * progress


def gradual_sparsity(iteration, max_iters, final_sparsity, start=0.0, end=0.5, power=3):
    """``1 - gradual_density`` from a dense start, exactly ``final_sparsity`` from ``end``."""
    check_ratio(final_sparsity, 'final sparsity')
    return final_sparsity * polynomial_progress(iteration, max_iters, start, end, power)


def regrow_fraction(iteration, max_iters, start, end, initial=0.5, final=0.005):
    """Cosine-decaying prune-and-regrow fraction between ``start`` and ``end`` (fractions of
    training): ``initial`` at start, ``final`` at end, 0 outside (masks frozen)."""
    begin, finish = start * max_iters, end * max_iters
    if iteration < begin or iteration > finish or finish <= begin:
        return 0.0
    x = (iteration - begin) / (finish - begin)
    return final + 0.5 * (initial - final) * (1.0 + math.cos(math.pi * x))


def update_due(iteration, subnet_index, num_subnets, interval):
    """True when subnet ``subnet_index`` updates its mask at ``iteration``: its first own
    iteration (``t mod K == index``) in every window of ``interval`` iterations."""
    if interval < num_subnets:
        raise ValueError(f'the mask update interval ({interval}) must be at least the number '
                         f'of alternating subnets ({num_subnets})')
    window_start = iteration - iteration % interval
    return iteration == window_start + (subnet_index - window_start) % num_subnets


def scheduled_levels(scores, sparsities, scope='global'):
    """Nested unstructured levels at the given (current) sparsities.

    Args:
        scores: ``{layer name: |W|}``.
        sparsities: One current sparsity per unstructured subnet; their ascending order must
            be that of the subnets' target ratios (true for a common schedule).
        scope: ``'global'`` (one threshold over all layers) or ``'layer'``.

    Returns:
        ``{layer name: uint8 level}``.
    """
    if scope == 'layer':
        return {n: nested_levels(s, sparsities) for n, s in scores.items()}
    if scope != 'global':
        raise ValueError(f"scope must be 'global' or 'layer', got {scope!r}")
    return global_levels(scores, sparsities)


def prune_regrow(magnitude, gradient, keep, fraction, droppable=None, growable=None):
    """Drop the smallest |w| among kept weights and regrow as many largest |grad| pruned ones.

    Args:
        magnitude: |W| (any shape).
        gradient: dL/dW of the subnet's effective weight (same shape), dense.
        keep: Bool mask of the kept weights.
        fraction: Fraction of the kept weights to replace.
        droppable: Optional bool mask restricting the weights that may be dropped.
        growable: Optional bool mask restricting the pruned weights that may be regrown.

    Returns:
        tuple: (new bool mask, dropped bool mask, grown bool mask). The kept count is exact:
        as many are grown as dropped (fewer of both when the candidates run out).
    """
    drop_space = keep if droppable is None else keep & droppable
    grow_space = ~keep if growable is None else ~keep & growable
    count = min(int(round(fraction * int(keep.sum()))), int(drop_space.sum()),
                int(grow_space.sum()))
    if count <= 0:
        empty = torch.zeros_like(keep)
        return keep.clone(), empty, empty
    lowest = -magnitude.float()
    dropped = topk_mask(torch.where(drop_space, lowest, torch.full_like(lowest, -math.inf)),
                        count)
    score = gradient.float().abs()
    grown = topk_mask(torch.where(grow_space, score, torch.full_like(score, -1.0)), count)
    return (keep & ~dropped) | grown, dropped, grown


def regrow_level(level, index, magnitude, gradient, fraction):
    """Prune-and-regrow unstructured subnet ``index`` (0 = least sparse) in a nested level
    encoding, within its band (see the module docstring).

    Returns:
        The new uint8 level tensor: dropped weights go from ``index + 1`` to ``index``,
        grown ones from ``index`` to ``index + 1``; every other subnet's mask is unchanged.
    """
    keep = level >= index + 1
    _, dropped, grown = prune_regrow(magnitude, gradient, keep, fraction,
                                     droppable=level == index + 1, growable=level == index)
    return level - dropped.to(level.dtype) + grown.to(level.dtype)


def nm_magnitude(magnitude, n, m, in_axis=1, where='tensor'):
    """The N:M mask of the largest magnitudes (AST's N:M 'pruning' step)."""
    return nm_mask(magnitude, n, m, in_axis, where)


def regrow_nm(mask, magnitude, gradient, fraction, m, in_axis=1):
    """Prune-and-regrow an N:M mask while keeping it N:M.

    At most one swap per group of M: the swaps go to the groups whose weakest kept weight is
    smallest (drop by magnitude, as in unstructured AST), and each such group regrows its
    pruned weight with the largest |grad|. ``round(fraction * kept)`` swaps, at most one per
    group.
    """
    moved = mask.movedim(in_axis, -1)
    keep = moved.reshape(-1, m)
    mag = magnitude.movedim(in_axis, -1).reshape(-1, m).float()
    grad = gradient.movedim(in_axis, -1).reshape(-1, m).float().abs()
    swaps = min(int(round(fraction * int(keep.sum()))), keep.shape[0])
    if swaps <= 0:
        return mask.clone()
    weakest_kept = torch.where(keep, mag, torch.full_like(mag, math.inf)).min(1)
    groups = topk_mask(-weakest_kept.values, swaps)
    strongest_pruned = torch.where(keep, torch.full_like(grad, -1.0), grad).argmax(1)
    rows = torch.nonzero(groups).squeeze(1)
    new = keep.clone()
    new[rows, weakest_kept.indices[rows]] = False
    new[rows, strongest_pruned[rows]] = True
    return new.view(moved.shape).movedim(-1, in_axis)

