"""Spartan core: schedules, allocation, FLOPs costs, dual-averaging forward and backward."""
import math

import pytest
import torch

from mmsparse.core import SparseNetwork, generate_masks
from mmsparse.core.methods.allocation import erk_densities
from mmsparse.core.patterns import SparsitySpecError, keep_count, topk_mask
from mmsparse.core.methods.soft_topk import soft_topk
from mmsparse.core.methods.spartan import (ForwardWeight, SpartanMasker, SpartanSchedule,
                                           check_spartan_schedule, clear_forward_weights,
                                           default_beta_end, dual_averaging_weight,
                                           flops_costs, spartan_forward)
from tiny_models import FPNLike, Residual, build


def _network(cls=FPNLike, seed=0):
    model, run, x = build(cls, seed)
    return model, run, x, SparseNetwork(model, run)


def _kept(masks, name):
    return int(masks[name][1].sum())


# -- schedules ----------------------------------------------------------------------------
def test_schedules_at_their_boundaries():
    s = SpartanSchedule(0.8, 100, anneal_end=0.2, beta_start=1.0, beta_end=20.0, freeze_at=0.8)
    assert s.anneal_iter == 20 and s.freeze_iter == 80
    assert s.density_at(0) == 1.0 and math.isclose(s.density_at(10), 0.6)
    assert math.isclose(s.density_at(20), 0.2) and math.isclose(s.density_at(99), 0.2)
    assert s.sparsity_at(20) == 0.8  # exactly the target: exact keep counts downstream
    assert s.beta_at(0) == 1.0 and math.isclose(s.beta_at(40), 10.5) and s.beta_at(80) == 20.0
    assert s.beta_at(100) == 20.0
    assert not s.frozen(79) and s.frozen(80) and s.frozen(99)
    assert default_beta_end() == 20.0 and default_beta_end((4, 1)) == 40.0
    assert default_beta_end((2, 2), base=10.0) == 20.0


def test_schedule_rejects_bad_values():
    with pytest.raises(SparsitySpecError, match='Spartan sparsity'):
        SpartanSchedule(1.0, 10)
    with pytest.raises(ValueError, match='anneal_end'):
        SpartanSchedule(0.5, 10, anneal_end=0.9, freeze_at=0.8)
    with pytest.raises(ValueError, match='beta'):
        SpartanSchedule(0.5, 10, beta_start=5.0, beta_end=1.0)


@pytest.mark.parametrize('options, match', [
    (dict(sparsity=1.0), r'Spartan sparsity must be in \[0, 1\), got 1.0'),
    (dict(anneal_end=-0.1), 'anneal_end=-0.1'),
    (dict(freeze_at=1.5), 'anneal_end <= freeze_at <= 1, got anneal_end=0.2, freeze_at=1.5'),
    (dict(beta_start=-1.0), 'beta_start <= beta_end, got -1.0, 20.0'),
])
def test_the_schedule_options_are_checked_without_a_training_length(options, match):
    with pytest.raises(ValueError, match=match):
        check_spartan_schedule(**options)


# -- allocation ---------------------------------------------------------------------------
def test_global_allocation_keeps_the_exact_count_and_meets_the_soft_budget():
    _, _, _, net = _network(Residual)
    masker = SpartanMasker(net.layers, 'global')
    masks = masker.masks(0.7, 15.0)
    total = sum(layer.dense_weight.numel() for layer in net.layers.values())
    keep = keep_count(total, 0.7)
    assert sum(_kept(masks, n) for n in masks) == keep
    soft_sum = sum(float(soft.sum()) for soft, _ in masks.values())
    assert abs(soft_sum - keep) <= 1e-4 * keep
    # One budget over all layers: the hard mask is the global magnitude top-k.
    flat = torch.cat([net.layers[n].dense_weight.detach().abs().reshape(-1) for n in masks])
    assert torch.equal(torch.cat([masks[n][1].reshape(-1) for n in masks]),
                       topk_mask(flat, keep))


