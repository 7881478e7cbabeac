"""Dynamic sparse training (RigL-style) mask update: magnitude prune, gradient grow.

Pure functions on ``{layer name: tensor}`` dicts, used by Chase (:mod:`.chase`) and usable
by any DST method; the budget is met exactly, and ties break by index so every rank
computes the same masks.
"""
import math

import torch

from ..patterns import topk_mask


def _split(flat, like):
    out, start = {}, 0
    for name, t in like.items():
        out[name] = flat[start:start + t.numel()].view(t.shape)
        start += t.numel()
    return out


def _prune_grow_flat(magnitude, grad, mask, allowed, keep_total, drop_fraction):
    """:func:`prune_and_grow` on flat tensors (one layer, or all layers concatenated)."""
    current = int(mask.sum())
    n_drop = min(current, int(round(drop_fraction * current)) + max(0, current - keep_total))
    kept = topk_mask(torch.where(mask, magnitude, torch.full_like(magnitude, -1.0)),
                     current - n_drop) & mask
    dropped = mask & ~kept
    score = torch.where(dropped, torch.full_like(grad, -1.0), grad)
    score = torch.where(allowed & ~kept, score, torch.full_like(grad, -2.0))
    grown = topk_mask(score, keep_total - (current - n_drop)) & allowed & ~kept
    return kept | grown, n_drop, int(grown.sum())


def _layer_targets(current, capacity, keep_total):
    """Split ``keep_total`` over layers in proportion to their kept counts (largest
    remainder), never above a layer's capacity."""
    total = sum(current.values())
    raw = {n: keep_total * c / total for n, c in current.items()}
    target = {n: min(capacity[n], math.floor(r)) for n, r in raw.items()}
    order = sorted(raw, key=lambda n: math.floor(raw[n]) - raw[n])  # largest remainder first
    left = keep_total - sum(target.values())
    while left > 0:
        room = [n for n in order if target[n] < capacity[n]]
        for name in room[:left]:
            target[name] += 1
        left = keep_total - sum(target.values())
    return target


def prune_and_grow(weights, masks, grads, allowed, keep_total, drop_fraction, scope='global'):
    """One DST update: magnitude prune, gradient grow, to exactly ``keep_total``.

    Args:
        weights, grads: ``{name: tensor}`` (grads: dense gradients, i.e. also at pruned
            positions).
        masks: ``{name: bool}`` current masks.
        allowed: ``{name: bool}`` positions that may be kept (False on removed channels).
        keep_total: Kept weights after the update.
        drop_fraction: Fraction of the (allowed) kept weights dropped and regrown.
        scope: ``'global'`` (Chase: one magnitude ranking and one gradient ranking across
            all layers) or ``'layer'`` (RigL: each layer drops and regrows its own weights,
            and ``keep_total`` is split over layers in proportion to what they keep, so the
            per-layer densities keep their initial ERK shape).

    Returns:
        ``(new_masks, pruned, grown)``: the masks and how many weights were dropped / grown.
        Dropped weights are the smallest |w| among kept ones (ties: lower index); grown ones
        the largest |grad| among the others, preferring weights not dropped in this very
        update (a regrown weight restarts at zero, which would make the drop pointless).
    """
    if scope not in ('global', 'layer'):
        raise ValueError(f"prune/grow scope must be 'global' or 'layer', got {scope!r}")
    flat = {n: (weights[n].detach().abs().float().reshape(-1),
                grads[n].detach().abs().float().reshape(-1),
                (masks[n] & allowed[n]).reshape(-1), allowed[n].reshape(-1)) for n in masks}
    capacity = sum(int(a.sum()) for _, _, _, a in flat.values())
    if not 0 < keep_total <= capacity:
        raise ValueError(f'cannot keep {keep_total} weights: {capacity} are allowed '
                         '(not on removed channels)')
    if scope == 'global':
        joined = [torch.cat([f[i] for f in flat.values()]) for i in range(4)]
        new, pruned, grown = _prune_grow_flat(*joined, keep_total, drop_fraction)
        return _split(new, masks), pruned, grown
    targets = _layer_targets({n: int(f[2].sum()) for n, f in flat.items()},
                             {n: int(f[3].sum()) for n, f in flat.items()}, keep_total)
    out, pruned, grown = {}, 0, 0
    for name, f in flat.items():
        new, p, g = _prune_grow_flat(*f, targets[name], drop_fraction)
        out[name] = new.view(masks[name].shape)
        pruned, grown = pruned + p, grown + g
    return out, pruned, grown
