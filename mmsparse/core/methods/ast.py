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


AST_PATTERNS = ('unstructured', 'nm', 'dense')
SCOPES = ('global', 'layer')


def check_ast_subnets(count):
    """Raise unless AST has at least one subnet to alternate."""
    if int(count) < 1:
        raise ValueError(f'AST needs at least one subnet, got {count}')


def check_ast_specs(specs, who='AST'):
    """Return ``specs`` (parsed subnets) if AST can alternate them: unstructured or N:M,
    at least one of them sparse; raise naming the others."""
    bad = [s.name for s in specs if s.pattern not in AST_PATTERNS]
    if bad:
        raise ValueError(f'{who}: AST alternates unstructured or N:M subnets; cannot train '
                         f'{bad}')
    if not [s for s in specs if s.pattern != 'dense']:
        raise ValueError(f'{who} needs at least one sparse subnet, got '
                         f'{[s.name for s in specs]}')
    return list(specs)


def ast_order(specs, who='AST'):
    """The default training order: the sparse subnets of ``specs``, sorted."""
    return check_ast_specs(sorted((s for s in specs if s.pattern != 'dense'),
                                  key=lambda s: s.sort_key), who)


def check_ast_options(update_interval=100, prune_start=0.0, prune_end=0.5, prune_power=3,
                      regrow_end=0.8, regrow_initial=0.5, regrow_final=0.005,
                      scope='global', num_subnets=None, who='AST'):
    """Raise a ValueError naming the first impossible AST option (see :class:`ASTMasker`);
    ``num_subnets`` (when known) bounds ``update_interval`` from below."""
    if (isinstance(update_interval, bool) or not isinstance(update_interval, (int, float))
            or update_interval != int(update_interval) or update_interval < 1):
        raise ValueError(f'{who}: update_interval must be a positive integer, got '
                         f'{update_interval!r}')
    if num_subnets is not None and update_interval < num_subnets:
        raise ValueError(f'{who}: update_interval ({update_interval}) must be >= the number '
                         f'of subnets ({num_subnets})')
    if not 0.0 <= prune_start <= prune_end <= regrow_end <= 1.0:
        raise ValueError('need 0 <= prune_start <= prune_end <= regrow_end <= 1, got '
                         f'{prune_start}, {prune_end}, {regrow_end}')
    if not prune_power > 0:
        raise ValueError(f'{who}: prune_power must be > 0, got {prune_power!r}')
    for name, value in (('regrow_initial', regrow_initial), ('regrow_final', regrow_final)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f'{who}: {name} must be a fraction in [0, 1], got {value!r}')
    if scope not in SCOPES:
        raise ValueError(f"scope must be 'global' or 'layer', got {scope!r}")


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



