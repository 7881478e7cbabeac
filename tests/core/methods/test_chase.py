"""Chase: schedules, UMM, channel selection with floors, prune/grow at an exact budget,
masking of weights/biases/BatchNorms/momentum, dense gradients, and exact slimming."""
import math

import pytest
import torch

from mmsparse.core import SparseNetwork, channel_keep
from mmsparse.core.methods.chase import (ChaseSchedule, DenseGradientRecorder, allowed_masks,
                                         apply_chase_masks, chase_update, init_chase_masks,
                                         select_channels, umm_scores, weight_masks)
from mmsparse.core.export.slimming import fold_masks, slim_subnet
from tiny_models import Chain


def _network(seed=0):
    torch.manual_seed(seed)
    model = Chain()
    for bn in (model.bn_a, model.bn_b):
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.uniform_(-1, 1)
    x = torch.randn(2, 3, 8, 8)
    return SparseNetwork(model, lambda m: m(x)), x


def _schedule(**kwargs):
    args = dict(sparsity=0.5, channel_sparsity=0.3, max_iters=100, update_interval=10,
                update_end=0.8, extra_density=0.2, drop_fraction=0.3, beta=0.5)
    args.update(kwargs)
    return ChaseSchedule(**args)


def _train_step(network, x, optimizer):
    optimizer.zero_grad()
    network.model(x).square().mean().backward()
    optimizer.step()


# -- schedules ------------------------------------------------------------------------------
def test_schedule_updates_density_drop_fraction_and_cubic_channel_target():
    s = ChaseSchedule(0.5, 0.3, 600, update_interval=50, update_end=0.75, extra_density=0.1)
    assert s.last_update == 450
    assert [c for c in range(601) if s.is_update(c)] == list(range(50, 451, 50))
    assert s.density_at(0) == pytest.approx(0.6)
    assert s.density_at(225) == pytest.approx(0.5 + 0.1 * 0.5 ** 3)
    assert s.density_at(450) == s.density_at(600) == pytest.approx(0.5)
    densities = [s.density_at(c) for c in range(0, 601, 10)]
    assert all(a >= b for a, b in zip(densities, densities[1:]))
    assert s.drop_fraction_at(0) == pytest.approx(0.3)
    assert s.drop_fraction_at(225) == pytest.approx(0.15)
    assert s.drop_fraction_at(450) == pytest.approx(0.0, abs=1e-12)
    assert s.channel_sparsity_at(0) == 0.0
    assert s.channel_sparsity_at(150) == pytest.approx(0.3 * (1 - (2 / 3) ** 3))
    assert s.channel_sparsity_at(450) == s.channel_sparsity_at(600) == pytest.approx(0.3)
    assert s.floor(64) == math.ceil(0.5 * 0.7 * 64)
    assert s.floor(1) == 1


@pytest.mark.parametrize('kwargs, match', [
    (dict(sparsity=1.0), 'sparsity must be in'),
    (dict(channel_sparsity=-0.1), 'channel_sparsity'),
    (dict(update_interval=90), 'no mask update fits'),
    (dict(extra_density=0.6), 'extra_density'),
    (dict(beta=1.5), 'beta'),
    (dict(prune_scope='net'), 'prune_scope'),
])
def test_schedule_rejects_impossible_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        _schedule(**kwargs)


# -- pure functions -------------------------------------------------------------------------
def test_umm_is_the_masked_mean_magnitude_per_output_channel():
    network, _ = _network()
    weight = network.layers['conv_a'].dense_weight
    with torch.no_grad():
        weight.copy_(torch.arange(weight.numel(), dtype=torch.float32).view(weight.shape)
                     - weight.numel() / 2)
    masks = weight_masks(network, 'unstructured@0.50')
    masks['conv_a'] = torch.rand(weight.shape, generator=torch.Generator().manual_seed(1)) > 0.5
    scores = umm_scores(network, masks)
    assert set(scores) == {'conv_a', 'conv_b'}
    per_channel = weight.shape[1] * weight.shape[2] * weight.shape[3]
    for c in range(weight.shape[0]):
        expected = sum(abs(float(w)) for w, m in zip(weight[c].flatten(),
                                                     masks['conv_a'][c].flatten()) if m)
        assert float(scores['conv_a'][c]) == pytest.approx(expected / per_channel)


