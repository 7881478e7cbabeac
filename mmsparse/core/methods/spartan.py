"""Spartan (NeurIPS 2022): learned sparsity from soft top-k masks and dual averaging.

Every training iteration:

1. values ``v`` = ``|w|`` per weight (or summed per (out, in) block), costs ``c`` (1 per
   weight, the block's weight count, times the layer's FLOPs per weight with the FLOPs cost
   model), budget = the current density times the total cost;
2. the soft mask ``m = soft_topk(v, c, budget, β)`` (:mod:`.soft_topk`), differentiable in w;
3. the forward uses the hard k-sparse projection of the soft-masked weights, ``Π_k(m ⊙ w)``
   (keep the k highest-``m`` entries, which are the k highest ``v / c``), with a straight-
   through backward: the gradient reaches every dense weight, through ``m`` as well.

Schedules (:class:`SpartanSchedule`, functions of the iteration like every mmsparse
schedule): density 1 -> target over the first 20% of training, β linear to
``20·sqrt(block size)`` by 80%, then the mask is frozen: the soft mask is merged into the
weights once (``w <- m ⊙ w``, as the authors' ``finalize`` merges it) and the last 20%
fine-tunes ``w ⊙ hard mask``, exactly the subnet that is evaluated and exported.

Allocation: ``global`` (one budget over all layers: the per-layer densities are learned),
``uniform`` (the same density per layer) or ``erk`` (:func:`.allocation.erk_densities`).

Values are divided by their mean value per cost (a detached scalar per budget group), so β
means the same for any weight scale [ours: the authors use raw ``|w|``].
"""
import math
from dataclasses import dataclass

import torch

from .allocation import erk_densities
from ..patterns import block_scores, check_block_shape, check_ratio, expand_blocks, keep_count
from .soft_topk import hard_topk, soft_topk
from ..stats import record_positions

ALLOCATIONS = ('global', 'uniform', 'erk')


def _linear(iteration, end_iter, start, end):
    if iteration >= end_iter or end_iter <= 0:
        return end
    return start + (end - start) * max(iteration, 0) / end_iter


def default_beta_end(block_shape=None, base=20.0):
    """The paper's final β: ``base·sqrt(block size)`` (block averaging shrinks the spread of
    the values by sqrt of the block size)."""
    bo, bi = block_shape or (1, 1)
    return base * math.sqrt(bo * bi)


def check_spartan_schedule(sparsity=0.5, anneal_end=0.2, beta_start=1.0, beta_end=20.0,
                           freeze_at=0.8):
    """Raise a ValueError naming the first impossible :class:`SpartanSchedule` option (any
    training length)."""
    check_ratio(sparsity, 'Spartan sparsity')
    if not 0.0 <= anneal_end <= freeze_at <= 1.0:
        raise ValueError('Spartan schedule needs 0 <= anneal_end <= freeze_at <= 1, got '
                         f'anneal_end={anneal_end}, freeze_at={freeze_at}')
    if not 0.0 <= beta_start <= beta_end:
        raise ValueError(f'Spartan needs 0 <= beta_start <= beta_end, got '
                         f'{beta_start}, {beta_end}')


@dataclass(frozen=True)
class SpartanSchedule:
    """Density, β and freezing as functions of the iteration (0-based, the one about to run).

    Attributes:
        sparsity: Target fraction of the (costed) weights removed, in [0, 1).
        max_iters: Training length.
        anneal_end: Fraction of training at which the density reaches the target.
        beta_start, beta_end: β rises linearly from ``beta_start`` to ``beta_end``...
        freeze_at: ... reached at this fraction of training, where the mask freezes.
    """
    sparsity: float
    max_iters: int
    anneal_end: float = 0.2
    beta_start: float = 1.0
    beta_end: float = 20.0
    freeze_at: float = 0.8

    def __post_init__(self):
        if self.max_iters < 1:
            raise ValueError(f'Spartan max_iters must be >= 1, got {self.max_iters}')
        check_spartan_schedule(self.sparsity, self.anneal_end, self.beta_start, self.beta_end,
                               self.freeze_at)

    @property
    def anneal_iter(self):
        return int(round(self.anneal_end * self.max_iters))

    @property
    def freeze_iter(self):
        """First iteration trained with the frozen mask."""
        return int(round(self.freeze_at * self.max_iters))

    def sparsity_at(self, iteration):
        return _linear(iteration, self.anneal_iter, 0.0, self.sparsity)

    def density_at(self, iteration):
        return 1.0 - self.sparsity_at(iteration)

    def beta_at(self, iteration):
        return _linear(iteration, self.freeze_iter, self.beta_start, self.beta_end)

    def frozen(self, iteration):
        return iteration >= self.freeze_iter


