"""AST's pure functions: subnet order, gradual density, prune-and-regrow (nested, N:M)."""
import pytest
import torch

from mmsparse.core.methods.ast import (ASTMasker, ast_order, ast_subnet_index,
                                       check_ast_options, check_ast_specs, gradual_density,
                                       gradual_sparsity, prune_regrow, regrow_fraction,
                                       regrow_level, regrow_nm, scheduled_levels, update_due)
from mmsparse.core.patterns import keep_count, nested_levels, nm_mask
from mmsparse.core.subnets import parse_subnets


def test_subnet_order_is_t_mod_k_and_deterministic():
    assert [ast_subnet_index(t, 3) for t in range(7)] == [0, 1, 2, 0, 1, 2, 0]
    assert [ast_subnet_index(t, 3) for t in range(7)] == [ast_subnet_index(t, 3)
                                                          for t in range(7)]
    with pytest.raises(ValueError, match='at least one subnet'):
        ast_subnet_index(0, 0)


def test_gradual_density_is_cubic_and_exact_at_the_end():
    max_iters, final = 1000, 0.05
    densities = [gradual_density(t, max_iters, final, start=0.1, end=0.5) for t in
                 range(max_iters + 1)]
    assert densities[0] == densities[100] == 1.0
    assert all(a >= b for a, b in zip(densities, densities[1:]))
    assert densities[300] == pytest.approx(final + (1 - final) * 0.5 ** 3)
    assert densities[500] == final and densities[1000] == final  # exactly, no rounding
    assert gradual_sparsity(500, max_iters, 0.95, start=0.1, end=0.5) == 0.95
    assert gradual_sparsity(499, max_iters, 0.95, start=0.1, end=0.5) < 0.95
    with pytest.raises(ValueError, match='final_density'):
        gradual_density(0, 10, 0.0)


def test_scheduled_levels_keep_exact_nested_counts_globally():
    torch.manual_seed(0)
    scores = {'a': torch.rand(40, 30), 'b': torch.rand(7, 5, 3)}
    total = sum(s.numel() for s in scores.values())
    levels = scheduled_levels(scores, [0.5, 0.8], 'global')
    kept50 = sum(int((lv >= 1).sum()) for lv in levels.values())
    kept80 = sum(int((lv >= 2).sum()) for lv in levels.values())
    assert kept50 == keep_count(total, 0.5) and kept80 == keep_count(total, 0.8)
    per_layer = scheduled_levels(scores, [0.5, 0.8], 'layer')
    assert int((per_layer['a'] >= 2).sum()) == keep_count(1200, 0.8)
    with pytest.raises(ValueError, match='scope'):
        scheduled_levels(scores, [0.5], 'channel')


@pytest.mark.parametrize('shape', [(50, 20), (300, 300)])  # sort and histogram paths
def test_prune_regrow_keeps_the_count_and_regrows_largest_gradients(shape):
    torch.manual_seed(0)
    magnitude, gradient = torch.rand(shape), torch.randn(shape)
    keep = torch.rand(shape) > 0.7
    new, dropped, grown = prune_regrow(magnitude, gradient, keep, 0.3)
    n = round(0.3 * int(keep.sum()))
    assert int(dropped.sum()) == int(grown.sum()) == n
    assert int(new.sum()) == int(keep.sum())
    assert (dropped <= keep).all() and not (grown & keep).any()
    # dropped: the n smallest |w| among the kept; grown: the n largest |grad| among the pruned
    assert magnitude[dropped].max() <= magnitude[keep & ~dropped].min()
    assert gradient.abs()[grown].min() >= gradient.abs()[~keep & ~grown].max()
    same, _, _ = prune_regrow(magnitude, gradient, keep, 0.0)
    assert torch.equal(same, keep)


def test_regrow_within_level_bands_changes_one_subnet_and_keeps_nesting():
    torch.manual_seed(1)
    weight = torch.randn(64, 32)
    level = nested_levels(weight.abs(), [0.5, 0.8, 0.9])  # subnets 0, 1, 2 (sparsest)
    gradient = torch.randn(64, 32)
    for index in range(3):
        new = regrow_level(level, index, weight.abs(), gradient, 0.4)
        for other in range(3):
            before, after = level >= other + 1, new >= other + 1
            assert int(before.sum()) == int(after.sum())  # every count exact
            if other != index:
                assert torch.equal(before, after), (index, other)
        assert not torch.equal(level >= index + 1, new >= index + 1)
        # nesting: a weight kept by a sparser subnet is kept by every denser one
        assert ((new >= 3) <= (new >= 2)).all() and ((new >= 2) <= (new >= 1)).all()
        grown = (new >= index + 1) & ~(level >= index + 1)
        candidates = (level == index) & ~grown
        assert gradient.abs()[grown].min() >= gradient.abs()[candidates].max()


