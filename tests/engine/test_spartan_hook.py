"""SpartanHook in MMDetection's loop: density schedule, exact stored mask, frozen end, and
the learned subnet evaluated by tools/test.py from the checkpoint alone."""
import json
import re
import textwrap

import pytest
import torch

import mmsparse.engine  # noqa: F401  (allow-lists mmengine checkpoint globals)
from conftest import (REPO, TINY_CONFIG, assert_ok, assert_same_tensors, run_tool, train,
                      train_two_ranks)
from mmsparse.core import is_mask_key
from mmsparse.core.patterns import keep_count
from mmsparse.core.methods.spartan import SpartanSchedule

ITERS = 10  # density 1 -> 0.2 over iterations 0..2, frozen from iteration 8


def _masks(path):
    state = torch.load(path, map_location='cpu', weights_only=True)['state_dict']
    return {k: v for k, v in state.items() if k.endswith('.mask_unstructured_level')}


@pytest.fixture(scope='module')
def trained(tmp_path_factory, tiny_data):
    root = tmp_path_factory.mktemp('spartan')
    cfg = root / 'spartan_tiny.py'
    cfg.write_text(textwrap.dedent(f'''
        _base_ = ['{TINY_CONFIG}', '{REPO}/configs/_base_/sparsity/spartan.py']
        train_cfg = dict(max_iters={ITERS}, val_interval=1000)
        default_hooks = dict(checkpoint=dict(interval=1), logger=dict(interval=1))
        log_processor = dict(window_size=1)
    '''))
    return root, train(cfg, root / 'w')


def test_density_and_beta_follow_the_schedule(trained):
    _, log = trained
    schedule = SpartanSchedule(0.8, ITERS)
    densities = [float(d) for d in re.findall(r'spartan_density: ([0-9.]+)', log)]
    assert len(densities) == ITERS
    for it, density in enumerate(densities):
        assert abs(density - schedule.density_at(it)) < 1e-4, it
    betas = [float(b) for b in re.findall(r'spartan_beta: ([0-9.]+)', log)]
    assert abs(betas[1] - schedule.beta_at(1)) < 1e-3 and 'Spartan mask frozen' in log


def test_stored_mask_has_the_exact_target_count_and_freezes(trained):
    root, _ = trained
    schedule = SpartanSchedule(0.8, ITERS)
    stored = {t: _masks(root / f'w/iter_{t}.pth') for t in range(1, ITERS + 1)}
    total = sum(v.numel() for v in stored[1].values())
    # iter_t.pth is saved after iteration t-1, whose forward (and stored mask) used
    # sparsity_at(t - 1); from the end of the anneal on, exactly the target count.
    for t in range(schedule.anneal_iter + 1, ITERS + 1):
        kept = sum(int((v >= 1).sum()) for v in stored[t].values())
        assert kept == keep_count(total, 0.8), t
    during = sum(int((v >= 1).sum()) for v in stored[2].values())
    assert during == keep_count(total, schedule.sparsity_at(1))  # still annealing
    # The mask changes while it is learned and not once it is frozen.
    frozen = [t for t in range(1, ITERS + 1) if t - 1 >= schedule.freeze_iter]
    assert frozen
    for t in frozen:
        assert all(torch.equal(stored[t][k], stored[frozen[0]][k]) for k in stored[t]), t
    assert any(not torch.equal(stored[3][k], stored[schedule.freeze_iter + 1][k])
               for k in stored[3])


def test_learned_subnet_is_evaluated_from_the_checkpoint_without_spartan(trained):
    root, _ = trained
    out = root / 'results.json'
    # The plain tiny config: no Spartan hook, the masks come from the checkpoint.
    result = run_tool(['tools/test.py', TINY_CONFIG, root / f'w/iter_{ITERS}.pth',
                       '--subnets', 'unstructured@0.80', '--out', out,
                       '--work-dir', root / 'test'])
    assert_ok(result)
    metrics = json.loads(out.read_text())['unstructured@0.80']
    assert abs(metrics['sparsity'] - 0.8) < 1e-4 and 'coco/bbox_mAP' in metrics
    state = torch.load(root / f'w/iter_{ITERS}.pth', map_location='cpu',
                       weights_only=True)['state_dict']
    assert not any('spartan' in k for k in state if is_mask_key(k))


def test_two_gloo_processes_compute_identical_masks_and_weights(tmp_path, tiny_data):
    """The masks are recomputed on each rank (never broadcast before the freeze, which this
    run never reaches): synchronised gradients through the Spartan graph keep the weights,
    and so the masks, identical."""
    cfg = tmp_path / 'spartan_ddp.py'
    cfg.write_text(textwrap.dedent(f'''
        _base_ = ['{TINY_CONFIG}', '{REPO}/configs/_base_/sparsity/spartan.py']
        custom_imports = dict(imports=['subnet_trace_hook', 'rank_weight_dump_hook'])
        custom_hooks = [*_base_.custom_hooks, dict(type='SubnetTraceHook'),
                        dict(type='RankWeightDumpHook')]
        custom_hooks[1]['freeze_at'] = 1.0
        train_cfg = dict(max_iters=5, val_interval=1000)
        default_hooks = dict(checkpoint=dict(interval=1000))
    '''))
    _, (r0, r1), (p0, p1) = train_two_ranks(cfg, tmp_path / 'work', 29651)
    masks = [k for k in r0['masks'] if k.endswith('mask_unstructured_level')]
    assert masks and all(torch.equal(r0['masks'][k], r1['masks'][k]) for k in masks)
    assert_same_tensors(p0['params'], p1['params'])
    total = sum(r0['masks'][k].numel() for k in masks)
    assert sum(int((r0['masks'][k] >= 1).sum()) for k in masks) == keep_count(total, 0.8)


@pytest.mark.parametrize('options, match', [
    (dict(sparsity=1.0), r'Spartan sparsity must be in \[0, 1\), got 1.0'),
    (dict(freeze_at=1.2), 'freeze_at=1.2'),
    (dict(anneal_end=0.9, freeze_at=0.8), 'anneal_end=0.9, freeze_at=0.8'),
    (dict(beta_start=30.0), 'beta_start <= beta_end, got 30.0, 20.0'),
    (dict(allocation='local'), "allocation must be one of .* got 'local'"),
    (dict(cost='macs'), "cost must be one of .* got 'macs'"),
    (dict(tol=0), 'SpartanHook tol must be > 0, got 0'),
    (dict(block_shape=(2, )), r'SpartanHook block_shape must be two positive integers, got \(2,\)'),
    (dict(block_shape=(0, 4)), r'block_shape must be two positive integers, got \(0, 4\)'),
    (dict(analysis_image_size=128), 'analysis_image_size must be two positive integers, got 128'),
])
def test_bad_options_fail_when_the_hook_is_built(options, match):
    from mmsparse.engine.hooks import SpartanHook
    with pytest.raises(ValueError, match=match):
        SpartanHook(**options)
