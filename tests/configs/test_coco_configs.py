"""The COCO configs of configs/cocktail/ (recommended recipe on seven MMDetection
architectures, the paper's on Mask R-CNN R-50): each is trained a few iterations by
tools/train.py with its data swapped for the tests' tiny shapes images (64 px, random init,
nothing downloaded), then tools/test.py evaluates dense and one subnet per pattern. Both
tools run in this process (``main(argv)``): a process each would double the time.

The architecture, losses, optimizer, hooks (RTMDet's EMAHook and PipelineSwitchHook
included) and evaluator metric are the config's own; the data, the number of classes, the
schedule (iterations instead of epochs) and pretrained weights are not.
"""
import json

import pytest
from mmengine.config import Config

from conftest import REPO, TINY_CONFIG, load_tool

ITERS = 2
SUBNETS = ['dense', 'unstructured@0.49', 'channel@0.27', 'nm@2:4']
COCO = sorted((REPO / 'configs/cocktail').glob('*_coco.py'))


def _no_pretrained(value):
    """Drop pretrained ``init_cfg`` entries anywhere in the model (no download)."""
    if isinstance(value, dict):
        if isinstance(value.get('init_cfg'), dict) and \
                value['init_cfg'].get('type') == 'Pretrained':
            value['init_cfg'] = None
        for item in value.values():
            _no_pretrained(item)
    elif isinstance(value, list):
        for item in value:
            _no_pretrained(item)


def _set_num_classes(value, num):
    if isinstance(value, dict):
        if 'num_classes' in value:
            value['num_classes'] = num
        for item in value.values():
            _set_num_classes(item, num)
    elif isinstance(value, list):
        for item in value:
            _set_num_classes(item, num)


def tiny_version(path, out):
    """``path`` with the tests' tiny shapes data, 5 classes, ``ITERS`` iterations and no
    pretrained weights, written to ``out``."""
    cfg = Config.fromfile(str(path))
    tiny = Config.fromfile(str(TINY_CONFIG))
    _no_pretrained(cfg.model)
    _set_num_classes(cfg.model, 5)
    cfg.load_from = None
    for key in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        cfg[key] = tiny[key]
    cfg.test_dataloader.dataset.indices = 2  # one batch per subnet is enough here
    metric = cfg.val_evaluator.get('metric', ['bbox', 'segm'])
    cfg.val_evaluator = dict(tiny.val_evaluator, metric=metric)
    cfg.test_evaluator = cfg.val_evaluator
    cfg.train_cfg = dict(type='IterBasedTrainLoop', max_iters=ITERS)
    cfg.val_cfg = cfg.val_dataloader = cfg.val_evaluator = None  # tools/test.py evaluates
    cfg.param_scheduler = [dict(type='ConstantLR', factor=1.0, by_epoch=False, begin=0,
                                end=ITERS)]
    cfg.default_hooks.checkpoint = dict(type='CheckpointHook', by_epoch=False, interval=ITERS)
    cfg.default_hooks.logger = dict(type='LoggerHook', interval=1)
    cfg.log_processor = dict(type='LogProcessor', window_size=1, by_epoch=False)
    cfg.randomness = dict(seed=0)
    cfg.dump(str(out))
    return out


@pytest.fixture(scope='module')
def tools():
    return load_tool('tools/train.py'), load_tool('tools/test.py')


def _log(work):
    return next(work.glob('*/*.log')).read_text()


@pytest.mark.parametrize('path', COCO, ids=lambda p: p.name)
def test_coco_config_trains_and_evaluates_its_subnets(path, tmp_path, tiny_data, tools):
    train, test = tools
    cfg = tiny_version(path, tmp_path / path.name)
    work = tmp_path / 'work'
    # an option by name (the paper's recipe has no such hook: the key is then unused)
    train.main([str(cfg), '--work-dir', str(work), '--cfg-options',
                'subnet_bn_stats.batches=1'])
    log = _log(work)
    assert 'mmsparse: generated masks for dense, unstructured@0.20' in log
    assert f'mmsparse: iteration {ITERS - 1} trained' in log
    if '-paper' not in path.name:  # frozen BatchNorms (norm_eval=True) are left alone
        assert ('stored the BatchNorm statistics of 24 subnets (1 batches each' in log
                or 'no per-subnet BatchNorm statistics to store: every BatchNorm is frozen'
                in log)
    out = tmp_path / 'results.json'
    test.main([str(cfg), str(work / f'iter_{ITERS}.pth'), '--subnets', ','.join(SUBNETS),
               '--work-dir', str(tmp_path / 'test'), '--out', str(out)])
    results = json.loads(out.read_text())
    assert sorted(results) == sorted(SUBNETS), results.keys()
    # A few iterations from random init predict little, and an empty prediction set has no
    # mAP; the measured sparsity and parameters show each subnet's masks were active in its
    # pass (channel and N:M cover fewer layers on some heads, so only bounds are checked).
    dense = results['dense']
    assert dense['sparsity'] == 0
    for subnet in SUBNETS[1:]:
        assert 0 < results[subnet]['sparsity'] <= 0.5, (subnet, results[subnet])
        assert results[subnet]['params'] < dense['params'], (subnet, results[subnet])
