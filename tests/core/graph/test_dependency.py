"""Channel dependency analysis on tiny models with residual adds, sums, concats, deconvs."""
from torch import nn

from mmsparse.core import analyze_channels
from tiny_models import (Concat, ConvBNBias, Deconv, FPNLike, LinearHead, Residual, build)


def _analyze(cls):
    model, run, _ = build(cls)
    return analyze_channels(model, run)


def test_conv_bn_bias_chain():
    g = _analyze(ConvBNBias)
    assert g.channels['conv1'].removable
    assert g.channels['conv1'].followers == ['bn1'] and g.channels['conv1'].consumers == ['conv2']
    assert not g.channels['conv2'].removable and 'model output' in g.channels['conv2'].reason
    assert g.input_layers == {'conv1'} and g.output_layers == {'conv2'}


def test_residual_block():
    g = _analyze(Residual)
    assert g.channels['conv1'].removable and g.channels['conv1'].consumers == ['conv2']
    for coupled in ('stem', 'conv2'):  # both feed the residual add
        assert not g.channels[coupled].removable
        assert 'Add' in g.channels[coupled].reason
    assert g.input_layers == {'stem'} and g.output_layers == {'head'}
    assert g.order == ['stem', 'conv1', 'conv2', 'head']


def test_fpn_sum_and_shared_head():
    g = _analyze(FPNLike)
    assert not g.channels['lateral2'].removable and not g.channels['lateral3'].removable
    # c2 feeds two consumers directly (c3 and lateral2): removable from both at once.
    assert g.channels['c2'].removable
    assert sorted(g.channels['c2'].consumers) == ['c3', 'lateral2']
    assert g.channels['c3'].removable  # feeds only lateral3
    assert g.channels['head_conv'].removable  # shared across levels, each call ok
    assert g.channels['head_conv'].consumers == ['head_cls']
    assert g.channels['out2'].removable and g.channels['out3'].removable
    assert g.output_layers == {'head_cls'}


def test_linear_head():
    g = _analyze(LinearHead)
    assert g.channels['fc1'].removable and g.channels['fc2'].removable
    assert sorted(g.channels['fc2'].consumers) == ['cls', 'reg']
    assert g.output_layers == {'cls', 'reg'}


def test_deconv():
    g = _analyze(Deconv)
    assert g.channels['conv'].removable and g.channels['conv'].consumers == ['upsample']
    assert g.channels['upsample'].removable and g.channels['upsample'].consumers == ['logits']


def test_concatenation_couples_channels():
    g = _analyze(Concat)
    assert not g.channels['a'].removable and 'Cat' in g.channels['a'].reason
    assert not g.channels['b'].removable


def test_grouped_consumer_blocks_removal():
    class Grouped(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(4, 8, 1)
            self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
            self.out = nn.Conv2d(8, 2, 1)

        def forward(self, x):
            return self.out(self.dw(self.a(x)))
    import torch
    x = torch.randn(1, 4, 4, 4)
    g = analyze_channels(Grouped(), lambda m: m(x))
    assert not g.channels['a'].removable and 'grouped conv dw' in g.channels['a'].reason
    # its own channels could go only a group at a time, with the inputs feeding the group
    assert not g.channels['dw'].removable and g.channels['dw'].consumers == ['out']
    assert 'grouped conv (groups=8)' in g.channels['dw'].reason


def test_analysis_restores_mode_and_requires_grad():
    model, run, _ = build(Residual)
    model.train()
    model.conv1.weight.requires_grad_(False)
    analyze_channels(model, run)
    assert model.training and not model.conv1.weight.requires_grad
    assert model.conv2.weight.requires_grad
