"""Pure mask functions, one per sparsity pattern: ``(scores, spec) -> bool mask``.

Scores are usually ``|W|``. Every function keeps an *exact* number of elements, breaking ties
by flat index (lower index kept first), so the same scores always give the same mask and
masks at increasing sparsity are nested. Nothing here knows about modules: the caller passes
the axes (for ``ConvTranspose2d`` the input-channel axis is 0, not 1).
"""
import torch


class SparsitySpecError(ValueError):
    """An impossible sparsity for a tensor or layer (ratio, N:M, block shape)."""


def check_ratio(ratio, what='sparsity'):
    """Raise unless ``0 <= ratio < 1``."""
    if not 0.0 <= float(ratio) < 1.0:
        raise SparsitySpecError(f'{what} must be in [0, 1), got {ratio}')


def keep_count(total, ratio, min_keep=1):
    """How many of ``total`` elements a sparsity ``ratio`` keeps (rounded, at least 1)."""
    check_ratio(ratio)
    return max(min(min_keep, total), total - int(round(ratio * total)))


def topk_mask(scores, keep):
    """Bool mask keeping exactly ``keep`` largest scores (ties: lower flat index first).

    Linear time (a histogram or ``kthvalue`` plus an exact tie fix-up), no full sort.
    """
    total = scores.numel()
    if keep >= total:
        return torch.ones_like(scores, dtype=torch.bool)
    if keep <= 0:
        return torch.zeros_like(scores, dtype=torch.bool)
    if total <= (1 << 12):  # e.g. channel scores: a stable sort is cheapest and exact
        mask = torch.zeros(total, dtype=torch.bool, device=scores.device)
        mask[torch.argsort(scores.reshape(-1), descending=True, stable=True)[:keep]] = True
        return mask.view(scores.shape)
    return _exact_levels(scores.reshape(-1).float(), [keep]).view(scores.shape) >= 1


def _levels_simple(flat, keeps):
    """Thresholds (exact k-th largest values), ``level = #{k: x >= t_k}`` and, per
    threshold, where its ties can be (None: anywhere)."""
    total = flat.numel()
    thresholds = torch.stack([torch.kthvalue(flat, total - k + 1).values for k in keeps])
    level = torch.bucketize(flat, thresholds, right=True).to(torch.uint8)
    return thresholds, level, [None] * len(keeps)


def _levels_radix(flat, keeps, drop_bits=12):
    """:func:`_levels_simple` for large non-negative tensors, in a few linear passes.

    Non-negative floats order like their int32 bit patterns, so a histogram of the top bits
    (2048 bins per power of two) locates every threshold's bin exactly; each threshold is
    then the k-th largest among its bin's few elements, and the levels are a table lookup
    per bin plus a correction inside the threshold bins.
    """
    coarse = flat.view(torch.int32) >> drop_bits
    counts = torch.bincount(coarse)
    at_or_above = counts.flip(0).cumsum(0).flip(0)  # elements in bin >= b
    bins = []
    for keep in keeps:  # the highest bin b with at_or_above[b] >= keep holds the threshold
        bins.append(int(torch.nonzero(at_or_above >= keep).max()))
    is_candidate = torch.zeros(counts.numel(), dtype=torch.bool, device=flat.device)
    reach_table = torch.zeros(counts.numel(), dtype=torch.uint8, device=flat.device)
    for b in bins:
        is_candidate[b] = True
        reach_table[b + 1:] += 1
    cand_idx = torch.nonzero(is_candidate[coarse]).squeeze(1)
    cand_val, cand_bin = flat[cand_idx], coarse[cand_idx]
    level = reach_table[coarse]
    thresholds, tie_spaces = [], []
    for keep, b in zip(keeps, bins):
        above = int(at_or_above[b + 1]) if b + 1 < counts.numel() else 0
        in_bin = cand_bin == b
        vals = cand_val[in_bin]
        threshold = torch.kthvalue(vals, vals.numel() - (keep - above) + 1).values
        thresholds.append(threshold)
        level[cand_idx[in_bin & (cand_val >= threshold)]] += 1
        tie_spaces.append(cand_idx[in_bin])  # equal values share a bin
    return torch.stack(thresholds), level, tie_spaces


