"""Sparse Cocktail co-training in MMDetection's loop: stage boundaries regenerate masks,
resume is exact, two gloo processes agree, configs inheriting mmdet:: build."""
import json
import shutil
import textwrap

import pytest
import torch
from mmdet.registry import MODELS
from mmdet.utils import register_all_modules
from mmengine.config import Config

import mmsparse.engine  # noqa: F401  (allow-lists mmengine checkpoint globals)
from conftest import (REPO, TINY_CONFIG, assert_same_tensors, checkpoint_state,
                      tiny_cocktail_config, train, train_two_ranks)
from mmsparse.core import cocktail_subnets, generate_masks, is_mask_key
from mmsparse.core.methods.schedules import stage_at
from mmsparse.models import sparsify_detector

ITERS = 12


def _config(tmp_path, extra='', fragment='cocktail_paper.py'):
    """The tiny detector with a cocktail fragment: by default the paper's dense-pivot
    recipe; ``fragment='cocktail.py'``: the recommended one."""
    cfg = tmp_path / 'cocktail_tiny.py'
    cfg.write_text(textwrap.dedent(f'''
        _base_ = ['{TINY_CONFIG}', '{REPO}/configs/_base_/sparsity/{fragment}']
        custom_hooks = _base_.sparse_hooks
        train_cfg = dict(max_iters={ITERS}, val_interval=1000)
        default_hooks = dict(checkpoint=dict(interval=1), logger=dict(interval=2))
        log_processor = dict(window_size=2)
    ''') + extra)
    return cfg


@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory, tiny_data):
    root = tmp_path_factory.mktemp('cocktail')
    cfg = _config(root)
    return root, cfg, train(cfg, root / 'a')


def test_training_logs_subnet_stage_and_pattern_losses(uninterrupted):
    _, _, log = uninterrupted
    assert 'stage:' in log and 'loss_dense:' in log and 'loss_unstructured:' in log
    assert 'trained channel@' in log and 'masks regenerated' in log


def test_stage_boundaries_regenerate_masks_from_current_weights(uninterrupted):
    root, cfg, _ = uninterrupted
    register_all_modules()
    model_cfg = Config.fromfile(str(cfg)).model
    boundaries = [t for t in range(1, ITERS) if stage_at(t, ITERS, 10) > stage_at(t - 1, ITERS,
                                                                                 10)]
    assert len(boundaries) >= 3
    for t in range(1, ITERS):
        # iter_t.pth holds the state after t iterations: what iteration t starts from.
        before, after = (checkpoint_state(root / f'a/iter_{t}.pth', masks=True),
                         checkpoint_state(root / f'a/iter_{t + 1}.pth', masks=True))
        if t not in boundaries:
            assert all(torch.equal(before[k], after[k]) for k in before), t
            continue
        model = MODELS.build(model_cfg)
        model.load_state_dict(checkpoint_state(root / f'a/iter_{t}.pth', masks=False), strict=False)
        network = sparsify_detector(model)
        generate_masks(network, cocktail_subnets())
        expected = {k: v for k, v in model.state_dict().items() if is_mask_key(k)}
        assert all(torch.equal(expected[k], after[k]) for k in after), t
        assert any(not torch.equal(before[k], after[k]) for k in before), t


# The recommended recipe (configs/_base_/sparsity/cocktail.py: a joint step on split
# batches, straight-through sparse passes, sampled ratios, N:M twice in the cycle, stored
# per-subnet BatchNorm statistics) on the tiny detector; the statistics on 2 batches.
RECOMMENDED = textwrap.dedent('''
    subnet_bn_stats = dict(_base_.subnet_bn_stats, batches=2)
    custom_hooks = [_base_.sparse_subnets, _base_.sparse_cocktail, _base_.rng_state,
                    subnet_bn_stats]
''')


@pytest.fixture(scope='module')
def recommended(tmp_path_factory, tiny_data):
    root = tmp_path_factory.mktemp('cocktail_recommended')
    cfg = _config(root, RECOMMENDED, fragment='cocktail.py')
    return root, cfg, train(cfg, root / 'a')


