"""MMDetection's frozen training set-up on the tiny Mask R-CNN: ``norm_eval=True``, frozen BN
affines (``norm_cfg=dict(type='BN', requires_grad=False)``) and ``frozen_stages=1``.
Frozen layers stay dense unless asked; recalibration, stored statistics and switchable BN
leave the frozen BatchNorms alone, and ``dense`` stays the plain model."""
import copy

import pytest
import torch
from mmdet.registry import MODELS
from mmdet.testing import demo_mm_inputs
from mmdet.utils import register_all_modules
from mmengine.config import Config

from conftest import TINY_CONFIG
from mmsparse.core import generate_masks
from mmsparse.core.batchnorm import SwitchableBatchNorm, frozen_batchnorms, recalibrated_bn
from mmsparse.core.batchnorm.recalibration import batchnorms
from mmsparse.core.batchnorm.stored_stats import (store_subnet_bn_stats, stored_bn_count,
                                                  stored_bn_stats)
from mmsparse.engine.sparse_checkpoint import checkpoint_network
from mmsparse.models import attach_network, attached_network, sparsify_detector

FROZEN = {'model.backbone.norm_eval': True, 'model.backbone.frozen_stages': 1,
          'model.backbone.norm_cfg.requires_grad': False}
SUBNETS = ['unstructured@0.50', 'channel@0.50', 'nm@2:4']
LAYER1 = ['backbone.layer1.0.conv1', 'backbone.layer1.0.conv2', 'backbone.layer1.1.conv1',
          'backbone.layer1.1.conv2']


def _model(options=FROZEN):
    register_all_modules()
    cfg = Config.fromfile(str(TINY_CONFIG))
    cfg.merge_from_dict(options)
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    for bn in batchnorms(model).values():  # pretrained-like statistics, not 0 and 1
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
    return model


def _inputs(model):
    packed = demo_mm_inputs(batch_size=2, image_shapes=[(3, 64, 64)] * 2, num_items=[2, 2],
                            num_classes=2, with_mask=True)
    return model.data_preprocessor(packed, False)


def _outputs(model, data):
    """Every tensor the detector computes in ``tensor`` mode (backbone to the heads)."""
    with torch.no_grad():
        out = model(data['inputs'], data['data_samples'], mode='tensor')
    flat = []

    def walk(value):
        if isinstance(value, torch.Tensor):
            flat.append(value)
        elif isinstance(value, (list, tuple)):
            for v in value:
                walk(v)
    walk(out)
    return flat


def _bn_state(model):
    return {f'{n}.{k}': v.clone() for n, m in frozen_batchnorms(model).items()
            for k, v in [*m.named_parameters(), *m.named_buffers()]
            if not k.startswith(('subnet_', 'switchable_'))}


def _same(a, b):
    assert a and a.keys() == b.keys()
    return all(torch.equal(a[k], b[k]) for k in a)


def _equal_outputs(a, b):
    assert a and len(a) == len(b)
    return all(torch.equal(x, y) for x, y in zip(a, b))


@pytest.fixture()
def frozen():
    """The frozen tiny Mask R-CNN with masks, its unmodified copy, a batch."""
    model = _model()
    plain = copy.deepcopy(model).eval()
    network = sparsify_detector(model)
    generate_masks(network, SUBNETS)
    model.eval()
    return network, plain, _inputs(model)


def test_frozen_batchnorms_and_layers_are_known_when_the_model_is_built():
    """frozen_stages acts in ResNet.__init__, so the hook's before_run sees it."""
    model = _model()
    bns = [n for n in batchnorms(model)]
    assert bns and list(frozen_batchnorms(model)) == bns  # the backbone's, every one
    mixed = _model({'model.backbone.frozen_stages': 1})  # norm_eval=False, trainable BN
    assert list(frozen_batchnorms(mixed)) == [n for n in bns
                                              if n.startswith(('backbone.bn1', 'backbone.layer1'))]


def test_frozen_layers_stay_dense_by_default_and_are_named():
    network = sparsify_detector(_model())
    assert network.frozen_dense == LAYER1
    assert not set(LAYER1) & set(network.layers)
    assert 'backbone.layer2.0.conv1' in network.layers


def test_sparsify_frozen_layers_masks_them():
    network = sparsify_detector(_model(), sparsify_frozen_layers=True)
    assert set(LAYER1) <= set(network.layers) and network.frozen_dense == []
    generate_masks(network, ['unstructured@0.50'])
    mask = network.layers[LAYER1[0]].mask_for('unstructured@0.50')
    assert mask is not None and not bool(mask.all())
    # with the stem too
    both = sparsify_detector(_model(), sparsify_frozen_layers=True, sparsify_input_layers=True)
    assert 'backbone.conv1' in both.layers


def test_dense_equals_the_plain_model(frozen):
    network, plain, data = frozen
    expected = _outputs(plain, data)
    assert _equal_outputs(_outputs(network.model, data), expected)


