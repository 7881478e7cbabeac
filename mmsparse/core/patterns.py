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

    Uses ``kthvalue`` (linear time) plus an exact tie fix-up, not a full sort.
    """
    flat = scores.reshape(-1)
    total = flat.numel()
    if keep >= total:
        return torch.ones_like(scores, dtype=torch.bool)
    if keep <= 0:
        return torch.zeros_like(scores, dtype=torch.bool)
    threshold = torch.kthvalue(flat.float(), total - keep + 1).values.to(flat.dtype)
    mask = flat > threshold
    missing = keep - int(mask.sum())
    if missing > 0:
        ties = torch.nonzero(flat == threshold).squeeze(1)[:missing]
        mask[ties] = True
    return mask.view_as(scores)


def nested_levels(scores, ratios):
    """Encode nested magnitude masks at several sparsities as one uint8 level per element.

    ``level[i]`` = number of ``ratios`` at which element i is kept, so the mask at the k-th
    smallest ratio is ``level >= len(ratios) - k``. Masks are nested by construction: an
    element pruned at ratio r is pruned at every higher ratio.

    Args:
        scores: Any-shaped tensor of importance scores.
        ratios: Sparsities in [0, 1), any order, at most 255 of them.
    """
    if len(ratios) > 255:
        raise SparsitySpecError(f'at most 255 nested ratios, got {len(ratios)}')
    level = torch.zeros(scores.shape, dtype=torch.uint8, device=scores.device)
    for ratio in ratios:
        level += topk_mask(scores, keep_count(scores.numel(), ratio)).to(torch.uint8)
    return level


def level_mask(level, ratios, ratio):
    """The bool mask at ``ratio`` from a :func:`nested_levels` encoding over ``ratios``."""
    rank = sorted(ratios).index(ratio)  # 0 = least sparse, kept by the most levels
    return level >= len(ratios) - rank


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
