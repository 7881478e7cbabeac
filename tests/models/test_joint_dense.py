"""The joint dense loss: every sparse step also trains the dense network (one backward)."""
import json

import pytest
import torch
from mmdet.registry import MODELS
from mmdet.testing import demo_mm_inputs
from mmdet.utils import register_all_modules
from mmengine.config import Config

from conftest import TINY_CONFIG, assert_same_tensors, tiny_cocktail_config, train, train_two_ranks
from mmsparse.core import MaskSpec, generate_masks
from mmsparse.models import sparsify_detector
from mmsparse.models.joint_dense import JointDenseLoss


def _network():
    register_all_modules()
    torch.manual_seed(0)
    network = sparsify_detector(MODELS.build(Config.fromfile(str(TINY_CONFIG)).model))
    generate_masks(network, ['unstructured@0.50'], MaskSpec())
    return network


def _packed(batch_size):
    """A demo batch of 64x64 images with two instances of class 0 each."""
    packed = demo_mm_inputs(batch_size=batch_size, image_shapes=[(3, 64, 64)] * batch_size,
                            num_items=[2] * batch_size, num_classes=2, with_mask=True)
    for sample in packed['data_samples']:
        sample.gt_instances.labels.zero_()
    return packed


def _pruned_weight_grad(network, joint):
    """Loss keys, and the gradient on the weights unstructured@0.50 removes, of one loss
    forward/backward with that subnet active."""
    model = network.model
    if joint:
        JointDenseLoss(model, network).step(network.set_active('unstructured@0.50'))
    else:
        network.set_active('unstructured@0.50')
    torch.manual_seed(1)
    losses = model(**model.data_preprocessor(_packed(1), True), mode='loss')
    total, _ = model.parse_losses(losses)
    model.zero_grad()
    total.backward()
    name, layer = next((n, m) for n, m in network.layers.items() if 'backbone.layer2' in n)
    removed = layer.mask_for(network.active) == 0
    assert network.active.name == 'unstructured@0.50'  # the dense pass switched back
    return sorted(losses), layer.dense_weight.grad[removed], name


def test_dense_losses_are_added_and_reach_the_weights_the_subnet_removes():
    keys, grad, name = _pruned_weight_grad(_network(), joint=False)
    assert not any(k.startswith('dense.') for k in keys)
    assert grad.abs().max() == 0, name  # the masked forward cannot reach removed weights
    keys, grad, name = _pruned_weight_grad(_network(), joint=True)
    task = [k for k in keys if not k.startswith('dense.')]
    assert [k for k in keys if k.startswith('dense.')] == [f'dense.{k}' for k in task]
    assert grad.abs().max() > 0, name  # ... the dense pass in the same backward does


@pytest.mark.parametrize('split', [False, True])
def test_cocktail_with_joint_dense_trains_a_sparse_subnet_and_dense_every_iteration(
        tmp_path, tiny_data, split):
    cfg = tiny_cocktail_config(tmp_path / 'joint.py', f'joint_dense=dict(split_batch={split})',
                               'loss_keys_hook', 'LossKeysHook', '''
        train_cfg = dict(max_iters=3, val_interval=1000)
        default_hooks = dict(logger=dict(interval=1))
        log_processor = dict(window_size=1)
    ''')
    work = tmp_path / 'w'
    log = train(cfg, work)
    rows = json.loads((work / 'loss_keys.json').read_text())
    # no dense-only steps: U, C, NM, each with the dense losses alongside
    assert [r[1].split('@')[0] for r in rows] == ['unstructured', 'channel', 'nm']
    for _, _, keys, _ in rows:
        assert 'dense.loss_rpn_cls' in keys and 'loss_rpn_cls' in keys
    assert 'loss_dense:' in log and 'trained nm@' in log
    assert (' and dense (split batch) (stage' if split else ' and dense (stage') in log


def _images_seen(batch_size, **split):
    """The images the backbone sees under each subnet in one joint loss forward (split)."""
    network = _network()
    model = network.model
    JointDenseLoss(model, network, split_batch=True, **split).step(
        network.set_active('unstructured@0.50'))
    seen = []  # (active subnet, images) of each backbone call
    model.backbone.register_forward_pre_hook(
        lambda module, args: seen.append((network.active.name, args[0].detach().clone())))
    data = model.data_preprocessor(_packed(batch_size), True)
    losses = model(**data, mode='loss')
    assert [name for name, _ in seen] == ['unstructured@0.50', 'dense']
    assert 'dense.loss_mask' in losses and 'loss_mask' in losses
    assert network.active.name == 'unstructured@0.50'
    return data['inputs'], seen[0][1], seen[1][1], model


@pytest.mark.parametrize('batch_size,dense_share,cut', [(4, 0.5, 2), (5, 0.5, 2),
                                                        (4, 0.75, 1), (4, 0.9, 1),
                                                        (4, 0.1, 3)])
