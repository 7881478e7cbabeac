"""Pure mask functions: exact counts, tie-breaking, nesting, N:M axes, blocks, errors."""
import pytest
import torch
from torch import nn

from mmsparse.core.patterns import (SparsitySpecError, block_scores, channel_mask,
                                    channel_scores_umm, check_block_shape, expand_blocks,
                                    keep_count, level_mask, nested_levels, nm_mask, pack_bits,
                                    topk_mask, unpack_bits)

RATIOS = [0.2, 0.36, 0.49, 0.59, 0.67, 0.74, 0.79, 0.83, 0.87, 0.89]


def test_topk_keeps_exact_count_and_breaks_ties_by_index():
    scores = torch.tensor([1.0, 3.0, 2.0, 2.0, 2.0, 0.0])
    assert topk_mask(scores, 3).tolist() == [False, True, True, True, False, False]
    assert topk_mask(scores, 2).tolist() == [False, True, True, False, False, False]
    assert topk_mask(scores, 0).sum() == 0 and topk_mask(scores, 9).all()


def sort_reference(scores, keep):
    """Independent reference: a stable descending sort keeps lower indices on ties."""
    mask = torch.zeros(scores.numel(), dtype=torch.bool)
    mask[torch.argsort(scores.reshape(-1), descending=True, stable=True)[:keep]] = True
    return mask.view(scores.shape)


@pytest.mark.parametrize('numel,kind', [(5000, 'rand'), (3000, 'ties'), (1_500_000, 'ties'),
                                        (1_300_000, 'rand'), (200_000, 'signed')])
def test_nested_levels_equal_a_sort_at_every_ratio(numel, kind):
    """Small or signed tensors use kthvalue, large magnitudes the histogram path."""
    gen = torch.Generator().manual_seed(numel)
    scores = {'ties': lambda: torch.randint(0, 40, (numel,), generator=gen).float(),
              'rand': lambda: torch.rand(numel, generator=gen),
              'signed': lambda: torch.randn(numel, generator=gen)}[kind]()
    level = nested_levels(scores, RATIOS)
    previous = None
    for ratio in RATIOS:
        mask = level_mask(level, RATIOS, ratio)
        assert int(mask.sum()) == keep_count(numel, ratio)
        assert torch.equal(mask, sort_reference(scores, keep_count(numel, ratio)))
        assert torch.equal(mask, topk_mask(scores, keep_count(numel, ratio)))
        if previous is not None:
            assert not (mask & ~previous).any(), 'masks must be nested'
        previous = mask


def test_nested_levels_are_deterministic_and_shape_preserving():
    w = torch.randn(8, 4, 3, 3)
    a, b = nested_levels(w.abs(), [0.5, 0.9]), nested_levels(w.abs().clone(), [0.9, 0.5])
    assert a.shape == w.shape and a.dtype == torch.uint8 and torch.equal(a, b)


def _groups_along_in(mask, m, in_axis):
    return mask.movedim(in_axis, -1).reshape(-1, m)


@pytest.mark.parametrize('shape,in_axis', [((8, 16, 3, 3), 1), ((6, 8), 1), ((16, 4, 2, 2), 0)])
@pytest.mark.parametrize('n,m', [(1, 2), (2, 4), (4, 8), (1, 4)])
def test_nm_keeps_n_largest_of_every_m_along_input_channels(shape, in_axis, n, m):
    w = torch.randn(shape)
    mask = nm_mask(w.abs(), n, m, in_axis)
    groups_mask = _groups_along_in(mask, m, in_axis)
    groups_w = _groups_along_in(w.abs(), m, in_axis)
    assert (groups_mask.sum(1) == n).all()
    kept_min = torch.where(groups_mask, groups_w, torch.inf).min(1).values
    dropped_max = torch.where(groups_mask, -torch.inf, groups_w).max(1).values
    assert (kept_min >= dropped_max).all()


def test_conv_nm_groups_run_along_cin_per_kernel_position():
    w = torch.zeros(1, 4, 1, 2)
    w[0, :, 0, 0] = torch.tensor([4.0, 3.0, 2.0, 1.0])  # position (0, 0): keep ch 0, 1
    w[0, :, 0, 1] = torch.tensor([1.0, 2.0, 3.0, 4.0])  # position (0, 1): keep ch 2, 3
    mask = nm_mask(w, 2, 4, in_axis=1)
    assert mask[0, :, 0, 0].tolist() == [True, True, False, False]
    assert mask[0, :, 0, 1].tolist() == [False, False, True, True]


def test_linear_2_4_matches_torch_ao_weight_norm_sparsifier():
    from torch.ao.pruning import WeightNormSparsifier
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 8))
    weight = model[0].weight.detach().clone()
    sparsifier = WeightNormSparsifier(sparsity_level=1.0, sparse_block_shape=(1, 4),
                                      zeros_per_block=2)
    sparsifier.prepare(model, [{'tensor_fqn': '0.weight'}])
    sparsifier.step()
    ao_mask = model[0].parametrizations.weight[0].mask.bool()
    assert torch.equal(nm_mask(weight.abs(), 2, 4, in_axis=1), ao_mask)


@pytest.mark.parametrize('call,match', [
    (lambda: nm_mask(torch.ones(4, 6), 2, 4), '6 input channels are not divisible by M=4'),
    (lambda: nm_mask(torch.ones(4, 8), 4, 4), '0 < N < M'),
    (lambda: keep_count(10, 1.0), r'\[0, 1\)'),
    (lambda: channel_mask(torch.ones(4), -0.5), r'\[0, 1\)'),
    (lambda: check_block_shape((6, 8), (4, 1)), 'does not tile')])
def test_impossible_sparsity_is_a_clear_error(call, match):
    with pytest.raises(SparsitySpecError, match=match):
        call()


def test_channel_mask_keeps_exactly_k_highest():
    scores = torch.tensor([0.1, 0.9, 0.5, 0.7, 0.2, 0.3, 0.8, 0.4, 0.6, 0.0])
    keep = channel_mask(scores, 0.3)
    assert int(keep.sum()) == 7  # the published code would keep 6
    assert set(torch.nonzero(keep).squeeze(1).tolist()) == {1, 2, 3, 5, 6, 7, 8}


def test_umm_scores_count_masked_weights_as_zero():
    w = torch.tensor([[1.0, -1.0, 2.0, 0.0], [3.0, 3.0, 3.0, 3.0]])
    m = torch.tensor([[1.0, 1.0, 0.0, 1.0], [0.0, 0.0, 0.0, 1.0]])
    assert channel_scores_umm(w, m).tolist() == [0.5, 0.75]


def test_block_levels_keep_whole_blocks_exactly():
    torch.manual_seed(0)
    w = torch.randn(8, 8, 3, 3)
    # what unified mask generation stores for block subnets
    level = expand_blocks(nested_levels(block_scores(w.abs(), (2, 4)), [0.5]), (2, 4), w.shape)
    mask = level_mask(level, [0.5], 0.5)
    blocks = mask.reshape(4, 2, 2, 4, 9).permute(0, 2, 1, 3, 4).reshape(4, 2, -1)
    assert ((blocks.all(2)) | (~blocks.any(2))).all(), 'each block kept or removed whole'
    assert int(blocks.all(2).sum()) == 4


def test_pack_bits_round_trip():
    mask = torch.rand(3, 5, 7) > 0.5
    packed = pack_bits(mask)
    assert packed.dtype == torch.uint8 and packed.numel() == (105 + 7) // 8
    assert torch.equal(unpack_bits(packed, mask.shape), mask)
