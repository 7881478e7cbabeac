"""Mask sources for Sparse Cocktail: Chase's global nested channel masks and Spartan's
dual-averaging unstructured steps, and the validation of a ``{pattern: source}`` mapping."""
import pytest
import torch

from mmsparse.core import DENSE, SparseNetwork, SparsitySpecError, generate_masks
from mmsparse.core.methods.chase import channel_floor
from mmsparse.core.methods.mask_sources import (check_mask_sources, chase_channel_masks,
                                                chase_channel_selection,
                                                spartan_unstructured_step)
from mmsparse.core.patterns import channel_scores_umm, keep_count
from mmsparse.core.methods.spartan import ForwardWeight, SpartanMasker, clear_forward_weights
from mmsparse.core.subnets import SubnetSpec
from tiny_models import Chain

U_RATIOS = (0.2, 0.5, 0.8)
C_RATIOS = (0.25, 0.5)


def _network(scale_b=1.0, subnets=None):
    torch.manual_seed(0)
    model = Chain()
    with torch.no_grad():
        model.conv_b.weight.mul_(scale_b)
    x = torch.randn(2, 3, 8, 8)
    network = SparseNetwork(model, lambda m: m(x))
    names = subnets or ([f'unstructured@{r}' for r in U_RATIOS]
                        + [f'channel@{r}' for r in C_RATIOS])
    generate_masks(network, names)
    return network, x


# -- validation -----------------------------------------------------------------------------
def test_default_is_umg_for_every_pattern():
    assert set(check_mask_sources(None).values()) == {'umg'}
    assert check_mask_sources(dict(channel='chase'))['channel'] == 'chase'


@pytest.mark.parametrize('sources, culprit', [
    (dict(chanel='chase'), "'chanel'"),                 # unknown pattern
    (dict(channel='chaze'), "'chaze'"),                 # unknown source
    (dict(nm='chase'), "['channel']"),                  # Chase cannot make N:M masks
    (dict(channel='spartan'), "['unstructured']"),      # Spartan makes unstructured only
])
def test_bad_sources_are_rejected_naming_the_culprit(sources, culprit):
    with pytest.raises(SparsitySpecError, match=culprit.replace('[', r'\[').replace(']', r'\]')):
        check_mask_sources(sources)


def test_a_source_for_a_pattern_the_model_does_not_hold_is_rejected():
    with pytest.raises(SparsitySpecError, match='holds no channel subnets'):
        check_mask_sources(dict(channel='chase'), held_patterns={'unstructured', 'nm'})
    check_mask_sources(dict(channel='umg'), held_patterns={'unstructured'})  # umg: fine


# -- channel by Chase ----------------------------------------------------------------------
def test_chase_ranks_umm_globally_where_umg_keeps_the_ratio_per_layer():
    """conv_b's weights are 10x smaller: Chase removes conv_b's channels first (down to its
    floor), UMG removes the same fraction of each layer."""
    network, _ = _network(scale_b=0.1)
    umg = {n: network.layers[n].mask_channel.clone() for n in network.channel_layers}
    chase_channel_masks(network, beta=0.5)
    for i, ratio in enumerate(C_RATIOS):
        umg_removed = {n: int((~umg[n][i]).sum()) for n in umg}
        assert umg_removed == {'conv_a': round(ratio * 16), 'conv_b': round(ratio * 12)}
        keep_b = network.layers['conv_b'].channel_keep(SubnetSpec('channel', ratio))
        keep_a = network.layers['conv_a'].channel_keep(SubnetSpec('channel', ratio))
        target = 28 - keep_count(28, ratio)
        removable_b = 12 - channel_floor(12, 0.5, ratio)
        assert int((~keep_b).sum()) == min(target, removable_b)
        assert int((~keep_a).sum()) == target - min(target, removable_b)
    assert int((~keep_a).sum()) > 0  # at 0.5 the floor of conv_b binds, conv_a gives the rest


def test_chase_removes_the_globally_lowest_umm_of_the_matching_unstructured_mask():
    network, _ = _network()
    ratios = [0.25]
    keeps = chase_channel_selection(network, ratios, beta=0.0)  # floors of 1 never bind here
    # one channel ratio: matching rank is the middle unstructured ratio (as UMG's rank_match)
    u_spec = SubnetSpec('unstructured', U_RATIOS[1])
    scores = torch.cat([channel_scores_umm(network.layers[n].dense_weight.detach(),
                                           network.layers[n].mask_for(u_spec).float())
                        for n in ('conv_a', 'conv_b')])
    removed = set(torch.argsort(scores, stable=True)[:28 - keep_count(28, 0.25)].tolist())
    got = torch.cat([keeps['conv_a'][0], keeps['conv_b'][0]])
    assert set(torch.nonzero(~got).squeeze(1).tolist()) == removed


def test_chase_masks_are_nested_exact_floored_and_only_on_removable_layers():
    network, _ = _network(subnets=[f'unstructured@{r}' for r in U_RATIOS]
                          + [f'channel@{r}' for r in (0.1, 0.3, 0.5, 0.6)])
    chase_channel_masks(network, beta=0.5)
    assert network.channel_layers == ['conv_a', 'conv_b']
    assert network.layers['conv_c'].mask_channel.numel() == 0  # feeds the residual add
    previous = None
    for ratio in (0.1, 0.3, 0.5, 0.6):
        keeps = {n: network.layers[n].channel_keep(SubnetSpec('channel', ratio))
                 for n in network.channel_layers}
        assert sum(int((~k).sum()) for k in keeps.values()) == 28 - keep_count(28, ratio)
        for n, k in keeps.items():
            assert int(k.sum()) >= channel_floor(k.numel(), 0.5, ratio)
            if previous is not None:
                assert not bool((k & ~previous[n]).any()), (n, ratio)  # nested
        previous = keeps


