"""Masked layers: names kept, dense bitwise identical, masks applied, buffers round-trip."""
import copy
import io
import pickle

import torch
import torch.nn.functional as F
from torch import nn

from mmsparse.core import (SparseNetwork, generate_masks, is_mask_key, make_masked,
                           masked_layers)
from mmsparse.core.layers import original_class, straight_through_mask, unmask_layer
from mmsparse.core.subnets import parse_subnet
from tiny_models import Deconv, LinearHead, Residual, build

SUBNETS = ['dense', 'unstructured@0.50', 'unstructured@0.80', 'channel@0.50', 'nm@2:4',
           'nm@1:4']


def _sparse(cls, subnets=SUBNETS, seed=0, first_layer=False):
    model, run, x = build(cls, seed)
    original = copy.deepcopy(model).eval()
    net = SparseNetwork(model, run, sparsify_input_layers=first_layer)
    generate_masks(net, subnets)
    return model.eval(), original, net, x


def test_parameter_names_and_types_are_kept():
    model, original, net, _ = _sparse(Residual)
    assert [n for n, _ in model.named_parameters()] == [n for n, _ in original.named_parameters()]
    assert isinstance(model.conv1, nn.Conv2d) and type(model.conv1).__name__.startswith('Masked')
    assert 'conv1.mask_unstructured_level' in model.state_dict()


def test_dense_is_bitwise_identical_and_switching_copies_no_weights():
    model, original, net, x = _sparse(Residual)
    ptrs = {n: p.data_ptr() for n, p in model.named_parameters()}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for name in net.subnets():
        net.set_active(name)
        model(x)
    net.set_active('dense')
    assert torch.equal(model(x), original(x))
    assert ptrs == {n: p.data_ptr() for n, p in model.named_parameters()}
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())


def test_active_mask_is_applied_in_forward():
    model, original, net, x = _sparse(Residual)
    for name in ['unstructured@0.50', 'nm@2:4']:
        net.set_active(name)
        for layer_name, layer in net.layers.items():
            mask = layer.mask_for(parse_subnet(name))
            getattr(original, layer_name).weight.data = layer.dense_weight * mask
        assert torch.allclose(model(x), original(x), atol=1e-6)
        assert not torch.equal(model(x), build(Residual)[0].eval()(x))


def test_gradients_reach_only_kept_weights():
    model, _, net, x = _sparse(Residual)
    net.set_active('nm@2:4')
    model.train()
    model(x).sum().backward()
    layer = net.layers['conv1']
    mask = layer.mask_for(parse_subnet('nm@2:4'))
    assert (layer.dense_weight.grad[~mask] == 0).all()
    assert (layer.dense_weight.grad[mask] != 0).any()


def test_straight_through_mask_is_the_masked_value_with_the_unmasked_gradient():
    tensor = torch.randn(4, 6, requires_grad=True)
    mask = (torch.rand(4, 6) > 0.5).float()
    upstream = torch.randn(4, 6)
    out = straight_through_mask(tensor, mask)
    assert torch.equal(out, tensor * mask)
    out.backward(upstream)
    assert torch.equal(tensor.grad, upstream)


def _grads(name, straight_through):
    model, _, net, x = _sparse(Residual)
    model.train()
    net.set_active(name)
    for layer in net.layers.values():
        layer.straight_through = straight_through
    out = model(x)
    out.sum().backward()
    return out.detach(), net.layers['conv1'].dense_weight.grad, net.layers['conv1']


def test_straight_through_layers_keep_the_forward_and_reach_removed_weights():
    for name in ['unstructured@0.50', 'nm@2:4', 'channel@0.50']:
        out, plain, _ = _grads(name, False)
        ste_out, ste, layer = _grads(name, True)
        mask = layer.mask_for(parse_subnet(name))
        assert torch.equal(out, ste_out), name
        assert torch.allclose(ste[mask], plain[mask]), name
        assert (plain[~mask] == 0).all(), name
        if name.startswith('channel'):
            # conv1's removed channels are zeroed after its BatchNorm, so no gradient comes
            # back to them: straight-through changes nothing there (and nothing blows up)
            assert torch.equal(ste, plain)
        else:
            assert (ste[~mask] != 0).any(), name


def test_channel_subnet_outputs_exact_zero_through_bias_and_bn():
    """conv (bias) -> BN (random stats) -> ReLU: removed channels are exactly 0 after BN."""
    for train_mode in (False, True):
        model, _, net, x = _sparse(Residual)
        model.train(train_mode)
        net.set_active('channel@0.50')
        keep = net.layers['conv1'].channel_keep(parse_subnet('channel@0.50'))
        assert int(keep.sum()) == 8
        seen = {}
        model.bn1.register_forward_hook(lambda m, i, o: seen.setdefault('bn1', o))
        model(x)
        assert (seen['bn1'][:, ~keep] == 0).all() and (seen['bn1'][:, keep] != 0).any()


def test_linear_and_deconv_channel_removal_zero_outputs():
    for cls, producer in ((LinearHead, 'fc1'), (Deconv, 'upsample')):
        model, _, net, x = _sparse(cls, ['channel@0.50'], first_layer=True)
        net.set_active('channel@0.50')
        seen = {}
        getattr(model, producer).register_forward_hook(lambda m, i, o: seen.setdefault('o', o))
        model(x)
        keep = net.layers[producer].channel_keep(parse_subnet('channel@0.50'))
        assert (seen['o'].movedim(1, 0)[~keep] == 0).all()


