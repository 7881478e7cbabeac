"""mmsparse's optimizer wrappers: correction fires inside mmengine, momentum masking, --amp."""
import textwrap

import torch
from mmengine.config import Config
from mmengine.logging import MessageHub
from torch import nn

from conftest import TINY_CONFIG, train
from mmsparse.core import SparseNetwork, generate_masks
from mmsparse.engine.launch import enable_amp
from mmsparse.engine.optimizers import SparseOptimWrapper


def test_gradient_correction_fires_through_update_params():
    w = nn.Parameter(torch.tensor([1.0, 1.0]))
    wrapper = SparseOptimWrapper(torch.optim.SGD([w], lr=0.1),
                                 gradient_correction=dict(group_size=2))
    hub = MessageHub.get_instance('test_gradient_correction')
    for it, target in enumerate([torch.tensor([0.0, 5.0]), torch.tensor([0.0, -5.0])]):
        hub.update_info('iter', it)
        wrapper.update_params(((w - target) ** 2).sum())
    assert wrapper.corrector.fired == 1


def test_momentum_of_removed_weights_is_zeroed():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU(), nn.Conv2d(8, 8, 1), nn.ReLU(),
                          nn.Conv2d(8, 2, 1))
    x = torch.randn(2, 3, 4, 4)
    network = SparseNetwork(model, lambda m: m(x))
    generate_masks(network, ['unstructured@0.5'])
    network.set_active('unstructured@0.50')
    wrapper = SparseOptimWrapper(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
                                 mask_momentum=True)
    wrapper.masked_params = {layer.dense_weight: layer for layer in network.layers.values()}
    wrapper.update_params(model(x).square().sum())
    layer = network.layers['2']
    momentum = wrapper.optimizer.state[layer.dense_weight]['momentum_buffer']
    mask = layer.mask_for('unstructured@0.50')
    assert (momentum[~mask] == 0).all() and (momentum[mask] != 0).any()


def test_amp_keeps_the_sparse_wrapper():
    cfg = Config(dict(optim_wrapper=dict(type='mmsparse.SparseOptimWrapper',
                                         optimizer=dict(type='SGD', lr=0.1))))
    enable_amp(cfg)
    assert cfg.optim_wrapper.type == 'mmsparse.SparseAmpOptimWrapper'
    plain = Config(dict(optim_wrapper=dict(type='OptimWrapper', optimizer=dict(type='SGD'))))
    enable_amp(plain)
    assert plain.optim_wrapper.type == 'AmpOptimWrapper'


def test_training_with_the_sparse_wrapper(tmp_path, tiny_data):
    cfg = tmp_path / 'wrapper.py'
    cfg.write_text(textwrap.dedent(f'''
        _base_ = ['{TINY_CONFIG}']
        custom_hooks = [dict(type='mmsparse.SparseSubnetsHook', subnets=['nm@2:4'])]
        optim_wrapper = dict(type='mmsparse.SparseOptimWrapper', mask_momentum=True,
                             gradient_correction=dict(group_size=2))
        train_cfg = dict(max_iters=3, val_interval=100)
    '''))
    assert 'Iter(train) [3/3]' in train(cfg, tmp_path / 'w')