def test_uniform_and_erk_allocation_per_layer():
    _, _, _, net = _network()
    uniform = SpartanMasker(net.layers, 'uniform').masks(0.6, 15.0)
    for name, layer in net.layers.items():
        assert _kept(uniform, name) == keep_count(layer.dense_weight.numel(), 0.6)
    erk = SpartanMasker(net.layers, 'erk').masks(0.6, 15.0)
    densities = erk_densities({n: l.dense_weight.shape for n, l in net.layers.items()}, 0.4)
    assert len(set(round(d, 3) for d in densities.values())) > 1  # really not uniform
    for name, layer in net.layers.items():
        n = layer.dense_weight.numel()
        assert abs(_kept(erk, name) - densities[name] * n) <= 1, name


def test_block_masks_are_constant_on_blocks():
    _, _, _, net = _network(Residual)
    masks = SpartanMasker(net.layers, 'global', block_shape=(4, 2)).masks(0.5, 10.0)
    for name, (soft, hard) in masks.items():
        blocks = hard.reshape(4, 4, 8, 2, 9)  # (Cout/4, 4, Cin/2, 2, kh*kw) for 16x16 3x3
        assert bool((blocks == blocks[:, :1, :, :1, :1]).all()), name
        sblocks = soft.reshape(4, 4, 8, 2, 9)
        assert torch.equal(sblocks, sblocks[:, :1, :, :1, :1].expand_as(sblocks))
    total = sum(l.dense_weight.numel() for l in net.layers.values())
    assert sum(int(h.sum()) for _, h in masks.values()) == total // 2
    with pytest.raises(SparsitySpecError, match='layer'):
        SpartanMasker(net.layers, block_shape=(3, 1))


def test_bad_allocation_and_costs_fail_early():
    _, _, _, net = _network()
    with pytest.raises(ValueError, match='allocation'):
        SpartanMasker(net.layers, 'magic')
    with pytest.raises(ValueError, match='no cost'):
        SpartanMasker(net.layers, layer_costs={'c3': 1.0})


# -- FLOPs cost model ---------------------------------------------------------------------
def test_flops_costs_follow_output_resolution():
    model, run, _, net = _network()
    costs = flops_costs(model, run, list(net.layers))
    # 16x16 input: out2 runs at 8x8, out3 at 4x4, head_conv on both levels.
    assert costs['out2'] == 64 and costs['out3'] == 16 and costs['head_conv'] == 80
    assert costs['out2'] > costs['out3']


def test_cost_sensitive_allocation_prunes_high_resolution_layers_more():
    model, run, _, net = _network()
    with torch.no_grad():  # identical weights at two resolutions
        net.layers['out3'].dense_weight.copy_(net.layers['out2'].dense_weight)
    by_params = SpartanMasker(net.layers, 'global').masks(0.6, 15.0)
    assert torch.equal(by_params['out2'][0], by_params['out3'][0])
    by_flops = SpartanMasker(net.layers, 'global',
                             layer_costs=flops_costs(model, run, list(net.layers)))
    masks = by_flops.masks(0.6, 15.0)
    assert _kept(masks, 'out2') < _kept(masks, 'out3')
    assert float(masks['out2'][0].sum()) < float(masks['out3'][0].sum())
    # The budget is in FLOPs: the kept weights' cost is 40% of the total cost.
    costs = flops_costs(model, run, list(net.layers))
    kept = sum(costs[n] * _kept(masks, n) for n in masks)
    total = sum(costs[n] * net.layers[n].dense_weight.numel() for n in masks)
    assert kept <= 0.4 * total and kept > 0.38 * total