def test_split_batch_feeds_the_sparse_pass_the_first_images_and_the_dense_pass_the_rest(
        batch_size, dense_share, cut):
    inputs, sparse, dense, _ = _images_seen(batch_size, dense_share=dense_share)
    assert torch.equal(sparse, inputs[:cut]) and torch.equal(dense, inputs[cut:])


def _joint_losses(**joint):
    """The losses of one joint loss forward of a 4-image batch, sampling seeded."""
    network = _network()
    model = network.model
    JointDenseLoss(model, network, **joint).step(network.set_active('unstructured@0.50'))
    data = model.data_preprocessor(_packed(4), True)
    torch.manual_seed(1)
    return model(**data, mode='loss')


def _total(loss):
    """A loss tensor, or the sum of a per-level list of them."""
    return sum(loss) if isinstance(loss, (list, tuple)) else loss


@pytest.mark.parametrize('joint,sparse_factor,dense_factor', [
    (dict(), 0.5, 0.5),  # the same batch: half each
    (dict(split_batch=True, dense_share=0.75), 0.25, 0.75)])  # 1 and 3 of 4 images
def test_mean_losses_weights_each_pass_by_its_share_of_the_batch(joint, sparse_factor,
                                                                  dense_factor):
    plain, mean = _joint_losses(**joint), _joint_losses(mean_losses=True, **joint)
    assert sorted(plain) == sorted(mean)
    for key in ('loss_mask', 'loss_cls', 'loss_rpn_cls'):
        for name, factor in ((key, sparse_factor), ('dense.' + key, dense_factor)):
            assert _total(plain[name]) > 0, name
            assert torch.allclose(_total(mean[name]), factor * _total(plain[name])), name
    # metrics are not losses: unscaled
    assert torch.equal(mean['acc'], plain['acc'])
    assert torch.equal(mean['dense.acc'], plain['dense.acc'])


def test_split_batch_feeds_a_single_image_to_both_passes_and_rejects_batch_size_one():
    """An epoch's last batch may hold one image: both passes see it. A configured batch size
    of 1 can never be split: an error before training (SparseCocktailHook calls this)."""
    inputs, sparse, dense, _ = _images_seen(1)
    assert len(inputs) == 1 and torch.equal(sparse, inputs) and torch.equal(dense, inputs)
    network = _network()
    JointDenseLoss(network.model, network).check_batch_size(1)  # the same batch: fine
    split = JointDenseLoss(network.model, network, split_batch=True)
    split.check_batch_size(2)
    with pytest.raises(ValueError, match='at least 2 images per batch and process, but '
                                         'train_dataloader.batch_size is 1'):
        split.check_batch_size(1)


def test_two_gloo_processes_keep_the_same_weights(tmp_path, tiny_data):
    """DDP synchronises the gradients of both passes (the dense one runs inside DDP's
    forward): the ranks see different images, yet end with equal weights."""
    cfg = tiny_cocktail_config(tmp_path / 'joint_ddp.py', 'joint_dense=True',
                               'rank_weight_dump_hook', 'RankWeightDumpHook', '''
        train_cfg = dict(max_iters=3, val_interval=1000)
        default_hooks = dict(checkpoint=dict(interval=1000))
    ''')
    _, _, (p0, p1) = train_two_ranks(cfg, tmp_path / 'work', 29677)
    assert p0['wrapper'] == 'MMDistributedDataParallel' and p0['iter'] == 3
    assert_same_tensors(p0['params'], p1['params'])


def test_joint_dense_and_distillation_together_are_an_error():
    from mmsparse.engine.hooks import SparseCocktailHook
    with pytest.raises(ValueError, match='joint_dense and distill cannot be combined'):
        SparseCocktailHook(joint_dense=True, distill=dict(weight=0.5))
    with pytest.raises(ValueError, match='joint dense loss weight must be > 0'):
        JointDenseLoss(None, None, weight=0)
    with pytest.raises(ValueError, match=r'dense_share must be in \(0, 1\), got 1.0'):
        JointDenseLoss(None, None, split_batch=True, dense_share=1.0)
    with pytest.raises(ValueError, match='dense_share needs split_batch=True'):
        JointDenseLoss(None, None, dense_share=0.75)
    # the hook checks its joint_dense options when it is built, not at the first iteration
    with pytest.raises(TypeError, match="unexpected keyword argument 'mean_loss'"):
        SparseCocktailHook(joint_dense=dict(split_batch=True, mean_loss=True))
    with pytest.raises(ValueError, match=r'dense_share must be in \(0, 1\), got 0'):
        SparseCocktailHook(joint_dense=dict(split_batch=True, dense_share=0))


@pytest.mark.parametrize('options,words', [
    (dict(), ''),
    (dict(split_batch=True), 'split batch'),
    (dict(split_batch=True, dense_share=0.75, mean_losses=True),
     'split batch, dense share 0.75, losses weighted by batch share'),
    (dict(mean_losses=True), 'losses weighted by batch share'),
    (dict(split_batch=True, weight=2.0), 'dense weight 2, split batch')])
def test_the_training_log_names_the_non_default_options(options, words):
    assert JointDenseLoss(torch.nn.Linear(1, 1), None, **options).describe() == words