def flops_costs(model, run, names):
    """FLOPs cost model: per-weight cost of each layer = MACs per weight in one ``run(model)``.

    For a conv that is its output H·W (summed over calls: a head shared by five FPN levels
    pays for all five), for a Linear the number of rows it processes. High-resolution layers
    cost more per weight, so cost-sensitive allocation prunes them more.

    Returns:
        ``{name: float cost}``.
    """
    positions = record_positions(model, run)
    missing = [n for n in names if not positions.get(n)]
    if missing:
        raise ValueError(f'FLOPs cost model: layers {missing[:5]} did not run in the '
                         'analysis forward, so their cost is unknown')
    return {n: float(positions[n]) for n in names}


def _float(weight):
    """fp32 for half-precision weights (AMP), the weight's own dtype otherwise."""
    return weight.float() if weight.dtype in (torch.float16, torch.bfloat16) else weight


class _DualAveraging(torch.autograd.Function):
    """Forward ``(w ⊙ m) ⊙ hard`` (the hard projection of the soft-masked weights); backward
    straight through the projection, i.e. as if the forward were ``w ⊙ m``."""

    @staticmethod
    def forward(ctx, weight, soft, hard):
        ctx.save_for_backward(weight, soft)
        return (weight * soft).mul_(hard)

    @staticmethod
    def backward(ctx, grad):
        weight, soft = ctx.saved_tensors
        grad_soft = grad * weight if ctx.needs_input_grad[1] else None
        return grad * soft, grad_soft, None


def dual_averaging_weight(weight, soft, hard, through_mask=True):
    """``Π_k(m ⊙ w)`` forward; gradient straight through the projection to every weight.

    Args:
        weight: The dense weight (a leaf parameter).
        soft: Weight-shaped soft mask, or None for a dense layer (returns ``weight``).
        hard: Bool weight-shaped hard mask.
        through_mask: Also differentiate through the soft mask (Spartan); False treats ``m``
            as a constant.
    """
    if soft is None:
        return weight
    weight = _float(weight)
    soft = soft.to(weight.dtype)
    return _DualAveraging.apply(weight, soft if through_mask else soft.detach(),
                                hard.to(weight.dtype))


class ForwardWeight:
    """A layer's ``weight_transform``: a forward weight precomputed once per iteration
    (a global soft top-k couples all layers).

    With ``spec``, only while ``spec`` is the layer's active subnet: under any other (e.g. the
    distiller's dense teacher pass inside the same iteration) the layer's ordinary masked
    weight is returned.
    """

    def __init__(self, layer, weight, spec=None):
        self.layer, self.weight, self.spec = layer, weight, spec

    def __call__(self, dense_weight):
        if dense_weight is not self.layer.dense_weight:
            raise RuntimeError('Spartan forward weight used with another parameter')
        if self.spec is not None and self.layer.active_subnet != self.spec:
            mask = self.layer.active_mask(dense_weight)
            return dense_weight if mask is None else dense_weight * mask
        return self.weight


def spartan_forward(masker, sparsity, beta, through_mask=True, spec=None, hard_mask=None):
    """One Spartan step: every masked layer's forward weight becomes ``Π_k(m ⊙ w)``.

    The soft masks ``m`` are computed from the current weights at ``sparsity`` and ``β``
    (in fp32, also under AMP); the forward is the hard projection with a straight-through
    backward (:func:`dual_averaging_weight`), set as each layer's ``weight_transform``
    (:class:`ForwardWeight`; None for a layer that stays dense).

    Args:
        masker: A :class:`SpartanMasker` over the layers.
        sparsity, beta: The budget and the soft top-k sharpness.
        through_mask: Differentiate through the soft mask too (Spartan).
        spec: Apply the forward only while this subnet is active (None: always).
        hard_mask: ``(name, layer) -> bool mask`` replacing the solver's hard mask ``Π_k``
            (e.g. the layer's stored mask of ``spec``), or None.

    Returns:
        The masks, ``{name: (soft or None, hard)}`` (see :meth:`SpartanMasker.masks`).
    """
    device = next(iter(masker.layers.values())).dense_weight.device
    with torch.autocast(device_type=device.type, enabled=False):
        masks = masker.masks(sparsity, beta)
        for name, (soft, hard) in masks.items():
            layer = masker.layers[name]
            if soft is None:
                layer.weight_transform = None
                continue
            if hard_mask is not None:
                hard = hard_mask(name, layer)
            layer.weight_transform = ForwardWeight(
                layer, dual_averaging_weight(layer.dense_weight, soft, hard, through_mask),
                spec)
    return masks


