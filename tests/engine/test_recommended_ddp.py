"""The recommended co-training recipe (joint step on split batches, straight-through sparse
passes, unlocked ratios, N:M twice, dense weight 2.0, stored per-subnet BatchNorm statistics)
in two gloo processes: every rank trains the same subnets with the same masks and weights,
DDP finds every parameter used (no ``find_unused_parameters``), and ``--resume`` continues
exactly."""
import shutil
import textwrap

import pytest
import torch

import mmsparse.engine  # noqa: F401  (allow-lists mmengine checkpoint globals)
from conftest import (TINY_CONFIG, assert_ok, assert_same_tensors, checkpoint_state,
                      run_tool)

ITERS = 6
CYCLE = ['unstructured', 'channel', 'nm', 'nm']


def _config(path):
    path.write_text(textwrap.dedent(f'''
        _base_ = ['{TINY_CONFIG}']
        custom_imports = dict(imports=['subnet_trace_hook', 'rank_weight_dump_hook'])
        custom_hooks = [
            dict(type='mmsparse.SparseSubnetsHook', subnets='cocktail'),
            dict(type='mmsparse.SparseCocktailHook', ratio_mode='unlocked',
                 straight_through=True, patterns=('unstructured', 'channel', 'nm', 'nm'),
                 joint_dense=dict(split_batch=True, weight=2.0)),
            dict(type='mmsparse.RNGStateHook'),
            dict(type='mmsparse.SubnetBNStatsHook', batches=1),
            dict(type='SubnetTraceHook'),
            dict(type='RankWeightDumpHook'),
        ]
        train_cfg = dict(max_iters={ITERS}, val_interval=1000)
        default_hooks = dict(checkpoint=dict(interval=1))
        log_processor = dict(window_size=1)
    '''))
    return path


def _two_ranks(cfg, work, port, *args):
    """Train in two gloo processes; return the log and each rank's trace and weights."""
    result = run_tool(['bash', 'tools/dist_train.sh', cfg, '2', '--work-dir', work, *args],
                      env={'PORT': str(port)})
    assert_ok(result)
    load = [[torch.load(work / name.format(r), weights_only=True) for r in (0, 1)]
            for name in ('trace_rank{}.pth', 'rank{}_params.pth')]
    return result.stdout + result.stderr, *load


@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory, tiny_data):
    root = tmp_path_factory.mktemp('recommended_ddp')
    cfg = _config(root / 'recommended_ddp.py')
    return (root, cfg, *_two_ranks(cfg, root / 'a', 29671))


def test_ranks_agree_on_subnets_masks_weights_and_stored_bn_stats(uninterrupted):
    _, _, log, (r0, r1), (p0, p1) = uninterrupted
    assert p0['wrapper'] == 'MMDistributedDataParallel' and p0['iter'] == ITERS
    assert r0['trace'] == r1['trace']
    assert [name.split('@')[0] for _, name in r0['trace']] == (CYCLE * 2)[:ITERS]
    assert_same_tensors(r0['masks'], r1['masks'])
    assert_same_tensors(p0['params'], p1['params'])
    assert_same_tensors(r0['bn_stats'], r1['bn_stats'])
    assert 'and dense (dense weight 2, split batch)' in log


def test_two_rank_resume_continues_exactly(uninterrupted):
    """Stop after 3 iterations (the iteration-3 checkpoint) and --resume in two processes:
    subnets, masks, weights and stored BatchNorm statistics continue as without the stop."""
    root, cfg, _, (r0, _), _ = uninterrupted
    work = root / 'b'
    work.mkdir()
    shutil.copy(root / 'a/iter_3.pth', work / 'iter_3.pth')
    log, (s0, s1), _ = _two_ranks(cfg, work, 29672, '--resume', work / 'iter_3.pth')
    assert 'resumed epoch: 0, iter: 3' in log
    assert s0['trace'] == s1['trace'] == r0['trace'][3:]
    for t in range(4, ITERS + 1):
        for masks in (True, False):
            a = checkpoint_state(root / f'a/iter_{t}.pth', masks=masks)
            b = checkpoint_state(work / f'iter_{t}.pth', masks=masks)
            assert a.keys() == b.keys(), t
            different = [k for k in a if not torch.equal(a[k], b[k])]
            assert not different, f'iteration {t}, masks={masks}: {different[:5]}'