def test_regrow_nm_keeps_the_pattern_and_regrows_the_largest_gradient_per_group():
    torch.manual_seed(2)
    weight, gradient = torch.randn(16, 24, 3, 3), torch.randn(16, 24, 3, 3)
    mask = nm_mask(weight.abs(), 1, 4)
    new = regrow_nm(mask, weight.abs(), gradient, 0.5, 4)
    groups = new.movedim(1, -1).reshape(-1, 4)
    assert (groups.sum(1) == 1).all()  # still 1:4 everywhere
    old = mask.movedim(1, -1).reshape(-1, 4)
    changed = (groups != old).any(1)
    assert int(changed.sum()) == round(0.5 * int(mask.sum()))
    grad = gradient.abs().movedim(1, -1).reshape(-1, 4)
    best_pruned = torch.where(old, torch.full_like(grad, -1), grad).argmax(1)
    assert torch.equal(groups[changed].float().argmax(1), best_pruned[changed])
    assert torch.equal(regrow_nm(mask, weight.abs(), gradient, 0.0, 4), mask)


def test_regrow_fraction_decays_by_cosine_from_half_to_0005():
    values = [regrow_fraction(t, 100, 0.5, 0.9) for t in range(101)]
    assert values[49] == 0.0 and values[50] == pytest.approx(0.5)
    assert values[90] == pytest.approx(0.005) and values[91] == 0.0
    assert values[70] == pytest.approx(0.005 + 0.5 * 0.495)
    assert all(a >= b for a, b in zip(values[50:91], values[51:91]))


def test_each_subnet_updates_once_per_window_on_its_own_iteration():
    k, interval = 3, 10
    due = [(t, i) for t in range(40) for i in range(k) if update_due(t, i, k, interval)]
    assert all(t % k == i for t, i in due)
    for window in range(4):
        assert sorted(i for t, i in due if t // interval == window) == [0, 1, 2]
    with pytest.raises(ValueError, match='at least the number'):
        update_due(0, 0, 3, 2)


@pytest.mark.parametrize('options, match', [
    (dict(update_interval=0), 'update_interval must be a positive integer, got 0'),
    (dict(update_interval=2.5), 'update_interval must be a positive integer, got 2.5'),
    (dict(update_interval=2, num_subnets=3), r'update_interval \(2\) must be >= the number '
                                             r'of subnets \(3\)'),
    (dict(prune_end=0.9, regrow_end=0.8), 'prune_start <= prune_end <= regrow_end <= 1'),
    (dict(regrow_end=1.5), 'regrow_end <= 1, got 0.0, 0.5, 1.5'),
    (dict(prune_power=0), 'prune_power must be > 0, got 0'),
    (dict(regrow_initial=1.5), r'regrow_initial must be a fraction in \[0, 1\], got 1.5'),
    (dict(regrow_final=-0.1), r'regrow_final must be a fraction in \[0, 1\], got -0.1'),
    (dict(scope='layers'), "scope must be 'global' or 'layer', got 'layers'"),
])
def test_bad_ast_options_fail_naming_the_option(options, match):
    with pytest.raises(ValueError, match=match):
        check_ast_options(**options)


def test_ast_subnets_are_unstructured_or_nm_and_default_to_the_sorted_sparse_ones():
    with pytest.raises(ValueError, match=r"cannot train \['channel@0.30'\]"):
        check_ast_specs(parse_subnets(['unstructured@0.5', 'channel@0.3']))
    with pytest.raises(ValueError, match=r"needs at least one sparse subnet, got \['dense'\]"):
        check_ast_specs(parse_subnets(['dense']))
    order = ast_order(parse_subnets(['dense', 'unstructured@0.8', 'unstructured@0.5']))
    assert [s.name for s in order] == ['unstructured@0.50', 'unstructured@0.80']


def test_ast_masker_due_logic_is_the_schedule_of_the_pure_functions():
    order = parse_subnets(['unstructured@0.5', 'unstructured@0.8'])
    masker = ASTMasker({}, order, 20, update_interval=4, prune_end=0.3, regrow_end=0.8)
    assert masker.prune_end_iter == 6
    assert [t for t in range(20) if masker.prune_due(t)] == [0, 4, 6]
    regrow = [t for t in range(20) if masker.regrow_due(t)]
    assert regrow == [t for t in range(7, 17) if update_due(t, t % 2, 2, 4)] == [8, 9, 12, 13, 16]
    assert [masker.subnet_at(t) for t in range(3)] == [order[0], order[1], order[0]]
    assert masker.fraction_at(10) == regrow_fraction(10, 20, 0.3, 0.8)
