"""mmsparse's optimizer wrappers: correction fires inside mmengine, its state and options, --amp."""
import textwrap

import pytest
import torch
from mmengine.config import Config
from mmengine.logging import MessageHub
from torch import nn

from conftest import TINY_CONFIG, train
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


@pytest.mark.parametrize('option, match', [
    ('yes', "gradient_correction must be a dict like dict\\(group_size=K\\) or None, got 'yes'"),
    (dict(size=2), r"gradient_correction takes exactly \['group_size'\], got \['size'\]"),
    (dict(group_size=2.5), 'gradient_correction group_size must be an integer >= 2'),
    (dict(group_size=1), 'group of >= 2 subnets, got 1'),
])
def test_a_bad_gradient_correction_fails_naming_it(option, match):
    w = nn.Parameter(torch.ones(2))
    with pytest.raises(ValueError, match=match):
        SparseOptimWrapper(torch.optim.SGD([w], lr=0.1), gradient_correction=option)


def test_the_correction_state_round_trips_mid_group():
    """What a checkpoint keeps of the corrector: the count always, the previous gradients
    only when the next iteration is inside a group."""
    w = nn.Parameter(torch.tensor([1.0, 1.0]))
    wrapper = SparseOptimWrapper(torch.optim.SGD([w], lr=0.1),
                                 gradient_correction=dict(group_size=2))
    hub = MessageHub.get_instance('test_correction_state')
    for it, target in enumerate([torch.tensor([0.0, 5.0]), torch.tensor([0.0, -5.0]),
                                 torch.tensor([3.0, 0.0])]):
        hub.update_info('iter', it)
        wrapper.update_params(((w - target) ** 2).sum())
    assert set(wrapper.correction_state(4)) == {'correction_fired'}
    state = wrapper.correction_state(3)
    other = SparseOptimWrapper(torch.optim.SGD([nn.Parameter(torch.ones(2))], lr=0.1),
                               gradient_correction=dict(group_size=2))
    other.load_correction_state(state)
    assert other.corrector.fired == wrapper.corrector.fired == 1
    assert torch.equal(other.corrector.previous['0.0'], wrapper.corrector.previous['0.0'])


def test_amp_keeps_the_sparse_wrapper(monkeypatch):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)  # only the mapping is tested
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
        optim_wrapper = dict(type='mmsparse.SparseOptimWrapper',
                             gradient_correction=dict(group_size=2))
        train_cfg = dict(max_iters=3, val_interval=100)
    '''))
    assert 'Iter(train) [3/3]' in train(cfg, tmp_path / 'w')