def nested_levels(scores, ratios):
    """Encode nested magnitude masks at several sparsities as one uint8 level per element.

    ``level[i]`` = number of ``ratios`` at which element i is kept. With the ratios sorted
    ascending, an element kept at the k-th one (k from 0) is kept at all less sparse ones,
    so its level is at least k + 1: the mask at the k-th ratio is ``level >= k + 1``. Masks
    are nested by construction: an element pruned at ratio r is pruned at every higher ratio.
    Each mask equals ``topk_mask(scores, keep_count(n, ratio))`` exactly, ties included.

    Args:
        scores: Any-shaped tensor of importance scores.
        ratios: Sparsities in [0, 1), any order, at most 255 of them.
    """
    if len(ratios) > 255:
        raise SparsitySpecError(f'at most 255 nested ratios, got {len(ratios)}')
    if not ratios:
        return torch.zeros(scores.shape, dtype=torch.uint8, device=scores.device)
    keeps = [keep_count(scores.numel(), r) for r in sorted(ratios)]  # non-increasing
    return _exact_levels(scores.reshape(-1).float(), keeps).view(scores.shape)


def _exact_levels(flat, keeps):
    """``level[i]`` = how many of the (non-increasing) ``keeps`` keep element i."""
    total = flat.numel()
    # level = number of (ascending) thresholds t_k each element reaches (x >= t_k) ...
    nonnegative = total > (1 << 16) and int(flat.view(torch.int32).min()) >= 0  # not -0.0
    thresholds, level, tie_spaces = (_levels_radix if nonnegative else _levels_simple)(
        flat, keeps)
    # ... then drop surplus ties at each threshold, highest index first (so the kept ties
    # are a prefix by index at every ratio, and the masks stay nested).
    reached = torch.bincount(level, minlength=len(keeps) + 1).flip(0).cumsum(0).flip(0)
    for k, (keep, threshold, space) in enumerate(zip(keeps, thresholds, tie_spaces)):
        surplus = int(reached[k + 1]) - keep
        if surplus > 0:
            ties = (torch.nonzero(flat == threshold).squeeze(1) if space is None
                    else space[flat[space] == threshold])  # ascending indices either way
            level[ties[ties.numel() - surplus:]] -= 1
    return level


def level_mask(level, ratios, ratio):
    """The bool mask at ``ratio`` from a :func:`nested_levels` encoding over ``ratios``."""
    return level >= sorted(ratios).index(ratio) + 1


def _in_axis_last(tensor, in_axis):
    """Move the input-channel axis last: conv (Cout, Cin, kh, kw) -> (Cout, kh, kw, Cin)."""
    return tensor.movedim(in_axis, -1)


def check_nm(n, m, in_channels, where='tensor'):
    """Raise unless N:M is possible for ``in_channels`` input channels."""
    if not 0 < n < m:
        raise SparsitySpecError(f'N:M sparsity needs 0 < N < M, got {n}:{m}')
    if in_channels % m:
        raise SparsitySpecError(f'{where}: {in_channels} input channels are not divisible by '
                                f'M={m}, so {n}:{m} sparsity is impossible (exclude the layer)')


def nm_mask(scores, n, m, in_axis=1, where='tensor'):
    """Keep the ``n`` largest of every ``m`` consecutive weights along the input-channel axis.

    Conv weights (Cout, Cin, kh, kw) are grouped per kernel position along Cin, as NVIDIA's
    ASP and TensorRT do; Linear (out, in) along ``in``; ConvTranspose2d (Cin, Cout, kh, kw)
    needs ``in_axis=0``.
    """
    check_nm(n, m, scores.shape[in_axis], where)
    moved = _in_axis_last(scores, in_axis)
    groups = moved.reshape(-1, m)
    if m > 4:  # a stable sort is the faster exact ranking for larger groups
        order = torch.argsort(groups, dim=1, descending=True, stable=True)[:, :n]
        keep = torch.zeros_like(groups, dtype=torch.bool).scatter_(1, order, True)
    else:  # M elementwise passes: rank_i = #{j: s_j > s_i, or s_j == s_i and j < i}
        rank = torch.zeros(groups.shape, dtype=torch.uint8, device=groups.device)
        for j in range(m):
            column = groups[:, j:j + 1]
            beats = column > groups
            beats[:, j + 1:] |= column == groups[:, j + 1:]
            rank += beats
        keep = rank < n
    return keep.view(moved.shape).movedim(-1, in_axis)


def channel_scores_l1(weight, out_axis=0):
    """Sum of |w| per output channel."""
    return weight.abs().movedim(out_axis, 0).reshape(weight.shape[out_axis], -1).sum(1)