def test_recalibration_leaves_frozen_batchnorms_and_dense_alone(frozen):
    network, plain, data = frozen
    model = network.model
    expected, before = _outputs(plain, data), _bn_state(model)
    forward = lambda m: m.predict(data['inputs'], data['data_samples'])  # noqa: E731
    for name in ['nm@2:4', 'dense']:
        network.set_active(name)
        with recalibrated_bn(model, forward):
            assert _same(_bn_state(model), before)
    assert _equal_outputs(_outputs(model, data), expected)
    # asked to, it does recalibrate them
    with recalibrated_bn(model, forward, include_frozen_bn=True):
        assert not _same(_bn_state(model), before)
    assert _same(_bn_state(model), before)


def test_stored_statistics_leave_frozen_batchnorms_and_dense_alone(frozen):
    network, plain, data = frozen
    model = network.model
    expected, before = _outputs(plain, data), _bn_state(model)
    forward = lambda m: m.predict(data['inputs'], data['data_samples'])  # noqa: E731
    store_subnet_bn_stats(network, forward)
    assert stored_bn_count(model) == 0  # every BatchNorm of this detector is frozen
    assert _same(_bn_state(model), before)
    store_subnet_bn_stats(network, forward, include_frozen_bn=True)
    assert stored_bn_count(model) == len(network.subnets())
    with stored_bn_stats(network, 'dense'):
        assert not _same(_bn_state(model), before)  # asked: rows of their own
    store_subnet_bn_stats(network, forward)  # not asked again: the rows go
    assert stored_bn_count(model) == 0
    network.set_active('dense')
    assert _equal_outputs(_outputs(model, data), expected)


def test_switchable_batchnorm_leaves_frozen_batchnorms_and_dense_alone(frozen):
    network, plain, data = frozen
    model = network.model
    expected, before = _outputs(plain, data), _bn_state(model)
    switch = SwitchableBatchNorm(model, SUBNETS)
    network.switch_listeners.append(lambda spec: switch.activate(spec.name))
    assert not switch.norms
    for name in [*SUBNETS, 'dense']:
        network.set_active(name)
        assert _same(_bn_state(model), before)
    assert _equal_outputs(_outputs(model, data), expected)


def test_mixed_frozen_and_trainable_batchnorms():
    """frozen_stages=1 without norm_eval: layer1's BatchNorms are frozen, later ones train;
    recalibration and switchable BN act on the later ones only."""
    model = _model({'model.backbone.frozen_stages': 1})
    network = sparsify_detector(model)
    generate_masks(network, SUBNETS)
    model.eval()
    data = _inputs(model)
    before = _bn_state(model)
    free = model.backbone.layer2[0].bn1
    mean = free.running_mean.clone()
    forward = lambda m: m.predict(data['inputs'], data['data_samples'])  # noqa: E731
    network.set_active('nm@2:4')
    with recalibrated_bn(model, forward):
        assert _same(_bn_state(model), before)
        assert not torch.equal(free.running_mean, mean)
    store_subnet_bn_stats(network, forward)
    assert not hasattr(model.backbone.layer1[0].bn1, 'subnet_running_mean')
    assert free.subnet_running_mean.shape[0] == len(network.subnets())
    switch = SwitchableBatchNorm(model, SUBNETS)
    assert 'backbone.layer2.0.bn1' in switch.norms
    assert not any(n.startswith(('backbone.bn1', 'backbone.layer1')) for n in switch.norms)


def test_a_checkpoint_decides_which_frozen_layers_and_batchnorms_it_holds(tmp_path):
    """What was masked and stored with the opt-ins loads back, whatever the defaults."""
    network = sparsify_detector(_model(), sparsify_frozen_layers=True)
    generate_masks(network, ['unstructured@0.50'])
    model = network.model.eval()
    data = _inputs(model)
    store_subnet_bn_stats(network, lambda m: m.predict(data['inputs'], data['data_samples']),
                          include_frozen_bn=True)
    path = tmp_path / 'frozen_masked.pth'
    torch.save({'state_dict': model.state_dict()}, path)
    fresh = _model()
    loaded = checkpoint_network(fresh, path)
    assert set(LAYER1) <= set(loaded.layers) and loaded.frozen_dense == []
    assert stored_bn_count(fresh) == 2
    fresh.load_state_dict(torch.load(path, weights_only=True)['state_dict'])  # strict
    with stored_bn_stats(loaded, 'unstructured@0.50'):
        assert not _same(_bn_state(fresh), _bn_state(_model()))


def test_an_averaged_copy_keeps_the_trained_models_frozen_batchnorms():
    """mmengine's EMA model is a deep copy with requires_grad False everywhere: its flags
    would call every BatchNorm frozen, the network's record does not."""
    model = _model({'model.backbone.frozen_stages': 1})
    network = attach_network(model, sparsify_detector(model))
    generate_masks(network, ['unstructured@0.50'])
    ema = copy.deepcopy(model).requires_grad_(False).eval()
    ema_network = attached_network(ema)
    assert ema_network.model is ema and ema_network.frozen_bn == network.frozen_bn
    assert len(frozen_batchnorms(ema)) > len(network.frozen_bn)
    data = _inputs(ema)
    store_subnet_bn_stats(ema_network, lambda m: m.predict(data['inputs'],
                                                           data['data_samples']))
    assert ema.backbone.layer2[0].bn1.subnet_running_mean.shape[0] == 2
    assert not hasattr(ema.backbone.layer1[0].bn1, 'subnet_running_mean')