class ASTMasker:
    """AST's masks of a SparseNetwork's masked layers, driven by the iteration counter.

    Iteration t trains ``order[t mod K]``. Masks follow a cubic gradual-pruning schedule
    (every subnet's masks re-derived from |W| every ``update_interval`` iterations until
    ``prune_end``), then prune-and-regrow until ``regrow_end``: each subnet, at its first
    own iteration of every interval, drops its smallest |w| and regrows the pruned weights
    with the largest gradient of its effective weight, a fraction cosine-decaying from
    ``regrow_initial`` to ``regrow_final``. Masks are frozen after ``regrow_end``.

    Args:
        layers: ``{name: masked layer}``.
        order: Subnet specs in training order (unstructured or N:M, maybe ``dense``).
        max_iters: Training length.
        update_interval: Iterations between mask updates (>= K).
        prune_start, prune_end, prune_power: the gradual-pruning schedule (fractions of
            training); densities fall from 1 to each subnet's target.
        regrow_end: prune-and-regrow runs from ``prune_end`` to here.
        regrow_initial, regrow_final: the cosine-decaying regrow fraction.
        scope: ``'global'`` (one magnitude threshold over all layers while pruning) or
            ``'layer'``. Prune-and-regrow keeps each layer's count.
    """

    def __init__(self, layers, order, max_iters, update_interval=100, prune_start=0.0,
                 prune_end=0.5, prune_power=3, regrow_end=0.8, regrow_initial=0.5,
                 regrow_final=0.005, scope='global'):
        self.order = check_ast_specs(order)
        self.num = len(self.order)
        check_ast_options(update_interval, prune_start, prune_end, prune_power, regrow_end,
                          regrow_initial, regrow_final, scope, self.num)
        self.layers = dict(layers)
        self.max_iters = int(max_iters)
        self.update_interval = int(update_interval)
        self.prune = dict(start=prune_start, end=prune_end, power=prune_power)
        self.regrow_args = dict(end=regrow_end, initial=regrow_initial, final=regrow_final)
        self.scope = scope
        self.prune_end_iter = math.ceil(prune_end * self.max_iters - 1e-9)
        self.taps = None  # {layer name: (mask tap, weight)} while a regrowth is captured

    # -- what is due -----------------------------------------------------------------------
    def subnet_at(self, iteration):
        """The subnet ``iteration`` trains."""
        return self.order[ast_subnet_index(iteration, self.num)]

    def prune_due(self, iteration):
        """True when gradual pruning re-derives every mask before ``iteration``."""
        return iteration <= self.prune_end_iter and (
            iteration % self.update_interval == 0 or iteration == self.prune_end_iter)

    def regrow_due(self, iteration):
        """True when the subnet of ``iteration`` prunes and regrows after it."""
        if not self.prune_end_iter < iteration <= self.regrow_args['end'] * self.max_iters:
            return False
        index = ast_subnet_index(iteration, self.num)
        return (self.order[index].pattern != 'dense'
                and update_due(iteration, index, self.num, self.update_interval))

    def fraction_at(self, iteration):
        """The prune-and-regrow fraction at ``iteration``."""
        return regrow_fraction(iteration, self.max_iters, self.prune['end'],
                               self.regrow_args['end'], self.regrow_args['initial'],
                               self.regrow_args['final'])

    # -- masks -----------------------------------------------------------------------------
    def _specs(self, pattern):
        return sorted((s for s in self.order if s.pattern == pattern), key=lambda s: s.sort_key)

    @torch.no_grad()
    def prune_masks(self, iteration):
        """Gradual pruning: every subnet's mask from |W| at its scheduled density."""
        unstructured, nm = self._specs('unstructured'), self._specs('nm')
        scores = {n: layer.dense_weight.detach().abs().float()
                  for n, layer in self.layers.items()}
        levels = None
        if unstructured:
            sparsities = [gradual_sparsity(iteration, self.max_iters, s.ratio, **self.prune)
                          for s in unstructured]
            levels = scheduled_levels(scores, sparsities, self.scope)
        # As in generate_masks, a layer whose input channels M does not divide stays dense.
        for name, layer in self.layers.items():
            layer.set_masks(
                unstructured=([s.ratio for s in unstructured], levels[name]) if levels else None,
                nm=[((s.n, s.m), nm_mask(scores[name], s.n, s.m, layer.in_axis, name))
                    for s in nm if layer.in_channels_count % s.m == 0] if nm else None)

    def capture(self):
        """Make the active subnet's cached masks leaves that require grad: the backward then
        gives dL/dM = dL/dW_eff * W (W_eff = W * M), from which the dense gradient of the
        effective weight, which pruned weights need for regrowth, is recovered."""
        self.taps = {}
        for name, layer in self.layers.items():
            tap = layer.tap_active_mask()
            if tap is not None:
                self.taps[name] = (tap, layer.dense_weight.detach().clone())

    @torch.no_grad()
    def regrow(self, spec, fraction, reduce=None):
        """Prune-and-regrow ``spec`` from the captured gradient.

        Args:
            spec: The subnet trained in the captured iteration.
            fraction: Fraction of its kept weights to replace.
            reduce: Called on every layer's dense gradient in place before it is used
                (e.g. a mean over the ranks), or None.

        Returns:
            tuple: (weights swapped, weights kept).
        """
        taps, self.taps = self.taps, None
        swapped = kept = 0
        for name, (tap, weight) in taps.items():
            layer = self.layers[name]
            layer.release_tap()
            grad = tap.grad if tap.grad is not None else torch.zeros_like(tap)
            grad = torch.where(weight != 0, grad / weight, torch.zeros_like(grad))
            if reduce is not None:
                reduce(grad)
            if not bool(grad.any()):  # the layer had no gradient: nothing to rank by
                continue
            magnitude = layer.dense_weight.detach().abs()
            old = layer.mask_for(spec)
            if spec.pattern == 'unstructured':
                ratios = [round(r, 6) for r in layer.mask_unstructured_ratios.tolist()]
                index = sorted(ratios).index(round(spec.ratio, 6))
                level = regrow_level(layer.mask_unstructured_level, index, magnitude, grad,
                                     fraction)
                layer.set_masks(unstructured=(layer.mask_unstructured_ratios.tolist(), level))
            else:
                nm = [((n, m), layer.mask_for(f'nm@{n}:{m}'))
                      for n, m in layer.mask_nm_nm.tolist()]
                nm = [(pair, regrow_nm(mask, magnitude, grad, fraction, spec.m, layer.in_axis)
                       if pair == (spec.n, spec.m) else mask) for pair, mask in nm]
                layer.set_masks(nm=nm)
            swapped += int((layer.mask_for(spec) & ~old).sum())
            kept += int(old.sum())
        return swapped, kept
