"""Measured sparsity, parameters and FLOPs count what a subnet really keeps."""
import pytest
from torch import nn

from mmsparse.core import (SparseNetwork, SubnetNameError, channel_keep, generate_masks,
                           record_positions, subnet_stats)
from mmsparse.core.attach import channel_companions
from tiny_models import ConvBNBias, build


def _net():
    model, run, _ = build(ConvBNBias)
    net = SparseNetwork(model, run, sparsify_input_layers=True, sparsify_output_layers=True)
    generate_masks(net, ['unstructured@0.75', 'channel@0.50', 'nm@1:4'],)
    return net, record_positions(model, run)


def test_dense_counts():
    net, positions = _net()
    stats = subnet_stats(net, 'dense', positions)
    params = sum(p.numel() for p in net.model.parameters())
    assert stats.sparsity == 0 and stats.params == stats.params_dense == params
    # conv1: 8x4x3x3 weights at 2x8x8 positions; conv2: 8x8x3x3 at 2x8x8 positions.
    assert stats.flops == stats.flops_dense == (288 + 576) * 128


def test_unstructured_and_nm_counts():
    net, positions = _net()
    unstructured = subnet_stats(net, 'unstructured@0.75', positions)
    assert unstructured.sparsity == 0.75  # global exact: 864 weights, 648 removed
    assert unstructured.params == unstructured.params_dense - 648
    nm = subnet_stats(net, 'nm@1:4', positions)
    assert nm.sparsity == 0.75 and nm.flops == (288 + 576) // 4 * 128


def test_channel_counts_include_bias_bn_and_consumer_inputs():
    net, positions = _net()
    stats = subnet_stats(net, 'channel@0.50', positions)
    # conv1 loses 4 of 8 output channels: 4x4x3x3 weights + 4 biases + 4x2 BN affine;
    # conv2 loses the matching 4 input channels: 8x4x3x3 weights.
    assert stats.params == stats.params_dense - (144 + 4 + 8 + 288)
    assert stats.sparsity == (144 + 288) / 864
    assert stats.flops == (144 + 288) * 128


def test_channel_companions_and_channel_keep_name_what_a_channel_owns():
    net, _ = _net()
    modules = dict(net.model.named_modules())
    owned = [(type(m).__name__, name, tuple(t.shape))
             for m, name, t in channel_companions(modules, net.graph, 'conv1')]
    assert owned == [(type(net.model.conv1).__name__, 'bias', (8, )),
                     ('BatchNorm2d', 'weight', (8, )), ('BatchNorm2d', 'bias', (8, )),
                     ('BatchNorm2d', 'running_mean', (8, )), ('BatchNorm2d', 'running_var', (8, ))]
    assert owned[0][0].startswith('Masked')  # the raw bias parameter, not the masked view
    keep = channel_keep(net, 'channel@0.50')
    assert list(keep) == ['conv1'] and int(keep['conv1'].sum()) == 4
    keep['conv1'][:] = False  # a copy: the stored mask is unchanged
    assert int(net.layers['conv1'].channel_keep(net.resolve('channel@0.50')).sum()) == 4
    assert channel_keep(net, 'channel@0.90', all_layers=True)['conv1'].all()  # not held
    with pytest.raises(SubnetNameError, match="unknown subnet 'channel@0.90'"):
        channel_keep(net, 'channel@0.90')
    plain = nn.BatchNorm2d(8, affine=False)
    modules['bn1'] = plain
    assert [name for _, name, _ in channel_companions(modules, net.graph, 'conv1')] == [
        'bias', 'running_mean', 'running_var']
    with pytest.raises(ValueError, match='bn1 follows channel-masked conv1 but has no affine'):
        channel_companions(modules, net.graph, 'conv1', affine=True)
