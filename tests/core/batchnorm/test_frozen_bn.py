"""Frozen BatchNorms (``norm_eval=True`` above them, or affine parameters without gradients)
are found without MMDetection and left alone by recalibration, stored statistics and
switchable BatchNorm unless ``include_frozen_bn`` asks for them."""
import torch
from torch import nn

from mmsparse.core import SparseNetwork, generate_masks
from mmsparse.core.batchnorm import SwitchableBatchNorm, frozen_batchnorms, recalibrated_bn
from mmsparse.core.batchnorm.recalibration import save_bn_stats
from mmsparse.core.batchnorm.stored_stats import (PREFIX, register_stored_bn_stats,
                                                  store_subnet_bn_stats, stored_bn_count,
                                                  stored_bn_stats)
from tiny_models import Residual, build


class EvalNorms(nn.Module):
    """A module with MMDetection's ``norm_eval`` switch (as its backbones have)."""

    def __init__(self, norm_eval):
        super().__init__()
        self.norm_eval = norm_eval
        self.bn = nn.BatchNorm2d(4)


def test_frozen_batchnorms_reads_norm_eval_and_requires_grad():
    model = nn.Module()
    model.backbone = EvalNorms(norm_eval=True)
    model.neck = EvalNorms(norm_eval=False)
    model.head = nn.Sequential(nn.BatchNorm2d(4), nn.BatchNorm2d(4, affine=False))
    assert list(frozen_batchnorms(model)) == ['backbone.bn']
    model.neck.bn.requires_grad_(False)  # norm_cfg=dict(type='BN', requires_grad=False)
    assert list(frozen_batchnorms(model)) == ['backbone.bn', 'neck.bn']
    # a BatchNorm without affine parameters is frozen only by norm_eval
    model.head.requires_grad_(False)
    assert list(frozen_batchnorms(model)) == ['backbone.bn', 'neck.bn', 'head.0']
    model.norm_eval = True  # on the model itself: every BatchNorm
    assert len(frozen_batchnorms(model)) == 4


def _frozen_network(both=False):
    """Residual with bn1 (and bn2 if ``both``) frozen (``requires_grad=False``), masks for
    two subnets."""
    model, run, x = build(Residual)
    model.bn1.requires_grad_(False)
    if both:
        model.bn2.requires_grad_(False)
    network = SparseNetwork(model, run)
    generate_masks(network, ['unstructured@0.50', 'nm@2:4'])
    model.eval()
    return network, [x, x * 2 + 1]


def _forward(batches):
    return lambda m: [m(b) for b in batches]


def _bn_state(bn):
    return [t.clone() for t in (bn.weight, bn.bias, bn.running_mean, bn.running_var,
                                bn.num_batches_tracked)]


def _same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a, b))


def test_recalibration_leaves_frozen_batchnorms_unless_asked():
    network, batches = _frozen_network()
    model = network.model
    frozen, free = _bn_state(model.bn1), _bn_state(model.bn2)
    network.set_active('nm@2:4')
    with recalibrated_bn(model, _forward(batches)):
        assert _same(_bn_state(model.bn1), frozen) and not model.bn1.training
        assert model.bn1.momentum == 0.1  # untouched: not switched to exact averaging
        assert not torch.equal(model.bn2.running_mean, free[2])
    with recalibrated_bn(model, _forward(batches), include_frozen_bn=True):
        assert not torch.equal(model.bn1.running_mean, frozen[2])
    assert _same(_bn_state(model.bn1), frozen) and _same(_bn_state(model.bn2), free)


def test_recalibration_runs_nothing_when_every_batchnorm_is_frozen():
    network, batches = _frozen_network()
    network.model.bn2.requires_grad_(False)
    calls = []
    with recalibrated_bn(network.model, lambda m: calls.append(m)):
        pass
    assert not calls


def test_stored_statistics_give_frozen_batchnorms_no_rows_unless_asked():
    network, batches = _frozen_network()
    model = network.model
    frozen = _bn_state(model.bn1)
    store_subnet_bn_stats(network, _forward(batches))
    assert not hasattr(model.bn1, PREFIX + 'running_mean')
    assert stored_bn_count(model) == 3 and hasattr(model.bn2, PREFIX + 'running_mean')
    for name in ('dense', 'unstructured@0.50', 'nm@2:4'):
        with stored_bn_stats(network, name):
            assert _same(_bn_state(model.bn1), frozen)
    # asked: the frozen one gets rows too, and storing again without asking drops them
    store_subnet_bn_stats(network, _forward(batches), include_frozen_bn=True)
    assert getattr(model.bn1, PREFIX + 'running_mean').shape == (3, 16)
    with stored_bn_stats(network, 'nm@2:4'):
        assert not torch.equal(model.bn1.running_mean, frozen[2])
    assert _same(_bn_state(model.bn1), frozen)
    store_subnet_bn_stats(network, _forward(batches))
    assert not hasattr(model.bn1, PREFIX + 'running_mean')


def test_stored_statistics_store_nothing_when_every_batchnorm_is_frozen():
    network, batches = _frozen_network(both=True)
    model = network.model
    register_stored_bn_stats(model, 3, names=['bn1', 'bn2'])  # e.g. an older checkpoint's
    before = save_bn_stats(model)
    calls = []
    store_subnet_bn_stats(network, lambda m: calls.append(m))
    assert not calls
    assert stored_bn_count(model) == 0
    after = save_bn_stats(model)
    assert all(_same(before[n][:3], after[n][:3]) for n in before)


def test_register_stored_statistics_by_name_or_frozen_state():
    network, _ = _frozen_network()
    model = network.model
    register_stored_bn_stats(model, 2)
    assert not hasattr(model.bn1, PREFIX + 'running_mean')
    assert hasattr(model.bn2, PREFIX + 'running_mean')
    register_stored_bn_stats(model, 2, names=['bn1', 'no.such.bn'])
    assert hasattr(model.bn1, PREFIX + 'running_mean')


def test_switchable_batchnorm_gives_frozen_batchnorms_no_slots_unless_asked():
    network, batches = _frozen_network()
    model = network.model
    frozen = _bn_state(model.bn1)
    switch = SwitchableBatchNorm(model, ['unstructured@0.50', 'nm@2:4'])
    assert list(switch.norms) == ['bn2'] and not hasattr(model.bn1, 'switchable_weight')
    with torch.no_grad():
        model.bn2.switchable_weight[1].fill_(3.0)
    switch.activate('nm@2:4')
    assert torch.equal(model.bn2.weight, torch.full_like(model.bn2.weight, 3.0))
    assert _same(_bn_state(model.bn1), frozen)
    assert list(SwitchableBatchNorm(_frozen_network()[0].model, ['nm@2:4'],
                                    include_frozen_bn=True).norms) == ['bn1', 'bn2']


def test_switchable_batchnorm_switches_nothing_when_every_batchnorm_is_frozen():
    network, batches = _frozen_network()
    model = network.model
    model.bn2.requires_grad_(False)
    x = batches[0]
    plain = model(x)
    switch = SwitchableBatchNorm(model, ['unstructured@0.50', 'nm@2:4'])
    assert not switch.norms and switch.live_slot == 0
    switch.activate('nm@2:4')
    switch.activate('dense')
    switch.sync()
    assert torch.equal(model(x), plain)