def test_select_channels_removes_the_global_lowest_above_the_floors():
    scores = {'a': torch.tensor([0.1, 5.0, 0.2, 0.3]), 'b': torch.tensor([0.15, 0.05, 9.0])}
    keep = {'a': torch.tensor([True, True, True, True]), 'b': torch.tensor([True, False, True])}
    new = select_channels(scores, keep, removed_total=4, floors={'a': 2, 'b': 1})
    # b1 already removed; then a0 (0.1), b0 (0.15), a2 (0.2); a3 (0.3) would break a's floor.
    assert new['a'].tolist() == [False, True, False, True]
    assert new['b'].tolist() == [False, False, True]
    assert keep['a'].all()  # inputs untouched
    # Floors bind: asking for more removes only what they allow.
    capped = select_channels(scores, keep, removed_total=10, floors={'a': 2, 'b': 1})
    assert [int(k.sum()) for k in capped.values()] == [2, 1]
    # Removed channels stay removed, whatever their scores; a met target removes nothing.
    same = select_channels(scores, new, removed_total=3, floors={'a': 2, 'b': 1})
    assert all(torch.equal(same[n], new[n]) for n in new)


def _run_updates(network, schedule, seed=0):
    """Every update of the schedule with random dense gradients; the masks after each."""
    gen = torch.Generator().manual_seed(seed)
    history = []
    for completed in range(1, schedule.max_iters + 1):
        if schedule.is_update(completed):
            grads = {n: torch.randn(layer.dense_weight.shape, generator=gen)
                     for n, layer in network.layers.items()}
            info = chase_update(network, schedule, completed, grads)
            keeps = channel_keep(network, schedule.channel, all_layers=True)
            history.append((completed, info, keeps))
    return history


def test_erk_init_then_updates_reach_both_targets_within_floors():
    network, _ = _network()
    schedule = _schedule()
    init_chase_masks(network, schedule)
    total = sum(layer.dense_weight.numel() for layer in network.layers.values())
    masks = weight_masks(network, schedule.unstructured)
    assert sum(int(m.sum()) for m in masks.values()) == pytest.approx(0.7 * total, abs=3)
    keeps = channel_keep(network, schedule.channel, all_layers=True)
    assert set(keeps) == {'conv_a', 'conv_b'} and all(k.all() for k in keeps.values())
    assert network.channel_layers == ['conv_a', 'conv_b']
    history = _run_updates(network, schedule)
    channels = 16 + 12
    previous = None
    for completed, info, keeps in history:
        removed = sum(int((~k).sum()) for k in keeps.values())
        assert removed == round(schedule.channel_sparsity_at(completed) * channels)
        assert info['kept'] == round(schedule.density_at(completed) * total)
        if previous is not None:  # removed channels stay removed
            assert all(not (k & ~previous[n]).any() for n, k in keeps.items())
        previous = keeps
    assert removed == round(0.3 * channels)
    for name, keep in keeps.items():
        assert int(keep.sum()) >= schedule.floor(keep.numel()), name
    # Only removable layers hold a channel mask; the budget is exact and global.
    assert network.layers['conv_c'].channel_keep(schedule.channel) is None
    masks = weight_masks(network, schedule.unstructured)
    assert sum(int(m.sum()) for m in masks.values()) == round(0.5 * total)
    # Nothing is kept on a removed channel, nor where a consumer reads one.
    allowed = allowed_masks(network, keeps)
    assert all(not (masks[n] & ~allowed[n]).any() for n in masks)
    assert not masks['conv_a'][~keeps['conv_a']].any()
    assert not masks['conv_b'][:, ~keeps['conv_a']].any()
    assert not masks['conv_c'][:, ~keeps['conv_b']].any()
    assert {s.name for s in network.subnets()} == {'dense', 'unstructured@0.50',
                                                   'channel@0.30'}