def test_recommended_options_take_effect(recommended):
    """The run the resume test below checks really has a weighted joint step and N:M twice."""
    _, _, log = recommended
    cycle = ['unstructured', 'channel', 'nm', 'nm']
    trained = {int(x.split('iteration ')[1].split()[0]): x.split(' trained ')[1].split('@')[0]
               for x in log.splitlines() if 'mmsparse: iteration' in x and ' trained ' in x}
    assert len(trained) >= 4 and all(cycle[t % 4] == p for t, p in trained.items()), trained
    assert 'and dense (dense weight 2, split batch)' in log
    assert 'stored the BatchNorm statistics of 24 subnets' in log


@pytest.mark.parametrize('run', ['uninterrupted', 'recommended'])
def test_resume_continues_exactly(run, request):
    """Stop after 5 iterations (what a stopped run leaves: its iteration-5 checkpoint) and
    --resume: subnets, stages, masks and weights continue exactly as without the stop."""
    root, cfg, log = request.getfixturevalue(run)
    work = root / 'b'
    work.mkdir()
    shutil.copy(root / 'a/iter_5.pth', work / 'iter_5.pth')
    resumed_log = train(cfg, work, '--resume', work / 'iter_5.pth')
    assert 'resumed epoch: 0, iter: 5' in resumed_log
    for t in range(5, ITERS, 2):
        line = f'iteration {t} trained'
        expected = next(x for x in log.splitlines() if line in x).split(line)[1]
        assert line + expected in resumed_log
    boundaries_after = [x.split(' - ')[-1] for x in log.splitlines()
                        if 'masks regenerated' in x and int(x.split('iteration ')[1]
                                                            .split(':')[0]) >= 5]
    assert boundaries_after and all(b in resumed_log for b in boundaries_after)
    for t in range(6, ITERS + 1):
        a, b = (checkpoint_state(root / f'a/iter_{t}.pth', masks=True),
                checkpoint_state(work / f'iter_{t}.pth', masks=True))
        assert all(torch.equal(a[k], b[k]) for k in a), f'masks at {t}'
        a, b = (checkpoint_state(root / f'a/iter_{t}.pth', False),
                checkpoint_state(work / f'iter_{t}.pth', False))
        assert all(torch.equal(a[k], b[k]) for k in a), f'weights at {t}'


def test_two_gloo_processes_agree_on_masks_subnets_and_stored_bn_stats(tmp_path, tiny_data):
    """Each rank calibrates BatchNorm on its own shard of the data; SubnetBNStatsHook makes
    the stored statistics rank 0's everywhere."""
    cfg = _config(tmp_path, textwrap.dedent('''
        custom_imports = dict(imports=['subnet_trace_hook'])
        custom_hooks = [*_base_.sparse_hooks, dict(type='SubnetTraceHook'),
                        dict(type='mmsparse.SubnetBNStatsHook', batches=1)]
        train_cfg = dict(max_iters=6, val_interval=1000)
    '''))
    _, (r0, r1), _ = train_two_ranks(cfg, tmp_path / 'work', 29647)
    assert r0['trace'] == r1['trace'] and len(r0['trace']) == 6
    assert [name for _, name in r0['trace']][::2] == ['dense'] * 3
    assert_same_tensors(r0['masks'], r1['masks'])
    assert r0['bn_stats']['backbone.layer1.0.bn1.subnet_running_mean'].shape == (24, 16)
    assert_same_tensors(r0['bn_stats'], r1['bn_stats'])


@pytest.mark.parametrize('name', ['faster-rcnn_r50_fpn_cocktail_1x_coco.py',
                                  'retinanet_r50_fpn_cocktail_1x_coco.py'])
def test_coco_cocktail_configs_inherit_mmdet_and_build(name):
    register_all_modules()
    cfg = Config.fromfile(str(REPO / 'configs/cocktail' / name))
    assert cfg.val_cfg.type == 'mmsparse.SubnetValLoop'
    assert [h['type'] for h in cfg.custom_hooks][:2] == ['mmsparse.SparseSubnetsHook',
                                                         'mmsparse.SparseCocktailHook']
    cfg.model.backbone.init_cfg = None
    model = MODELS.build(cfg.model)
    network = sparsify_detector(model)
    generate_masks(network, cocktail_subnets())
    assert len(network.subnets()) == 24
    assert 'backbone.conv1' not in network.layers


