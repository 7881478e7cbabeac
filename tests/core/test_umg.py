"""Unified mask generation: exact sparsity, nesting, determinism, guidance, errors."""
import logging

import pytest
import torch

from mmsparse.core import (LayerSelectionError, MaskSpec, SparseNetwork, SparsitySpecError,
                           SubnetNameError, generate_masks, is_mask_key, select_layers)
from mmsparse.core.attach import nm_dense_layers
from mmsparse.core.patterns import channel_mask, channel_scores_guided, keep_count
from mmsparse.core.subnets import parse_subnet
from tiny_models import FPNLike, LinearHead, Residual, build

RATIOS = ['unstructured@0.20', 'unstructured@0.50', 'unstructured@0.90']


def _net(cls=Residual, **kwargs):
    model, run, x = build(cls)
    return SparseNetwork(model, run, **kwargs), x


@pytest.mark.parametrize('scope', ['global', 'layer'])
def test_unstructured_sparsity_is_exact_and_nested(scope):
    net, _ = _net(FPNLike)
    generate_masks(net, RATIOS, MaskSpec(unstructured_scope=scope))
    total = sum(layer.dense_weight.numel() for layer in net.layers.values())
    previous = None
    for name in RATIOS:
        spec = parse_subnet(name)
        masks = {n: layer.mask_for(spec) for n, layer in net.layers.items()}
        if scope == 'global':
            kept = sum(int(m.sum()) for m in masks.values())
            assert kept == keep_count(total, spec.ratio)
        else:
            for n, m in masks.items():
                assert int(m.sum()) == keep_count(m.numel(), spec.ratio), n
        if previous is not None:
            assert all(not (masks[n] & ~previous[n]).any() for n in masks)
        previous = masks


def test_same_weights_and_spec_give_the_same_masks():
    a, _ = _net()
    b, _ = _net()
    subnets = RATIOS + ['channel@0.25', 'nm@2:4', 'block@0.50']
    spec = MaskSpec(block_shape=(2, 2))
    generate_masks(a, subnets, spec)
    generate_masks(b, subnets, spec)
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa if is_mask_key(k))


def test_channel_masks_exact_count_and_guided_by_other_patterns():
    net, _ = _net(LinearHead, sparsify_input_layers=True)
    generate_masks(net, ['unstructured@0.50', 'nm@2:4', 'channel@0.25', 'channel@0.50'])
    fc1 = net.layers['fc1']
    for ratio in (0.25, 0.5):
        keep = fc1.channel_keep(parse_subnet(f'channel@{ratio:.2f}'))
        assert int(keep.sum()) == keep_count(16, ratio)
    # channel@0.25 is guided by the unstructured mask of matching rank and the N:M mask.
    u = fc1.mask_for(parse_subnet('unstructured@0.50')).float()
    nm = fc1.mask_for(parse_subnet('nm@2:4')).float()
    expected = channel_mask(channel_scores_guided(fc1.dense_weight.abs(), u, nm), 0.25)
    assert torch.equal(fc1.channel_keep(parse_subnet('channel@0.25')), expected)
    # Only removable layers hold channel masks.
    assert 'cls' not in net.layers and net.channel_layers == ['fc1', 'fc2']


def test_block_masks_nested_and_exact():
    net, _ = _net()
    generate_masks(net, ['block@0.25', 'block@0.75'], MaskSpec(block_shape=(4, 2)))
    conv = net.layers['conv1']
    low = conv.mask_for(parse_subnet('block@0.25'))
    high = conv.mask_for(parse_subnet('block@0.75'))
    assert not (high & ~low).any()
    assert int(low.sum()) == conv.dense_weight.numel() * 3 // 4
    assert int(high.sum()) == conv.dense_weight.numel() // 4