# -- dual averaging -----------------------------------------------------------------------
def test_forward_is_the_hard_projection_and_the_gradient_goes_straight_through():
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(6, 4, 3, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    probe = torch.randn(weight.shape, generator=gen, dtype=torch.float64)

    def soft_of(w):
        return soft_topk(w.abs().reshape(-1), torch.ones((), dtype=w.dtype), 50, 4.0,
                         tol=1e-12)[0].view(w.shape)

    soft = soft_of(weight)
    hard = topk_mask(soft.detach(), 50)
    out = dual_averaging_weight(weight, soft, hard)
    assert torch.equal(out, weight.detach() * soft.detach() * hard)
    assert int((out != 0).sum()) == 50
    (grad, ) = torch.autograd.grad((out * probe).sum(), weight)
    # Straight through the projection: the gradient of w ⊙ m(w), pruned weights included.
    (expected, ) = torch.autograd.grad((weight * soft_of(weight) * probe).sum(), weight)
    assert torch.allclose(grad, expected) and bool((grad[~hard] != 0).all())
    # Without differentiating through the mask: just the soft-mask-scaled gradient.
    out = dual_averaging_weight(weight, soft_of(weight), hard, through_mask=False)
    (grad, ) = torch.autograd.grad((out * probe).sum(), weight)
    assert torch.allclose(grad, probe * soft.detach())


def test_weight_transform_replaces_the_masked_forward_and_store_fills_the_buffers():
    model, _, x, net = _network(Residual)
    generate_masks(net, ['unstructured@0.8'])
    net.set_active('unstructured@0.8')
    masked_out = model(x)
    masker = SpartanMasker(net.layers, 'global')
    masks = spartan_forward(masker, 0.8, 20.0)
    for name, (soft, hard) in masks.items():
        layer = net.layers[name]
        assert isinstance(layer.weight_transform, ForwardWeight)
        assert torch.equal(layer.weight_transform.weight,
                           dual_averaging_weight(layer.dense_weight, soft, hard))
    spartan_out = model(x)
    assert not torch.allclose(spartan_out, masked_out)
    net.set_active('dense')  # without a spec the forward is used under any active subnet
    assert torch.equal(model(x), spartan_out)
    net.set_active('unstructured@0.8')
    clear_forward_weights(net.layers)
    assert torch.equal(model(x), masked_out)  # cleared: the stored mask again
    masker.store(masks, 0.8)
    for name, (_, hard) in masks.items():
        assert torch.equal(net.layers[name].mask_for('unstructured@0.8'), hard)
    # Merging the soft mask makes the masked subnet compute what the Spartan forward did.
    masker.merge_soft(masks)
    assert torch.allclose(model(x), spartan_out.detach(), atol=1e-5)


def test_freeze_merges_the_soft_masks_and_stores_the_hard_ones():
    model, _, x, net = _network(Residual)
    generate_masks(net, ['unstructured@0.8'])
    masker = SpartanMasker(net.layers, 'global')
    spartan_forward(masker, 0.8, 20.0)
    spartan_out = model(x).detach()
    clear_forward_weights(net.layers)
    expected = {n: (net.layers[n].dense_weight.detach() * s.detach(), h)
                for n, (s, h) in masker.masks(0.8, 20.0).items()}
    masker.freeze(0.8, 20.0)
    net.set_active('unstructured@0.8')
    for name, (weight, hard) in expected.items():
        layer = net.layers[name]
        assert torch.allclose(layer.dense_weight.detach(), weight), name
        assert torch.equal(layer.mask_for('unstructured@0.8'), hard), name
    assert torch.allclose(model(x), spartan_out, atol=1e-5)


def test_masks_are_fp32_under_autocast_when_it_is_disabled_as_the_hook_does():
    _, _, x, net = _network(Residual)
    masker = SpartanMasker(net.layers, 'global')
    with torch.autocast('cpu', dtype=torch.bfloat16):
        masks = spartan_forward(masker, 0.5, 10.0)  # disables autocast itself
    forward = {n: net.layers[n].weight_transform.weight for n in masks}
    assert all(s.dtype == torch.float32 and f.dtype == torch.float32
               for (s, _), f in zip(masks.values(), forward.values()))
    total = sum(l.dense_weight.numel() for l in net.layers.values())
    soft_sum = sum(float(s.sum()) for s, _ in masks.values())
    assert abs(soft_sum - keep_count(total, 0.5)) <= 1e-4 * total
