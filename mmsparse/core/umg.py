"""Unified mask generation (UMG): every subnet's mask from the magnitude of the one weight.

Order, as in Sparse Cocktail:

1. unstructured: magnitude top-k at every ratio, nested (one uint8 level per weight), with
   one threshold across all sparse layers (``unstructured_scope='global'``) or per layer;
2. N:M: the N largest of every M weights along the input-channel axis;
3. channel: per layer, rank output channels by ``sum((0.8 U + 0.2 NM) |W|)``, with U the
   unstructured mask of matching rank and NM the fraction of N:M subnets keeping each weight,
   and keep exactly ``C - round(ratio C)`` channels (the published code keeps one fewer);
4. block: nested magnitude masks over whole (out, in) blocks, per layer.

The same weights and spec always give the same masks (ties break by index). A layer whose
input channels ``M`` does not divide stays dense for that N:M subnet (a warning names it).
"""
import logging
from dataclasses import dataclass

import torch

from .attach import check_selection, nm_dense_layers
from .patterns import (SparsitySpecError, block_scores, channel_mask, channel_scores_l1,
                       channel_scores_umm, expand_blocks, global_levels, nested_levels, nm_mask)
from .subnets import parse_subnets

_LOG = logging.getLogger('mmsparse')
# Sparse Cocktail's channel score weights: sum over a channel of (0.8 U + 0.2 NM) |W|.
UNSTRUCTURED_WEIGHT, NM_WEIGHT = 0.8, 0.2


@dataclass(frozen=True)
class MaskSpec:
    """How masks are generated.

    Attributes:
        unstructured_scope: ``'global'`` (one magnitude threshold over all sparse layers,
            the paper's choice) or ``'layer'`` (the same ratio in every layer).
        channel_score: ``'guided'`` (UMG), ``'l1'`` or ``'umm'`` (Chase's score).
        block_shape: (out, in) channels per block for ``block@`` subnets.
    """
    unstructured_scope: str = 'global'
    channel_score: str = 'guided'
    block_shape: tuple = (4, 1)

    def __post_init__(self):
        if self.unstructured_scope not in ('global', 'layer'):
            raise SparsitySpecError(f"unstructured_scope must be 'global' or 'layer', got "
                                    f'{self.unstructured_scope!r}')
        if self.channel_score not in ('guided', 'l1', 'umm'):
            raise SparsitySpecError(f"channel_score must be 'guided', 'l1' or 'umm', got "
                                    f'{self.channel_score!r}')


def _ratios(specs, pattern):
    return sorted(s.ratio for s in specs if s.pattern == pattern)


def rank_match(index, count, other_count):
    """Index into another sorted list of ``other_count`` ratios at the same relative rank."""
    if other_count == 0:
        return None
    if count == 1:
        return other_count // 2
    return round(index * (other_count - 1) / (count - 1))


@torch.no_grad()
def generate_masks(network, subnets, spec=MaskSpec()):
    """Compute and store the masks of ``subnets`` in ``network``'s masked layers.

    Args:
        network: A :class:`~.attach.SparseNetwork`.
        subnets: Subnet names or specs (``dense`` is implicit and may be listed).
        spec: A :class:`MaskSpec`.
    """
    specs = parse_subnets(subnets)
    check_selection(network, specs, spec.block_shape)
    layers = network.layers
    scores = {n: layer.dense_weight.detach().abs().float() for n, layer in layers.items()}

    u_ratios = _ratios(specs, 'unstructured')
    if spec.unstructured_scope == 'global':
        u_levels = global_levels(scores, u_ratios)
    else:
        u_levels = {n: nested_levels(s, u_ratios) for n, s in scores.items()}
    nm_pairs = [(s.n, s.m) for s in sorted(specs, key=lambda s: s.sort_key) if s.pattern == 'nm']
    c_ratios = _ratios(specs, 'channel')
    b_ratios = _ratios(specs, 'block')

    dense_for = {(n, m): set(nm_dense_layers(network, n, m)) for n, m in nm_pairs}
    for (n, m), names in dense_for.items():
        if names:
            _LOG.warning('%d of %d masked layers stay dense for nm@%d:%d (input channels '
                         'not divisible by %d): %s', len(names), len(layers), n, m, m,
                         ', '.join(sorted(names)))
    nm_masks = {name: [((n, m), nm_mask(scores[name], n, m, layer.in_axis,
                                        where=f'layer {name}'))
                       for n, m in nm_pairs if name not in dense_for[(n, m)]]
                for name, layer in layers.items()}
    channel = _channel_masks(network, scores, spec, c_ratios, u_ratios, u_levels, nm_masks)
    for name, layer in layers.items():
        block = None
        if b_ratios:
            per_block = block_scores(scores[name], spec.block_shape, layer.out_axis,
                                     layer.in_axis)
            level = expand_blocks(nested_levels(per_block, b_ratios), spec.block_shape,
                                  scores[name].shape, layer.out_axis, layer.in_axis)
            block = (b_ratios, level.contiguous(), spec.block_shape)
        layer.set_masks(unstructured=(u_ratios, u_levels[name]), nm=nm_masks[name],
                        channel=channel.get(name), block=block)


def _channel_masks(network, scores, spec, c_ratios, u_ratios, u_levels, nm_masks):
    """``{layer: (ratios, bool (K, Cout))}``: one ranking per channel group, whose layers'
    scores are summed channel by channel, so they keep the same channels."""
    if not c_ratios:
        return {}
    masks = {}
    for group in network.channel_layer_groups():
        per_ratio = None
        for name in group:
            layer = network.layers[name]
            part = _channel_scores(scores[name], layer, spec.channel_score, u_ratios,
                                   u_levels[name], nm_masks[name], len(c_ratios))
            per_ratio = part if per_ratio is None else [a + b for a, b in zip(per_ratio, part)]
        keep = torch.stack([channel_mask(scores_i, ratio)
                            for scores_i, ratio in zip(per_ratio, c_ratios)])
        masks.update({name: (c_ratios, keep) for name in group})
    return masks


def _channel_scores(score, layer, method, u_ratios, u_level, nm, count):
    """Output-channel scores of one layer for each of ``count`` channel ratios.

    For UMG this equals :func:`~.patterns.channel_scores_guided` with the unstructured mask
    of matching rank, computed for all ranks at once: per channel, |W| is summed by
    unstructured level, and "kept at rank j" is "level >= j + 1".
    """
    if method == 'l1':
        return [channel_scores_l1(score, layer.out_axis)] * count
    if method == 'umm':
        return [channel_scores_umm(score, None, layer.out_axis)] * count
    cout = score.shape[layer.out_axis]
    per_channel = score.movedim(layer.out_axis, 0).reshape(cout, -1)
    nm_term = 0.0
    if nm:
        nm_sum = sum(m.movedim(layer.out_axis, 0).reshape(cout, -1).float() for _, m in nm)
        nm_term = NM_WEIGHT * (nm_sum / len(nm) * per_channel).sum(1)
    if not u_ratios:
        base = per_channel.sum(1) if not nm else 0.0
        return [base + nm_term] * count
    level = u_level.movedim(layer.out_axis, 0).reshape(cout, -1).long()
    by_level = torch.zeros(cout, len(u_ratios) + 1, device=per_channel.device).scatter_add_(
        1, level, per_channel)
    at_least = by_level.flip(1).cumsum(1).flip(1)  # column j: sum of |w| with level >= j
    return [UNSTRUCTURED_WEIGHT * at_least[:, rank_match(i, count, len(u_ratios)) + 1] + nm_term
            for i in range(count)]
