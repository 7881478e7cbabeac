"""Rebuilding a slimmed architecture from its widths: narrowed_spec + narrow_modules give a
freshly built model the slimmed model's state dict loads into, with its outputs."""
import json

import pytest
import torch
from torch import nn

from mmsparse.core import channel_keep, slim_subnet
from mmsparse.core.export import NarrowingError, narrow_modules, narrowed_spec
from mmsparse.core.export.slimming import (SlimmingError, round_channel_keep,
                                           slim_subnet_restoring)
from export_models import (Composite, composite_network, detector_outputs,
                           tiny_mask_rcnn_network)


def test_composite_rebuilt_from_widths_equals_the_slimmed_model():
    network, x = composite_network()
    slim = slim_subnet(network, 'channel@0.50').eval()
    spec = narrowed_spec(network.model, slim)
    assert json.loads(json.dumps(spec)) == spec  # plain ints: fit for a config
    assert spec['bn'] == {'num_features': 4} and spec['up'] == {'in_channels': 4,
                                                               'out_channels': 4}
    assert spec['fc2'] == {'in_features': 8, 'out_features': 8}
    fresh = narrow_modules(Composite(), spec).eval()
    fresh.load_state_dict(slim.state_dict(), strict=True)
    with torch.no_grad():
        assert torch.equal(fresh(x), slim(x))
    assert narrowed_spec(Composite(), Composite()) == {}


def test_tiny_mask_rcnn_rebuilt_from_widths_gives_the_masked_outputs():
    """With channel_groups the FPN, the RoI extractors' out_channels (no weights, an
    attribute only) and the heads narrow too."""
    from mmdet.registry import MODELS
    from mmengine.config import Config

    from conftest import TINY_CONFIG
    network, inputs, samples = tiny_mask_rcnn_network(channel_groups=True)
    network.set_active('channel@0.50')
    try:
        expected = detector_outputs(network.model, inputs, samples)
    finally:
        network.set_active('dense')
    slim = slim_subnet(network, 'channel@0.50').eval()
    spec = narrowed_spec(network.model, slim)
    assert spec['roi_head.bbox_roi_extractor'] == {'out_channels': 8}
    assert spec['neck.fpn_convs.0.conv'] == {'in_channels': 8, 'out_channels': 8}
    groups = [g for g in network.channel_layer_groups() if len(g) > 1]
    rounded = round_channel_keep(network, channel_keep(network, 'channel@0.50'), 3)
    assert groups and all(rounded[n].equal(rounded[g[0]]) for g in groups for n in g)
    assert all(int(k.sum()) % 3 == 0 or k.all() for k in rounded.values())
    fresh = narrow_modules(MODELS.build(Config.fromfile(str(TINY_CONFIG)).model), spec).eval()
    fresh.load_state_dict(slim.state_dict(), strict=True)
    got = detector_outputs(fresh, inputs, samples)
    keep = network.layers['neck.fpn_convs.0.conv'].channel_keep(network.resolve('channel@0.50'))
    narrowed = 0
    for g, s, e in zip(got, detector_outputs(slim, inputs, samples), expected, strict=True):
        assert torch.equal(g, s)
        if g.shape != e.shape:  # an FPN level: the masked model's kept channels, the rest 0
            assert not e[:, ~keep].any()
            e, narrowed = e[:, keep], narrowed + 1
        assert torch.allclose(g, e, atol=1e-4, rtol=1e-4)
    assert narrowed == 5  # the four FPN outputs and the pooled fifth level


class _Scaled(nn.Module):
    """A layer with its own weights whose shapes narrow_modules cannot derive."""

    def __init__(self, c):
        super().__init__()
        self.out_channels = c
        self.scale = nn.Parameter(torch.ones(c))


def test_unrebuildable_layers_are_refused_by_name():
    reference, slimmed = nn.Sequential(_Scaled(4)), nn.Sequential(_Scaled(2))
    with pytest.raises(NarrowingError, match=r'cannot rebuild the narrowed layer 0 \(_Scaled\)'):
        narrowed_spec(reference, slimmed)
    # a tensor that changed shape with no width attribute to say so
    reference, slimmed = nn.Sequential(nn.LayerNorm(4)), nn.Sequential(nn.LayerNorm(2))
    with pytest.raises(NarrowingError, match=r"layer 0 \(LayerNorm\): its tensors \['bias', "):
        narrowed_spec(reference, slimmed)
    with pytest.raises(NarrowingError, match='cannot rebuild the narrowed layer 0 '):
        narrow_modules(nn.Sequential(_Scaled(4)), {'0': {'out_channels': 2}})


def test_bad_narrowing_requests_change_nothing():
    model = nn.Sequential(nn.Conv2d(4, 8, 3, groups=2), nn.BatchNorm2d(8))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for narrowed, match in (({'2': {'out_channels': 4}}, "'2' is not in the model"),
                            ({'1': {'out_channels': 4}}, "no width attribute 'out_channels'"),
                            ({'1': {'num_features': 4.0}}, 'must be a positive int'),
                            ({'1': {'num_features': 4}, '0': {'out_channels': 5}},
                             'groups do not divide')):
        with pytest.raises(NarrowingError, match=match):
            narrow_modules(model, narrowed)
        assert model[0].out_channels == 8 and model[1].num_features == 8
        assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    narrow_modules(model, {'0': {'out_channels': 4}, '1': {'num_features': 4}})
    assert model[0].weight.shape == (4, 2, 3, 3) and model[1].running_var.shape == (4, )
    assert model(torch.randn(1, 4, 5, 5)).shape == (1, 4, 3, 3)


def test_divisor_rounds_kept_channels_up_with_the_strongest_removed_ones():
    network, x = composite_network()
    keep = channel_keep(network, 'channel@0.50')
    rounded = round_channel_keep(network, keep, 3)
    for name, kept in keep.items():
        new = rounded[name]
        assert (new | kept).equal(new)  # the subnet's channels all stay
        assert int(new.sum()) in (len(new), -(-int(kept.sum()) // 3) * 3), name
        restored = new & ~kept
        layer = network.layers[name]
        out_axis = 1 if isinstance(layer, nn.ConvTranspose2d) else 0
        l1 = layer.dense_weight.detach().abs().transpose(0, out_axis).flatten(1).sum(1)
        if restored.any() and (~new).any():
            assert l1[restored].min() >= l1[~new].max(), name
    slim, restored = slim_subnet_restoring(network, 'channel@0.50', divisor=3)
    slim.eval()
    assert restored == sum(int(rounded[n].sum() - keep[n].sum()) for n in keep) > 0
    assert slim_subnet_restoring(network, 'channel@0.50')[1] == 0
    assert slim.conv.out_channels == int(rounded['conv'].sum())
    dense = network.layers['conv'].dense_weight.detach()
    # restored channels carry their dense weights (inputs: res.head's kept channels)
    assert torch.equal(slim.conv.weight, dense[rounded['conv']][:, rounded['res.head']])
    spec = narrowed_spec(network.model, slim)
    fresh = narrow_modules(Composite(), spec).eval()
    fresh.load_state_dict(slim.state_dict(), strict=True)
    with torch.no_grad():
        assert torch.equal(fresh(x), slim(x))
    assert all(v.equal(keep[k]) for k, v in round_channel_keep(network, keep, 1).items())
    with pytest.raises(SlimmingError, match='positive int, got 0'):
        round_channel_keep(network, keep, 0)
