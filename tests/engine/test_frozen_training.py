"""Co-training from a (legacy-format) checkpoint under MMDetection's frozen set-up (``norm_eval=True``, BN affines without
gradients, ``frozen_stages=1``, given with --cfg-options as a user would): frozen layers
stay dense and the log names them, and training, the stored per-subnet statistics and
SubnetBNStatsHook leave every frozen BatchNorm and frozen weight bit-identical."""
import textwrap

import pytest
import torch
from mmdet.registry import MODELS
from mmdet.utils import register_all_modules
from mmengine.config import Config

import mmsparse.engine  # noqa: F401  (allow-lists mmengine checkpoint globals)
from conftest import REPO, TINY_CONFIG, checkpoint_state, train

ITERS = 3
FROZEN = {'model.backbone.norm_eval': True, 'model.backbone.frozen_stages': 1,
          'model.backbone.norm_cfg.requires_grad': False}
LAYER1 = ['backbone.layer1.0.conv1', 'backbone.layer1.0.conv2', 'backbone.layer1.1.conv1',
          'backbone.layer1.1.conv2']


def _options(extra=()):
    return ['--cfg-options', *[f'{k}={v}' for k, v in FROZEN.items()], *extra]


@pytest.fixture(scope='module')
def start(tmp_path_factory, tiny_data):
    """The config (the recommended fragment on the tiny detector) and a starting checkpoint
    whose BatchNorms hold pretrained-like statistics (not 0 and 1)."""
    root = tmp_path_factory.mktemp('frozen')
    cfg = root / 'frozen_tiny.py'
    cfg.write_text(textwrap.dedent(f'''
        _base_ = ['{TINY_CONFIG}', '{REPO}/configs/_base_/sparsity/cocktail.py']
        train_cfg = dict(max_iters={ITERS}, val_interval=1000)
        default_hooks = dict(checkpoint=dict(interval={ITERS}))
        custom_hooks = [_base_.sparse_subnets, _base_.sparse_cocktail,
                        dict(type='mmsparse.SubnetBNStatsHook', batches=1)]
    '''))
    register_all_modules()
    model_cfg = Config.fromfile(str(cfg))
    model_cfg.merge_from_dict(FROZEN)
    torch.manual_seed(0)
    model = MODELS.build(model_cfg.model)
    model.init_weights()
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    ckpt = root / 'start.pth'
    # In torch's legacy (non-zip) format, as MMDetection's model-zoo files written by
    # torch < 1.6 are: the start of co-training must load them too.
    torch.save({'state_dict': model.state_dict()}, ckpt, _use_new_zipfile_serialization=False)
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    return dict(root=root, cfg=cfg, ckpt=ckpt, frozen=frozen)


@pytest.fixture(scope='module')
def trained(start):
    log = train(start['cfg'], start['root'] / 'default', *_options([f'load_from={start["ckpt"]}']))
    return log, checkpoint_state(start['root'] / f'default/iter_{ITERS}.pth')


def _frozen_state(state, frozen):
    """The frozen parameters and every backbone BatchNorm buffer (norm_eval keeps them)."""
    return {k: v for k, v in state.items()
            if k in frozen or (k.startswith('backbone.')
                               and k.rsplit('.', 1)[-1] in ('running_mean', 'running_var',
                                                           'num_batches_tracked'))}


def test_frozen_layers_stay_dense_and_the_log_names_them(trained):
    log, state = trained
    assert ('mmsparse: 4 frozen layers stay dense (sparsify_frozen_layers=True masks them): '
            + ', '.join(LAYER1)) in log
    assert not [k for k in state if k.startswith(tuple(f'{n}.mask' for n in LAYER1))]
    assert [k for k in state if k.startswith('backbone.layer2.0.conv1.mask')]


def test_training_keeps_frozen_weights_and_batchnorms_bit_identical(start, trained):
    log, state = trained
    before = _frozen_state(torch.load(start['ckpt'], weights_only=True)['state_dict'],
                           start['frozen'])
    after = _frozen_state(state, start['frozen'])
    assert len(before) > 60 and before.keys() == after.keys()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert not changed
    # it did train: a weight that is not frozen moved
    start_state = torch.load(start['ckpt'], weights_only=True)['state_dict']
    assert not torch.equal(start_state['backbone.layer2.0.conv1.weight'],
                           state['backbone.layer2.0.conv1.weight'])
    # every BatchNorm is frozen: no per-subnet statistics to store, and the log says so
    assert not [k for k in state if 'subnet_running' in k]
    assert 'no per-subnet BatchNorm statistics to store: every BatchNorm is frozen' in log


def test_sparsify_frozen_layers_masks_them(start):
    log = train(start['cfg'], start['root'] / 'opt_in', *_options(
        ['sparse_subnets.sparsify_frozen_layers=True', 'train_cfg.max_iters=1',
         'default_hooks.checkpoint.interval=1']))
    state = checkpoint_state(start['root'] / 'opt_in/iter_1.pth')
    assert 'frozen layers stay dense' not in log
    for name in LAYER1:
        assert [k for k in state if k.startswith(f'{name}.mask')], name