@pytest.mark.parametrize('path', sorted((REPO / 'configs/cocktail').glob('*_shapes.py')),
                         ids=lambda p: p.name)
def test_every_shapes_cocktail_config_builds_its_hooks(path):
    """Each shapes variant parses, and its hooks accept their options (typos are errors)."""
    from mmsparse.registry import HOOKS
    cfg = Config.fromfile(str(path))
    hooks = [HOOKS.build(dict(h)) for h in cfg.custom_hooks]
    assert [type(h).__name__ for h in hooks][:2] == ['SparseSubnetsHook', 'SparseCocktailHook']


@pytest.mark.parametrize('straight_through', [False, True])
def test_straight_through_sparse_steps_reach_the_removed_weights(tmp_path, tiny_data,
                                                                 straight_through):
    cfg = tiny_cocktail_config(tmp_path / 'ste.py', f'straight_through={straight_through}',
                               'removed_grad_hook', 'RemovedGradHook', '''
        train_cfg = dict(max_iters=4, val_interval=1000)
        default_hooks = dict(checkpoint=dict(interval=1000))
    ''')
    train(cfg, tmp_path / 'w')
    dump = json.loads((tmp_path / 'w' / 'removed_grad.json').read_text())
    rows = dump['rows']
    assert [name.split('@')[0] for name, _ in rows] == ['dense', 'unstructured', 'dense',
                                                        'channel']
    # the default masks removed weights out of the gradient; straight-through reaches them
    assert (rows[1][1] > 0) if straight_through else (rows[1][1] == 0)
    # ... except removed channels: zeroed after their BatchNorm, they get no gradient back
    assert rows[3][1] == 0
    assert dump['straight_through_after_train'] is False  # a training-time choice only


@pytest.mark.parametrize('options, error, match', [
    (dict(patterns=[]), ValueError, r'patterns must name sparse patterns .* got \[\]'),
    (dict(patterns=['dense']), ValueError, r"patterns must name .* got \['dense'\]"),
    (dict(num_stages=0), ValueError, 'num_stages must be an integer >= 1'),
    (dict(stage_end=1.2), ValueError, 'stage_end=1.2'),
    (dict(stage_start=0.9, stage_end=0.5), ValueError, 'stage_start=0.9, stage_end=0.5'),
    (dict(num_stages=2, fixed_stage=3), ValueError, r'fixed_stage must be one of 1..2'),
    (dict(distill='yes'), ValueError, "distill must be a dict .* got 'yes'"),
    (dict(distill=dict(weight=0.5, temp=2)), TypeError, "unexpected keyword argument 'temp'"),
    (dict(distill=dict(temperature=0)), ValueError, 'distillation temperature must be > 0'),
])
def test_bad_options_fail_when_the_hook_is_built(options, error, match):
    from mmsparse.engine.hooks import SparseCocktailHook
    with pytest.raises(error, match=match):
        SparseCocktailHook(**options)


@pytest.mark.parametrize('subnets, options, match', [
    ([], {}, r"co-trains sparse subnets, but the model holds only \['dense'\]"),
    (['unstructured@0.5', 'unstructured@0.8'], dict(fixed_stage=3),
     r'fixed_stage must be one of 1..2 \(num_stages\), got 3'),
])
def test_options_the_model_decides_fail_before_the_first_iteration(subnets, options, match):
    """The subnets come from the model: a dense-only one, or fewer stages than fixed_stage."""
    from types import SimpleNamespace

    from torch import nn

    from mmsparse.core import SparseNetwork
    from mmsparse.engine.hooks import SparseCocktailHook
    from mmsparse.models import attach_network
    model = nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU(), nn.Conv2d(8, 8, 1), nn.ReLU(),
                          nn.Conv2d(8, 8, 1), nn.ReLU(), nn.Conv2d(8, 4, 1))
    x = torch.randn(1, 3, 4, 4)
    network = attach_network(model, SparseNetwork(model, lambda m: m(x)))
    if subnets:
        generate_masks(network, subnets)
    runner = SimpleNamespace(model=model, iter=0, max_iters=8)
    with pytest.raises(ValueError, match=match):
        SparseCocktailHook(**options).before_train(runner)