def test_state_dict_round_trip_restores_every_mask():
    model, _, net, x = _sparse(Residual)
    fresh, run, _ = build(Residual, seed=1)  # different weights, no masks yet
    fresh_net = SparseNetwork(fresh, run)
    result = fresh.load_state_dict(model.state_dict())
    assert not result.missing_keys and not result.unexpected_keys
    fresh.eval()
    assert [s.name for s in fresh_net.subnets()] == [s.name for s in net.subnets()]
    for name in net.subnets():
        for lname, layer in net.layers.items():
            a, b = layer.mask_for(name), fresh_net.layers[lname].mask_for(name)
            assert (a is None and b is None) or torch.equal(a, b)
        net.set_active(name)
        fresh_net.set_active(name)
        assert torch.equal(model(x), fresh(x))


def test_stock_state_dict_loads_without_missing_weight_keys():
    model, original, net, _ = _sparse(Residual)
    result = model.load_state_dict(original.state_dict(), strict=False)
    assert result.unexpected_keys == []
    assert result.missing_keys and all(is_mask_key(k) for k in result.missing_keys)


def test_masked_models_pickle_and_deepcopy():
    model, _, net, x = _sparse(Residual)
    net.set_active('unstructured@0.80')
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    assert torch.equal(loaded(x), model(x))
    assert torch.equal(copy.deepcopy(model)(x), model(x))
    assert pickle.loads(pickle.dumps(model.conv1)).active_subnet.name == 'unstructured@0.80'


def test_make_masked_rejects_other_modules_and_works_on_subclasses():
    class MyConv(nn.Conv2d):
        pass
    layer = make_masked(MyConv(2, 4, 1))
    assert isinstance(layer, MyConv) and masked_layers(nn.Sequential(layer))
    try:
        make_masked(nn.BatchNorm2d(3))
    except TypeError as e:
        assert 'cannot mask BatchNorm2d' in str(e)
    else:
        raise AssertionError('BatchNorm must not be maskable')


def test_is_mask_key_is_precise():
    assert is_mask_key('backbone.layer1.0.conv1.mask_nm_bits')
    assert is_mask_key('roi_head.mask_head.convs.0.conv.mask_unstructured_level')
    assert not is_mask_key('roi_head.mask_head.convs.0.conv.weight')
    assert not is_mask_key('roi_head.mask_head.conv_logits.bias')


def test_masked_layer_state_api_cache_tap_and_unmask():
    """The public state API: ``masks_changed`` after an in-place buffer edit, the gradient
    tap (dL/dM = dL/dW_eff * W), ``release_tap`` and ``unmask_layer``."""
    torch.manual_seed(0)
    conv = make_masked(nn.Conv2d(3, 4, 3, padding=1))
    dense = conv.dense_weight.detach().clone()
    keep = torch.rand_like(dense) > 0.5
    conv.set_masks(unstructured=([0.5], keep.to(torch.uint8)))  # level 1: kept at 0.5
    conv.active_subnet = parse_subnet('unstructured@0.50')
    x = torch.randn(2, 3, 5, 5)
    assert torch.equal(conv.active_mask(), keep.float())

    # An in-place edit of the buffers (e.g. a broadcast) is seen only after masks_changed().
    version = conv.mask_version
    with torch.no_grad():
        conv.mask_unstructured_level.zero_()
    assert torch.equal(conv.active_mask(), keep.float())  # still the cached mask
    conv.masks_changed()
    assert conv.mask_version != version and not conv.active_mask().any()
    assert torch.equal(conv(x), F.conv2d(x, torch.zeros_like(dense), conv.bias, padding=1))
    with torch.no_grad():
        conv.mask_unstructured_level.copy_(keep.to(torch.uint8))
    conv.masks_changed()

    # The tap is the mask the forward uses, as a leaf whose grad is dL/dW_eff * W.
    tap = conv.tap_active_mask()
    assert tap.is_leaf and tap.requires_grad and torch.equal(tap, keep.float())
    conv(x).square().sum().backward()
    effective = (dense * keep).requires_grad_()
    F.conv2d(x, effective, conv.bias.detach(), padding=1).square().sum().backward()
    assert torch.allclose(tap.grad, effective.grad * dense, atol=1e-5)
    assert torch.allclose(conv.dense_weight.grad, effective.grad * keep, atol=1e-5)
    conv.release_tap()
    mask = conv.active_mask()
    assert mask is not tap and not mask.requires_grad and torch.equal(mask, keep.float())

    # unmask_layer: the original class, no mask buffers or attributes, the dense weight.
    assert unmask_layer(conv) is conv and type(conv) is nn.Conv2d
    assert not any(is_mask_key(k) for k in conv.state_dict())
    assert not hasattr(conv, 'active_subnet') and original_class(conv) is nn.Conv2d
    assert torch.equal(conv.weight, dense)
    assert torch.equal(conv(x), F.conv2d(x, dense, conv.bias, padding=1))
