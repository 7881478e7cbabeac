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


def _kth_largest(flat, keep, sample_desc=None):
    """The ``keep``-th largest value of ``flat`` (exact).

    For large tensors, a strided sample (sorted descending) brackets the answer and only the
    elements between the brackets are searched; if the bracket misses (it cannot be wrong,
    only unlucky) we fall back to a full ``kthvalue``.
    """
    total = flat.numel()
    if sample_desc is not None:
        m = sample_desc.numel()
        pos = int(keep / total * m)
        margin = int(4 * (m ** 0.5)) + 16
        hi = sample_desc[max(pos - margin, 0)]
        lo = sample_desc[min(pos + margin, m - 1)]
        above = int((flat > hi).sum())
        between = flat[(flat <= hi) & (flat >= lo)]
        need = keep - above
        if 1 <= need <= between.numel():
            return torch.kthvalue(between, between.numel() - need + 1).values
    return torch.kthvalue(flat, total - keep + 1).values


def _bracket_sample(flat, size=1 << 18):
    """For large tensors, a deterministic strided sample sorted descending; else None."""
    if flat.numel() <= 4 * size:
        return None
    stride = flat.numel() // size
    return torch.sort(flat[::stride], descending=True).values


def _tie_indices(flat, threshold, kept_above, keep):
    """Indices of the elements equal to ``threshold`` needed to keep exactly ``keep``."""
    missing = keep - kept_above
    if missing <= 0:
        return None
    return torch.nonzero(flat == threshold).squeeze(1)[:missing]


def topk_mask(scores, keep):
    """Bool mask keeping exactly ``keep`` largest scores (ties: lower flat index first).

    Linear time (``kthvalue``, on a bracketed slice for large tensors) plus an exact tie
    fix-up; no full sort.
    """
    total = scores.numel()
    if keep >= total:
        return torch.ones_like(scores, dtype=torch.bool)
    if keep <= 0:
        return torch.zeros_like(scores, dtype=torch.bool)
    flat = scores.reshape(-1).float()
    threshold = _kth_largest(flat, keep, _bracket_sample(flat))
    mask = flat > threshold
    ties = _tie_indices(flat, threshold, int(mask.sum()), keep)
    if ties is not None:
        mask[ties] = True
    return mask.view(scores.shape)


def _levels_simple(flat, keeps):
    """Thresholds (exact k-th largest values) and ``level = #{k: x >= t_k}``."""
    total = flat.numel()
    thresholds = torch.stack([torch.kthvalue(flat, total - k + 1).values for k in keeps])
    return thresholds, torch.bucketize(flat, thresholds, right=True).to(torch.uint8)


def _levels_bracketed(flat, keeps, sample_size=1 << 18):
    """:func:`_levels_simple` for large tensors, in a constant number of full passes.

    A strided sample brackets every threshold; one ``bucketize`` against all brackets
    counts the elements above each bracket and picks out the few inside; each threshold
    is then found among its bracket's elements only, and the levels are a table lookup
    plus a correction on those elements. Returns None if a bracket missed (the caller
    falls back to the simple exact path).
    """
    total = flat.numel()
    sample = torch.sort(flat[::max(1, total // sample_size)], descending=True).values
    m = sample.numel()
    margin = int(3 * m ** 0.5) + 16  # sample quantile error is at most ~0.5 sqrt(m)
    his = [sample[max(int(k / total * m) - margin, 0)] for k in keeps]
    los = [sample[min(int(k / total * m) + margin, m - 1)] for k in keeps]
    bounds = torch.unique(torch.stack(his + los))  # sorted ascending
    # bucket = number of bounds <= x, so x >= bounds[j] <=> bucket > j
    bucket = torch.bucketize(flat, bounds, right=True, out_int32=True)
    counts = torch.bincount(bucket, minlength=bounds.numel() + 1)
    idx_hi = [int(torch.searchsorted(bounds, h)) for h in his]
    idx_lo = [int(torch.searchsorted(bounds, lo)) for lo in los]
    in_bracket = torch.zeros(bounds.numel() + 1, dtype=torch.bool)
    for lo, hi in zip(idx_lo, idx_hi):  # buckets of lo <= x < hi
        in_bracket[lo + 1:hi + 1] = True
    cand_idx = torch.nonzero(in_bracket[bucket]).squeeze(1)
    cand_val, cand_bucket = flat[cand_idx], bucket[cand_idx]
    thresholds = []
    for keep, lo, hi in zip(keeps, idx_lo, idx_hi):
        above = int(counts[hi + 1:].sum())  # x >= hi
        vals = cand_val[(cand_bucket > lo) & (cand_bucket <= hi)]
        need = keep - above
        if not 1 <= need <= vals.numel():
            return None
        thresholds.append(torch.kthvalue(vals, vals.numel() - need + 1).values)
    # Elements at or above bracket k's top reach t_k; inside the bracket, compare.
    reaches_all_above = torch.zeros(bounds.numel() + 1, dtype=torch.uint8)
    for hi in idx_hi:
        reaches_all_above[hi + 1:] += 1
    level = reaches_all_above[bucket]
    for threshold, lo, hi in zip(thresholds, idx_lo, idx_hi):
        inside = (cand_bucket > lo) & (cand_bucket <= hi) & (cand_val >= threshold)
        level[cand_idx[inside]] += 1
    return torch.stack(thresholds), level


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
    flat = scores.reshape(-1).float()
    total = flat.numel()
    if not ratios:
        return torch.zeros(scores.shape, dtype=torch.uint8, device=scores.device)
    keeps = [keep_count(total, r) for r in sorted(ratios)]  # non-increasing
    result = _levels_bracketed(flat, keeps) if total > (1 << 20) else None
    # level = number of (ascending) thresholds t_k each element reaches (x >= t_k) ...
    thresholds, level = result if result is not None else _levels_simple(flat, keeps)
    # ... then drop surplus ties at each threshold, highest index first (so the kept ties
    # are a prefix by index at every ratio, and the masks stay nested).
    reached = torch.bincount(level, minlength=len(keeps) + 1).flip(0).cumsum(0).flip(0)
    for k, (keep, threshold) in enumerate(zip(keeps, thresholds)):
        surplus = int(reached[k + 1]) - keep
        if surplus > 0:
            ties = torch.nonzero(flat == threshold).squeeze(1)
            level[ties[ties.numel() - surplus:]] -= 1
    return level.view(scores.shape)


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
    order = torch.argsort(groups, dim=1, descending=True, stable=True)[:, :n]
    keep = torch.zeros_like(groups, dtype=torch.bool).scatter_(1, order, True)
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


def block_mask(scores, block, ratio, out_axis=0, in_axis=1, where='tensor'):
    """Keep whole (out, in) blocks with the largest summed scores, exact block count."""
    check_block_shape(scores.shape, block, out_axis, in_axis, where)
    per_block = block_scores(scores, block, out_axis, in_axis)
    keep = topk_mask(per_block, keep_count(per_block.numel(), ratio))
    return expand_blocks(keep, block, scores.shape, out_axis, in_axis)


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