def channel_scores_umm(weight, mask=None, out_axis=0):
    """Chase's unmasked mean magnitude: sum of |w * m| over a channel / its weight count."""
    masked = weight.abs() if mask is None else weight.abs() * mask
    per_channel = masked.movedim(out_axis, 0).reshape(weight.shape[out_axis], -1)
    return per_channel.sum(1) / per_channel.shape[1]


def channel_scores_guided(weight, unstructured_mask, nm_mask_mean, out_axis=0,
                          unstructured_weight=0.8, nm_weight=0.2):
    """Unified mask generation's channel score: sum of (0.8 U + 0.2 NM) |W| per channel.

    ``nm_mask_mean`` is the fraction of N:M subnets keeping each weight (or None), so the
    channels chosen are those whose weights the other patterns keep.
    """
    guide = torch.zeros_like(weight)
    if unstructured_mask is not None:
        guide = guide + unstructured_weight * unstructured_mask
    if nm_mask_mean is not None:
        guide = guide + nm_weight * nm_mask_mean
    if unstructured_mask is None and nm_mask_mean is None:
        guide = torch.ones_like(weight)
    return channel_scores_l1(guide * weight.abs(), out_axis)


def channel_mask(channel_scores, ratio):
    """Keep exactly ``C - round(ratio * C)`` (at least one) highest-scoring channels."""
    return topk_mask(channel_scores, keep_count(channel_scores.numel(), ratio))


def check_block_shape(shape, block, out_axis=0, in_axis=1, where='tensor'):
    """Raise unless the (out, in) block dims divide the weight's out/in channel counts."""
    bo, bi = block
    cout, cin = shape[out_axis], shape[in_axis]
    if bo < 1 or bi < 1 or cout % bo or cin % bi:
        raise SparsitySpecError(f'{where}: block {tuple(block)} does not tile {cout} output x '
                                f'{cin} input channels')


def block_scores(scores, block, out_axis=0, in_axis=1):
    """Sum of scores per (out, in) block; kernel positions belong to their block whole.

    Returns:
        Tensor of shape (Cout / bo, Cin / bi).
    """
    bo, bi = block
    moved = scores.movedim((out_axis, in_axis), (0, 1))
    cout, cin = moved.shape[:2]
    per_pair = moved.reshape(cout, cin, -1).sum(2)
    return per_pair.reshape(cout // bo, bo, cin // bi, bi).sum((1, 3))


def expand_blocks(block_values, block, shape, out_axis=0, in_axis=1):
    """Broadcast a (Cout / bo, Cin / bi) block tensor back to the weight's ``shape``."""
    bo, bi = block
    full = block_values.repeat_interleave(bo, 0).repeat_interleave(bi, 1)
    rest = [shape[d] for d in range(len(shape)) if d not in (out_axis, in_axis)]
    full = full.reshape(*full.shape, *([1] * len(rest))).expand(*full.shape, *rest)
    return full.movedim((0, 1), (out_axis, in_axis))


def pack_bits(mask):
    """Pack a bool tensor into uint8, 8 elements per byte (flattened, zero-padded)."""
    flat = mask.reshape(-1).to(torch.uint8)
    pad = (-flat.numel()) % 8
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    shifts = torch.arange(8, dtype=torch.uint8, device=mask.device)
    return (flat.view(-1, 8) << shifts).sum(1, dtype=torch.uint8)


def unpack_bits(packed, shape):
    """Inverse of :func:`pack_bits`: a bool tensor of ``shape``."""
    shifts = torch.arange(8, dtype=torch.uint8, device=packed.device)
    bits = (packed.unsqueeze(1) >> shifts) & 1
    numel = 1
    for s in shape:
        numel *= s
    return bits.reshape(-1)[:numel].view(shape).bool()


def global_levels(scores, ratios):
    """:func:`nested_levels` with one threshold across all layers, split back per layer.

    Args:
        scores: ``{layer name: score tensor}``.
        ratios: Ascending sparsities, as for :func:`nested_levels`.

    Returns:
        ``{layer name: uint8 level tensor}`` shaped like each score.
    """
    flat = torch.cat([s.reshape(-1) for s in scores.values()])
    levels = nested_levels(flat, ratios)
    out, start = {}, 0
    for name, s in scores.items():
        out[name] = levels[start:start + s.numel()].view(s.shape)
        start += s.numel()
    return out