def test_chase_floors_that_forbid_the_exact_count_raise():
    network, _ = _network(subnets=['unstructured@0.5', 'channel@0.3'])
    # beta=1: floors ceil(0.7*16) + ceil(0.7*12) = 12 + 9 = 21 > the 20 channels to keep
    with pytest.raises(SparsitySpecError, match='channel@0.3 by Chase.*lower beta'):
        chase_channel_masks(network, beta=1.0)


def test_chase_leaves_other_patterns_masks_untouched():
    network, _ = _network()
    before = {n: layer.mask_unstructured_level.clone() for n, layer in network.layers.items()}
    chase_channel_masks(network, beta=0.5)
    assert all(torch.equal(before[n], l.mask_unstructured_level)
               for n, l in network.layers.items())


# -- unstructured by Spartan ---------------------------------------------------------------
def _spartan_step(network, ratio=0.5, beta=5.0):
    spec = SubnetSpec('unstructured', ratio)
    masker = SpartanMasker(network.layers, 'global')
    with torch.no_grad():  # make the stored levels stale, so the rebuild shows
        for layer in network.layers.values():
            layer.dense_weight.add_(0.05 * torch.randn_like(layer.dense_weight))
    spartan_unstructured_step(network, masker, spec, beta)
    network.set_active(spec)
    return spec, masker


def test_spartan_forward_is_the_hard_projection_of_the_soft_masked_weights():
    network, _ = _network()
    spec, _ = _spartan_step(network)
    fresh = SpartanMasker(network.layers, 'global').masks(spec.ratio, 5.0)
    flat = torch.cat([l.dense_weight.detach().abs().reshape(-1) for l in network.layers.values()])
    threshold = flat.sort(descending=True).values[keep_count(flat.numel(), spec.ratio) - 1]
    for name, layer in network.layers.items():
        soft, _ = fresh[name]
        hard = layer.dense_weight.detach().abs() >= threshold  # global magnitude top-k
        expected = layer.dense_weight.detach() * soft.detach() * hard
        assert torch.allclose(layer.weight.detach(), expected, atol=1e-6), name
        assert torch.equal(layer.mask_for(spec), hard), name  # stored mask = the forward's


def test_spartan_gradient_reaches_pruned_weights_straight_through():
    network, x = _network()
    spec, _ = _spartan_step(network)
    network.model.zero_grad()
    network.model(x).square().mean().backward()
    for name, layer in network.layers.items():
        pruned = ~layer.mask_for(spec)
        assert bool(pruned.any()) and bool((layer.dense_weight.grad[pruned] != 0).any()), name


def test_spartan_levels_are_rebuilt_nested_and_exact_at_every_ratio():
    network, _ = _network()
    _spartan_step(network)
    scores = {n: l.dense_weight.detach().abs() for n, l in network.layers.items()}
    total = sum(s.numel() for s in scores.values())
    previous = None
    for ratio in U_RATIOS:
        masks = [l.mask_for(SubnetSpec('unstructured', ratio)) for l in network.layers.values()]
        assert sum(int(m.sum()) for m in masks) == keep_count(total, ratio)
        if previous is not None:
            assert all(not bool((m & ~p).any()) for m, p in zip(masks, previous))
        previous = masks
    # rebuilt from the current weights: a fresh UMG on them gives the same levels
    stored = {n: l.mask_unstructured_level.clone() for n, l in network.layers.items()}
    generate_masks(network, [f'unstructured@{r}' for r in U_RATIOS])
    assert all(torch.equal(stored[n], l.mask_unstructured_level)
               for n, l in network.layers.items())


def test_other_subnets_and_cleared_layers_see_no_spartan_transform():
    network, x = _network()
    spec, _ = _spartan_step(network)
    assert all(isinstance(l.weight_transform, ForwardWeight) for l in network.layers.values())
    for other in (DENSE, SubnetSpec('channel', 0.25), SubnetSpec('unstructured', 0.8)):
        network.set_active(other)  # e.g. the distiller's dense teacher pass
        for layer in network.layers.values():
            mask = layer.mask_for(other) if other != DENSE else None
            raw = layer.dense_weight
            assert torch.equal(layer.weight, raw if mask is None else raw * mask)
    clear_forward_weights(network.layers)
    network.set_active(spec)
    assert all(l.weight_transform is None for l in network.layers.values())
    assert all(torch.equal(l.weight, l.dense_weight * l.mask_for(spec))
               for l in network.layers.values())


def test_spartan_step_is_reproducible_from_the_weights_alone():
    """No solver warm start survives between steps: a resumed run computes the same."""
    network, _ = _network()
    spec, masker = _spartan_step(network)
    first = {n: l.weight.detach().clone() for n, l in network.layers.items()}
    # the same masker after a step at another budget and β (a warm start a resumed run lacks)
    spartan_unstructured_step(network, masker, SubnetSpec('unstructured', 0.8), 1.0)
    spartan_unstructured_step(network, masker, spec, 5.0)
    assert all(torch.equal(first[n], l.weight) for n, l in network.layers.items())