def test_stem_and_prediction_layers_stay_dense_by_default():
    net, _ = _net()
    assert sorted(net.layers) == ['conv1', 'conv2']
    model, run, _ = build(Residual)
    both = SparseNetwork(model, run, sparsify_input_layers=True, sparsify_output_layers=True)
    assert sorted(both.layers) == ['conv1', 'conv2', 'head', 'stem']


def test_glob_selection_and_errors():
    model, run, _ = build(FPNLike)
    assert select_layers(model, include=['lateral*']) == ['lateral2', 'lateral3']
    assert select_layers(model, exclude=['head_*', 'c?']) == ['lateral2', 'lateral3', 'out2',
                                                             'out3']
    with pytest.raises(LayerSelectionError, match="include glob 'backbone.\\*' matches no"):
        select_layers(model, include=['backbone.*'])
    with pytest.raises(LayerSelectionError, match="exclude glob 'neck' matches no"):
        select_layers(model, exclude=['neck'])
    with pytest.raises(LayerSelectionError, match='no layer left'):
        select_layers(model, exclude=['*'])


def test_impossible_subnets_fail_before_any_mask_is_written():
    class Odd(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Conv2d(3, 6, 1)
            self.b = torch.nn.Conv2d(6, 6, 1)
            self.c = torch.nn.Conv2d(6, 2, 1)

        def forward(self, x):
            return self.c(self.b(self.a(x)))
    x = torch.randn(1, 3, 4, 4)
    net = SparseNetwork(Odd(), lambda m: m(x))
    with pytest.raises(SparsitySpecError, match=r'nm@2:4: no selected layer has input '
                                                r'channels divisible by M=4 \(e.g. b: 6\)'):
        generate_masks(net, ['unstructured@0.5', 'nm@2:4'])
    assert net.layers['b'].mask_unstructured_ratios.numel() == 0
    with pytest.raises(SubnetNameError, match='cannot parse'):
        generate_masks(net, ['unstructured@50%'])
    with pytest.raises(SparsitySpecError, match="unstructured_scope must be"):
        MaskSpec(unstructured_scope='model')


def test_nm_leaves_layers_it_cannot_cover_dense_and_logs_them(caplog):
    class Mixed(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = torch.nn.Conv2d(3, 8, 1)
            self.b = torch.nn.Conv2d(8, 6, 1)  # 8 inputs: 2:4 fits
            self.c = torch.nn.Conv2d(6, 8, 1)  # 6 inputs: 2:4 does not
            self.d = torch.nn.Conv2d(8, 8, 3, padding=1, groups=8)  # depthwise: 1 input
            self.head = torch.nn.Conv2d(8, 2, 1)

        def forward(self, x):
            return self.head(self.d(self.c(self.b(self.stem(x)))))
    x = torch.randn(1, 3, 4, 4)
    net = SparseNetwork(Mixed(), lambda m: m(x))
    assert nm_dense_layers(net, 2, 4) == ['c', 'd']
    logger = logging.getLogger('mmsparse')
    logger.addHandler(caplog.handler)  # the core's logger does not propagate under mmsparse
    try:
        with caplog.at_level(logging.INFO, logger='mmsparse'):
            generate_masks(net, ['nm@2:4', 'unstructured@0.5'])
    finally:
        logger.removeHandler(caplog.handler)
    assert '2 of 3 masked layers stay dense for nm@2:4' in caplog.text
    assert 'c, d' in caplog.text
    assert net.layers['b'].mask_for('nm@2:4').float().mean() == 0.5
    assert net.layers['c'].mask_for('nm@2:4') is None
    assert net.layers['d'].mask_for('unstructured@0.5') is not None
    assert [s.name for s in net.subnets()] == ['dense', 'unstructured@0.50', 'nm@2:4']


def test_unknown_subnet_lists_valid_ones():
    net, _ = _net()
    generate_masks(net, ['unstructured@0.50', 'nm@2:4'])
    with pytest.raises(SubnetNameError, match='unknown subnet .channel@0.30.*dense, '
                                              'unstructured@0.50, nm@2:4'):
        net.set_active('channel@0.30')