def clear_forward_weights(layers):
    """Remove every layer's ``weight_transform`` (plain masked forward again; drops the
    step's autograd graph)."""
    for layer in layers.values():
        layer.weight_transform = None


class SpartanMasker:
    """Soft and hard masks of a set of masked layers under one Spartan configuration.

    Args:
        layers: ``{name: masked layer}`` (:mod:`.layers`).
        allocation: ``'global'``, ``'uniform'`` or ``'erk'``.
        block_shape: (out, in) channels per block, or None for unstructured masks.
        layer_costs: ``{name: cost per weight}`` (e.g. :func:`flops_costs`), or None for
            unit costs (a parameter budget).
        tol, max_iter: Soft top-k solver settings (budget tolerance, relative).
    """

    def __init__(self, layers, allocation='global', block_shape=None, layer_costs=None,
                 tol=1e-4, max_iter=100):
        if allocation not in ALLOCATIONS:
            raise ValueError(f'Spartan allocation must be one of {ALLOCATIONS}, got '
                             f'{allocation!r}')
        if not layers:
            raise ValueError('Spartan needs at least one masked layer')
        self.layers = dict(layers)
        self.allocation = allocation
        self.block_shape = None if block_shape in (None, (1, 1), [1, 1]) else tuple(block_shape)
        for name, layer in self.layers.items():
            if self.block_shape is not None:
                check_block_shape(layer.dense_weight.shape, self.block_shape, layer.out_axis,
                                  layer.in_axis, where=f'layer {name}')
        if layer_costs is not None:
            missing = sorted(set(self.layers) - set(layer_costs))
            if missing:
                raise ValueError(f'Spartan layer_costs has no cost for {missing[:5]}')
            if any(layer_costs[n] <= 0 for n in self.layers):
                raise ValueError('Spartan layer costs must be positive')
            # Only ratios of costs matter; normalising to a weight-averaged 1 keeps v / c
            # (and so β) on the same scale as with unit costs.
            sizes = {n: layer.dense_weight.numel() for n, layer in self.layers.items()}
            mean = sum(layer_costs[n] * sizes[n] for n in sizes) / sum(sizes.values())
            self.costs = {n: float(layer_costs[n]) / mean for n in self.layers}
        else:
            self.costs = {n: 1.0 for n in self.layers}
        self.tol, self.max_iter = tol, max_iter
        self._mu = {}  # warm starts of the solver, per budget group

    def reset(self):
        """Forget the solver's warm starts, so the next masks depend on the weights alone
        (e.g. for masks that must be reproduced exactly after resuming)."""
        self._mu.clear()

    # -- units: weights or blocks -----------------------------------------------------------
    def _values(self, layer):
        scores = _float(layer.dense_weight).abs()
        if self.block_shape is None:
            return scores
        return block_scores(scores, self.block_shape, layer.out_axis, layer.in_axis)

    def _unit_cost(self, name, layer):
        if self.block_shape is None:
            return self.costs[name]
        shape = layer.dense_weight.shape
        per_pair = shape.numel() // (shape[layer.out_axis] * shape[layer.in_axis])
        return self.costs[name] * self.block_shape[0] * self.block_shape[1] * per_pair

    def _expand(self, layer, unit_mask):
        if self.block_shape is None:
            return unit_mask
        return expand_blocks(unit_mask, self.block_shape, layer.dense_weight.shape,
                             layer.out_axis, layer.in_axis)

    def layer_densities(self, density):
        """Per-layer target densities for ``uniform`` / ``erk`` (None for ``global``)."""
        if self.allocation == 'global':
            return None
        if self.allocation == 'uniform':
            return {n: density for n in self.layers}
        return erk_densities({n: l.dense_weight.shape for n, l in self.layers.items()},
                             density)

    # -- masks ------------------------------------------------------------------------------
    def masks(self, sparsity, beta):
        """Soft and hard masks at ``sparsity`` and ``β``.

        The soft masks carry the autograd graph back to the weights when grad is enabled.

        Returns:
            ``{name: (soft or None, hard bool)}``, weight-shaped; soft is None where the
            layer stays dense (sparsity 0, or an ERK density of 1).
        """
        check_ratio(sparsity, 'Spartan sparsity')
        if self.allocation == 'global':
            groups = [('global', list(self.layers), sparsity)]
        else:
            densities = self.layer_densities(1.0 - sparsity)
            groups = [(n, [n], 1.0 - densities[n]) for n in self.layers]
        out = {}
        for key, names, group_sparsity in groups:
            out.update(self._group_masks(key, names, group_sparsity, beta))
        return out

    def _group_masks(self, key, names, sparsity, beta):
        layers = [self.layers[n] for n in names]
        if sparsity <= 1e-12:
            return {n: (None, torch.ones_like(l.dense_weight, dtype=torch.bool))
                    for n, l in zip(names, layers)}
        values = [self._values(layer) for layer in layers]
        sizes = [v.numel() for v in values]
        flat = torch.cat([v.reshape(-1) for v in values])
        unit_costs = [self._unit_cost(n, l) for n, l in zip(names, layers)]
        if len(set(unit_costs)) == 1:  # equal costs: a scalar, and an exact keep count
            costs = flat.new_tensor(unit_costs[0])
            budget = keep_count(flat.numel(), sparsity) * unit_costs[0]
        else:
            costs = torch.cat([flat.new_full((s, ), c) for s, c in zip(sizes, unit_costs)])
            budget = (1.0 - sparsity) * float(costs.sum(dtype=torch.float64))
        total = float(costs.expand_as(flat).sum(dtype=torch.float64))
        if budget >= total * (1 - 1e-12):
            return {n: (None, torch.ones_like(l.dense_weight, dtype=torch.bool))
                    for n, l in zip(names, layers)}
        # β applies to values divided by their mean value per cost: fold that into β.
        scale = max(float((flat.detach() / costs).mean()), 1e-12)
        soft, mu = soft_topk(flat, costs, budget, beta / scale, self._mu.get(key), self.tol,
                             self.max_iter)
        self._mu[key] = mu
        hard = hard_topk(flat.detach(), costs, budget)
        out = {}
        for n, layer, s_part, h_part, shape in zip(names, layers, soft.split(sizes),
                                                   hard.split(sizes), (v.shape for v in values)):
            out[n] = (self._expand(layer, s_part.view(shape)),
                      self._expand(layer, h_part.view(shape)))
        return out

    # -- what the hook does with them ------------------------------------------------------
    @torch.no_grad()
    def store(self, hard, ratio):
        """Write the hard masks into the layers' standard buffers as subnet ``ratio`` of the
        unstructured (or block) pattern, so evaluation and export need no Spartan code."""
        for name, (_, mask) in hard.items():
            layer = self.layers[name]
            level = mask.to(torch.uint8).contiguous()
            if self.block_shape is None:
                layer.set_masks(unstructured=([ratio], level))
            else:
                layer.set_masks(block=([ratio], level, self.block_shape))

    def freeze(self, sparsity, beta):
        """The end of annealing: merge the soft masks at ``sparsity`` and ``β`` into the
        weights (:meth:`merge_soft`) and store the hard ones as subnet ``sparsity``."""
        device = next(iter(self.layers.values())).dense_weight.device
        with torch.no_grad(), torch.autocast(device_type=device.type, enabled=False):
            masks = self.masks(sparsity, beta)
            self.merge_soft(masks)
        self.store(masks, sparsity)

    @torch.no_grad()
    def merge_soft(self, masks):
        """``w <- m ⊙ w`` (where a soft mask exists): the weights the forward was using."""
        for name, (soft, _) in masks.items():
            if soft is not None:
                weight = self.layers[name].dense_weight
                weight.mul_(soft.detach().to(weight.dtype))

