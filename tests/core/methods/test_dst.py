"""DST prune/grow: exact budget, magnitude drop, gradient grow, global and per-layer."""
import pytest
import torch

from mmsparse.core.methods.dst import prune_and_grow


def test_prune_and_grow_keeps_the_exact_budget_by_magnitude_and_gradient():
    weights = {'x': torch.tensor([5., 4., 3., 2., 1., 0., 0., 0.]),
               'y': torch.tensor([9., 0.5, 0., 0.])}
    masks = {'x': torch.tensor([1, 1, 1, 1, 1, 0, 0, 0]).bool(),
             'y': torch.tensor([1, 1, 0, 0]).bool()}
    grads = {'x': torch.tensor([0., 0., 0., 0., 9., 7., 1., 8.]),
             'y': torch.tensor([0., 0., 6., 20.])}
    allowed = {'x': torch.ones(8, dtype=torch.bool), 'y': torch.tensor([1, 1, 1, 0]).bool()}
    new, pruned, grown = prune_and_grow(weights, masks, grads, allowed, keep_total=7,
                                        drop_fraction=2 / 7)
    # 7 kept: drop round(2/7 * 7) = 2 smallest |w| (y1 = 0.5, x4 = 1), grow 2: the largest
    # |grad| among allowed, not kept, not just dropped: x7 (8) and x5 (7) beat y2 (6); y3
    # (20) is not allowed and x4 (9) was just dropped.
    assert (pruned, grown) == (2, 2)
    assert new['x'].tolist() == [True, True, True, True, False, True, False, True]
    assert new['y'].tolist() == [True, False, False, False]
    # Growth falls back on just-dropped weights only when nothing else is left.
    # Here 7 are allowed and 6 of them kept (y1 is not allowed): drop x4 and x3, grow x5,
    # then the just-dropped x3 and x4 again.
    few = {'x': torch.tensor([1, 1, 1, 1, 1, 1, 0, 0]).bool(),
           'y': torch.tensor([1, 0, 0, 0]).bool()}
    new, pruned, grown = prune_and_grow(weights, masks, grads, few, 7, 2 / 7)
    assert (pruned, grown) == (2, 3)
    assert new['x'].tolist() == [True] * 6 + [False] * 2
    assert new['y'].tolist() == [True, False, False, False]
    # Shrinking density prunes the surplus too: 7 kept -> 4, with no drop fraction.
    new, pruned, grown = prune_and_grow(weights, masks, grads, allowed, 4, 0.0)
    assert (pruned, grown) == (3, 0) and sum(int(m.sum()) for m in new.values()) == 4
    with pytest.raises(ValueError, match='cannot keep'):
        prune_and_grow(weights, masks, grads, allowed, 12, 0.0)


def test_layer_scope_drops_and_grows_within_each_layer():
    # 'small' has tiny weights: a global ranking drops only there, a per-layer one drops
    # round(0.5 * 4) = 2 in each layer and regrows them where that layer's gradient is largest.
    weights = {'small': torch.tensor([.04, .03, .02, .01, 0., 0.]),
               'big': torch.tensor([4., 3., 2., 1., 0., 0.])}
    masks = {n: torch.tensor([1, 1, 1, 1, 0, 0]).bool() for n in weights}
    grads = {'small': torch.tensor([0., 0., 0., 0., 1., 2.]),
             'big': torch.tensor([0., 0., 0., 0., 3., 0.5])}
    allowed = {n: torch.ones(6, dtype=torch.bool) for n in weights}
    new, pruned, grown = prune_and_grow(weights, masks, grads, allowed, 8, 0.5, 'global')
    assert new['small'].tolist() == [False] * 4 + [True, True]
    assert new['big'].tolist() == [True] * 6  # the 4 grown: the 4 not just dropped
    new, pruned, grown = prune_and_grow(weights, masks, grads, allowed, 8, 0.5, 'layer')
    assert (pruned, grown) == (4, 4)
    assert new['small'].tolist() == [True, True, False, False, True, True]
    assert new['big'].tolist() == [True, True, False, False, True, True]
    # A shrinking budget is split in proportion to what each layer keeps.
    new, _, _ = prune_and_grow(weights, masks, grads, allowed, 6, 0.0, 'layer')
    assert [int(m.sum()) for m in new.values()] == [3, 3]
    with pytest.raises(ValueError, match='scope'):
        prune_and_grow(weights, masks, grads, allowed, 6, 0.0, 'net')


# -- on a network ---------------------------------------------------------------------------
