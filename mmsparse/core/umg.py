"""Unified mask generation (UMG): every subnet's mask from the magnitude of the one weight.

Order, as in Sparse Cocktail:

1. unstructured: magnitude top-k at every ratio, nested (one uint8 level per weight), with
   one threshold across all sparse layers (``unstructured_scope='global'``) or per layer;
2. N:M: the N largest of every M weights along the input-channel axis;
3. channel: per layer, rank output channels by ``sum((0.8 U + 0.2 NM) |W|)``, with U the
   unstructured mask of matching rank and NM the fraction of N:M subnets keeping each weight,
   and keep exactly ``C - round(ratio C)`` channels (the published code keeps one fewer);
4. block: nested magnitude masks over whole (out, in) blocks, per layer.

The same weights and spec always give the same masks (ties break by index).
"""
from dataclasses import dataclass

import torch

from .patterns import (SparsitySpecError, block_scores, channel_mask, channel_scores_guided,
                       channel_scores_l1, channel_scores_umm, expand_blocks, level_mask,
                       nested_levels, nm_mask)
from .subnets import parse_subnets


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


def _global_levels(scores, ratios):
    """Nested levels with one threshold across all layers; split back per layer."""
    flat = torch.cat([s.reshape(-1) for s in scores.values()])
    levels = nested_levels(flat, ratios)
    out, start = {}, 0
    for name, s in scores.items():
        out[name] = levels[start:start + s.numel()].view(s.shape)
        start += s.numel()
    return out


def _rank_match(index, count, other_count):
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
    from .attach import check_selection
    specs = parse_subnets(subnets)
    check_selection(network, specs, spec.block_shape)
    layers = network.layers
    scores = {n: layer.dense_weight.detach().abs().float() for n, layer in layers.items()}

    u_ratios = _ratios(specs, 'unstructured')
    if spec.unstructured_scope == 'global':
        u_levels = _global_levels(scores, u_ratios)
    else:
        u_levels = {n: nested_levels(s, u_ratios) for n, s in scores.items()}
    nm_pairs = [(s.n, s.m) for s in sorted(specs, key=lambda s: s.sort_key) if s.pattern == 'nm']
    c_ratios = _ratios(specs, 'channel')
    b_ratios = _ratios(specs, 'block')

    for name, layer in layers.items():
        score = scores[name]
        nm = [((n, m), nm_mask(score, n, m, layer.in_axis, where=f'layer {name}'))
              for n, m in nm_pairs]
        block = None
        if b_ratios:
            per_block = block_scores(score, spec.block_shape, layer.out_axis, layer.in_axis)
            level = expand_blocks(nested_levels(per_block, b_ratios), spec.block_shape,
                                  score.shape, layer.out_axis, layer.in_axis)
            block = (b_ratios, level.contiguous(), spec.block_shape)
        channel = None
        if c_ratios and name in network.channel_layers:
            channel = (c_ratios, torch.stack([
                channel_mask(_channel_scores(score, layer, spec.channel_score, u_ratios,
                                             u_levels[name], nm, i, len(c_ratios)), ratio)
                for i, ratio in enumerate(c_ratios)]))
        layer.set_masks(unstructured=(u_ratios, u_levels[name]), nm=nm, channel=channel,
                        block=block)


def _channel_scores(score, layer, method, u_ratios, u_level, nm, index, count):
    """Output-channel scores of one layer for the ``index``-th of ``count`` channel ratios."""
    if method == 'l1':
        return channel_scores_l1(score, layer.out_axis)
    if method == 'umm':
        return channel_scores_umm(score, None, layer.out_axis)
    j = _rank_match(index, count, len(u_ratios))
    u_mask = None if j is None else level_mask(u_level, u_ratios, u_ratios[j]).float()
    nm_mean = torch.stack([m.float() for _, m in nm]).mean(0) if nm else None
    return channel_scores_guided(score, u_mask, nm_mean, layer.out_axis)