def _trained_with_masks(lr, steps):
    """The tiny network after every Chase update and ``steps`` masked SGD steps (momentum
    0.9) of its unstructured subnet: (network, input, schedule, optimizer)."""
    network, x = _network()
    schedule = _schedule()
    init_chase_masks(network, schedule)
    _run_updates(network, schedule)
    network.set_active(schedule.unstructured)
    optimizer = torch.optim.SGD(network.model.parameters(), lr=lr, momentum=0.9)
    for _ in range(steps):
        _train_step(network, x, optimizer)
        apply_chase_masks(network, schedule, optimizer)
    return network, x, schedule, optimizer


def test_apply_masks_zeroes_weights_momentum_and_removed_channel_outputs():
    network, x, schedule, optimizer = _trained_with_masks(lr=0.1, steps=2)
    keeps = channel_keep(network, schedule.channel, all_layers=True)
    for name, layer in network.layers.items():
        mask = layer.mask_for(schedule.unstructured)
        weight = layer.dense_weight
        assert not weight[~mask].any(), name
        assert not optimizer.state[weight]['momentum_buffer'][~mask].any(), name
    model = network.model
    assert not model.conv_a.bias[~keeps['conv_a']].any()
    for bn, keep in ((model.bn_a, keeps['conv_a']), (model.bn_b, keeps['conv_b'])):
        assert not bn.weight[~keep].any() and not bn.bias[~keep].any()
        assert not optimizer.state[bn.bias]['momentum_buffer'][~keep].any()
    # With the unstructured subnet active (no channel hook at work), removed channels output
    # exactly 0 after their BatchNorm, in training and in evaluation mode.
    outputs = {}
    handles = [bn.register_forward_hook(lambda m, i, o, n=n: outputs.__setitem__(n, o))
               for n, bn in (('a', model.bn_a), ('b', model.bn_b))]
    for mode in (True, False):
        model.train(mode)
        model(x)
        assert not outputs['a'][:, ~keeps['conv_a']].any()
        assert not outputs['b'][:, ~keeps['conv_b']].any()
    for handle in handles:
        handle.remove()


def test_recorder_gives_dense_gradients_and_masked_updates():
    network, x = _network()
    schedule = _schedule()
    init_chase_masks(network, schedule)
    _run_updates(network, schedule)
    apply_chase_masks(network, schedule)
    network.set_active(schedule.unstructured)
    plain = fold_masks(network, 'dense')  # an ordinary copy with the same weights
    recorder = DenseGradientRecorder(network, schedule)
    recorder.start()
    assert network.active.name == 'dense'
    network.model(x).square().mean().backward()
    grads = recorder.stop()
    assert network.active == schedule.unstructured and not recorder.handles
    plain_modules = dict(plain.named_modules())
    plain(x).square().mean().backward()
    for name, layer in network.layers.items():
        dense = plain_modules[name].weight.grad
        mask = layer.mask_for(schedule.unstructured)
        assert torch.allclose(grads[name], dense, atol=1e-6), name
        assert (grads[name][~mask] != 0).any(), name  # pruned weights get a gradient ...
        assert torch.equal(layer.dense_weight.grad, dense * mask), name  # ... not a step


def test_slimmed_model_matches_the_masked_one_and_is_smaller():
    # a few steps move the running statistics and affines away from their defaults
    network, x, schedule, _ = _trained_with_masks(lr=0.05, steps=3)
    network.model.eval()
    with torch.no_grad():
        expected = network.model(x)
    slim = slim_subnet(network, 'channel@0.30', also=['unstructured@0.50']).eval()
    with torch.no_grad():
        actual = slim(x)
    assert torch.allclose(actual, expected, atol=1e-5)
    keeps = channel_keep(network, schedule.channel, all_layers=True)
    assert slim.conv_a.out_channels == int(keeps['conv_a'].sum()) < 16
    assert slim.conv_c.in_channels == int(keeps['conv_b'].sum()) < 12
    count = sum(p.numel() for p in slim.parameters())
    assert count < sum(p.numel() for p in network.model.parameters())
