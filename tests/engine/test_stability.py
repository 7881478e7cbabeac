"""Training stability: a non-finite loss stops the run at once with a clear error, the joint
step brings gradient clipping to configs without it, split batches of 1 image per pass."""
import json
import math
import os
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import pytest
import torch
from mmengine.logging import MMLogger
from mmengine.optim import OptimWrapper, OptimWrapperDict
from torch import nn

import mmsparse.engine  # noqa: F401  (allow-lists mmengine checkpoint globals)
from conftest import REPO, TINY_CONFIG, assert_ok, run_tool
from mmsparse.engine.stability import check_finite_loss, clip_unclipped, non_finite_losses
from mmsparse.models.joint_dense import CLIP_GRAD, JointDenseLoss

# SparseCocktailHook's recommended options (docs/training.md)
RECOMMENDED = ("ratio_mode='unlocked', straight_through=True, "
               "patterns=('unstructured', 'channel', 'nm', 'nm'), "
               "joint_dense=dict(split_batch=True, weight=2.0)")


def _config(path, hooks, extra=''):
    """The tests' tiny detector with ``hooks`` (config source) as custom_hooks."""
    path.write_text(textwrap.dedent(f'''
        _base_ = ['{TINY_CONFIG}']
        custom_imports = dict(imports=['nan_inject_hook', 'pass_sizes_hook'])
        custom_hooks = [{hooks}]
        optim_wrapper = dict(clip_grad=None)  # like MMDetection's Mask R-CNN 1x
        default_hooks = dict(checkpoint=dict(interval=1))
        log_processor = dict(window_size=1)
        train_cfg = dict(max_iters=6, val_interval=1000)
    ''') + textwrap.dedent(extra))
    return path


def _cocktail_hooks(extra_hook=''):
    return (f"dict(type='mmsparse.SparseSubnetsHook', subnets='cocktail'), "
            f"dict(type='mmsparse.SparseCocktailHook', {RECOMMENDED}), "
            f"dict(type='mmsparse.RNGStateHook'), {extra_hook}")


def _all_finite(path):
    state = torch.load(path, map_location='cpu', weights_only=True)['state_dict']
    return all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def test_nan_loss_stops_the_recipe_in_that_iteration(tmp_path, tiny_data):
    """SparseCocktailHook itself checks: the run stops in iteration 3 (an N:M step of the
    joint recipe), names both passes' NaN terms, and saved no checkpoint after it."""
    cfg = _config(tmp_path / 'nan.py', _cocktail_hooks("dict(type='NaNInjectHook', at=3)"))
    work = tmp_path / 'w'
    result = run_tool(['tools/train.py', cfg, '--work-dir', work])
    log = result.stdout + result.stderr
    assert result.returncode != 0, log[-3000:]
    error = next(x for x in log.splitlines() if x.startswith('FloatingPointError'))
    assert 'non-finite loss in iteration 3 (log: Iter(train) [4/6]) (subnet nm@' in error
    # the terms of fc_cls, no others (the total is left out when terms are named)
    assert 'and the dense network, joint step): loss_cls=nan, dense.loss_cls=nan;' in error
    assert "gradient clipping: {'max_norm': 10, 'norm_type': 2}" in error
    assert 'lower the learning rate' in error and 'clip gradients harder' in error
    # raised before the cocktail hook logged the step, or the logger the NaN losses
    assert 'iteration 2 trained' in log and 'iteration 3 trained' not in log
    assert 'Iter(train) [3/6]  lr' in log and 'Iter(train) [4/6]  lr' not in log
    assert sorted(p.name for p in work.glob('iter_*.pth')) == ['iter_1.pth', 'iter_2.pth',
                                                               'iter_3.pth']
    assert _all_finite(work / 'iter_3.pth')


def test_finite_loss_hook_stops_any_run_even_under_python_O(tmp_path, tiny_data):
    """A dense run with mmsparse.FiniteLossHook: asserts are skipped under -O, the check
    is not; without a SparseNetwork the message names no subnet."""
    cfg = _config(tmp_path / 'dense.py', "dict(type='mmsparse.FiniteLossHook'), "
                                         "dict(type='NaNInjectHook', at=2)")
    work = tmp_path / 'w'
    result = subprocess.run(
        [sys.executable, '-O', 'tools/train.py', str(cfg), '--work-dir', str(work)],
        cwd=REPO, capture_output=True, text=True, timeout=600,
        env=dict(os.environ, PYTHONPATH=str(REPO / 'tests/helpers'),
                 OMP_NUM_THREADS='1'))
    log = result.stdout + result.stderr
    assert result.returncode != 0, log[-3000:]
    error = next(x for x in log.splitlines() if x.startswith('FloatingPointError'))
    assert 'non-finite loss in iteration 2 (log: Iter(train) [3/6]): loss_cls=nan;' in error
    assert 'gradient clipping: none' in error and 'optim_wrapper.clip_grad=dict(' in error
    assert sorted(p.name for p in work.glob('iter_*.pth')) == ['iter_1.pth', 'iter_2.pth']
    assert _all_finite(work / 'iter_2.pth')


def test_check_finite_loss_passes_finite_and_names_inf():
    runner = SimpleNamespace(iter=0, max_iters=1, model=nn.Linear(1, 1),
                             optim_wrapper=SimpleNamespace())
    check_finite_loss(runner, dict(loss=torch.tensor(1.0), acc=torch.tensor(float('nan'))))
    assert non_finite_losses(dict(loss=torch.tensor(math.inf), loss_a=torch.tensor(1.0),
                                  loss_b=torch.tensor(-math.inf))) == dict(loss=math.inf,
                                                                           loss_b=-math.inf)
    with pytest.raises(FloatingPointError, match=r'iteration 0 .*\]\): loss_b=inf;'):
        check_finite_loss(runner, dict(loss=torch.tensor(math.inf), loss_a=torch.tensor(1.0),
                                       loss_b=torch.tensor(math.inf)))


def _runner(**clip):
    model = nn.Linear(4, 1, bias=False)
    wrapper = OptimWrapper(torch.optim.SGD(model.parameters(), lr=1.0), **clip)
    return SimpleNamespace(optim_wrapper=wrapper, logger=MMLogger.get_instance('stability')), model


def _step_size(runner, model):
    """How far one SGD step (lr 1) on a huge gradient moves the weights."""
    with torch.no_grad():
        model.weight.fill_(1.0)
    before = model.weight.detach().clone()
    runner.optim_wrapper.update_params((model(torch.full((1, 4), 100.0)) ** 2).sum())
    return float((model.weight.detach() - before).norm())


def test_clip_unclipped_adds_clipping_only_where_the_config_has_none():
    runner, model = _runner()
    assert _step_size(runner, model) > 1e3  # no clipping
    assert clip_unclipped(runner, CLIP_GRAD, 'test')
    assert runner.optim_wrapper.clip_grad_kwargs == CLIP_GRAD
    assert _step_size(runner, model) == pytest.approx(CLIP_GRAD['max_norm'], rel=1e-4)
    own, model = _runner(clip_grad=dict(max_norm=1.0))
    assert not clip_unclipped(own, CLIP_GRAD, 'test')
    assert _step_size(own, model) == pytest.approx(1.0, rel=1e-4)  # left alone
    off, model = _runner()
    assert not clip_unclipped(off, None, 'test')  # joint_dense=dict(clip_grad=None)
    assert off.optim_wrapper.clip_grad_kwargs is None
    a, b = _runner()[0].optim_wrapper, _runner(clip_grad=dict(max_norm=2.0))[0].optim_wrapper
    several = SimpleNamespace(optim_wrapper=OptimWrapperDict(a=a, b=b), logger=runner.logger)
    assert clip_unclipped(several, CLIP_GRAD, 'test')
    assert a.clip_grad_kwargs == CLIP_GRAD and b.clip_grad_kwargs == dict(max_norm=2.0)


@pytest.mark.parametrize('clip_grad', [dict(max_norm=0), dict(type='value', clip_value=1.0),
                                       dict(norm_type=2), 35])
def test_bad_clip_grad_option_fails_when_the_hook_is_built(clip_grad):
    from mmsparse.engine.hooks import SparseCocktailHook
    with pytest.raises(ValueError, match='joint dense loss clip_grad must be None or a dict'):
        SparseCocktailHook(joint_dense=dict(split_batch=True, clip_grad=clip_grad))


def test_recipe_without_clipping_gets_it_and_one_image_per_pass(tmp_path, tiny_data):
    """2 images per process (MMDetection's COCO default): each pass trains on one, and a
    config without clip_grad trains with the joint step's clipping (logged)."""
    cfg = _config(tmp_path / 'two.py', _cocktail_hooks("dict(type='PassSizesHook')"),
                  'train_cfg = dict(max_iters=4, val_interval=1000)')
    result = run_tool(['tools/train.py', cfg, '--work-dir', tmp_path / 'w'])
    assert_ok(result)
    log = result.stdout + result.stderr
    assert ("the config clips no gradients: clipping them with {'max_norm': 10, "
            "'norm_type': 2}") in log
    assert 'grad_norm:' in log  # mmengine logs the norm only when it clips
    rows = json.loads((tmp_path / 'w/pass_sizes.json').read_text())
    assert len(rows) == 4
    assert all([n for _, n in row] == [1, 1] and row[1][0] == 'dense' for row in rows), rows
    assert [row[0][0].split('@')[0] for row in rows] == ['unstructured', 'channel', 'nm', 'nm']


def test_split_batch_with_batch_size_one_fails_before_training(tmp_path, tiny_data):
    cfg = _config(tmp_path / 'one.py', _cocktail_hooks(),
                  'train_dataloader = dict(batch_size=1)')
    result = run_tool(['tools/train.py', cfg, '--work-dir', tmp_path / 'w'])
    log = result.stdout + result.stderr
    assert result.returncode != 0
    assert ('joint dense loss with split_batch=True needs at least 2 images per batch and '
            'process, but train_dataloader.batch_size is 1') in log
    assert 'Iter(train)' not in log


class _Recorder(nn.Module):
    """A detector stand-in: records (subnet, images) per loss forward."""

    def __init__(self, network):
        super().__init__()
        self.network, self.calls = network, []

    def forward(self, inputs, data_samples, mode='tensor'):
        self.calls.append((self.network.active, len(data_samples)))
        return dict(loss_x=inputs.sum())


class _Network:
    active = 'dense'

    def set_active(self, spec):
        self.active = spec


def test_single_image_batch_in_a_run_feeds_both_passes():
    """An epoch's last batch may hold one image: both passes see it (logged once)."""
    from mmsparse.core import DENSE
    network = _Network()
    network.active = DENSE
    model = _Recorder(network)
    joint = JointDenseLoss(model, network, weight=2.0, split_batch=True)
    network.set_active('nm@2:4')
    joint.step('nm@2:4')
    out = model(torch.ones(2, 3), ['a', 'b'], mode='loss')
    assert model.calls == [('nm@2:4', 1), (DENSE, 1)] and float(out['dense.loss_x']) == 6.0
    model.calls.clear()
    out = model(torch.ones(1, 3), ['a'], mode='loss')
    assert model.calls == [('nm@2:4', 1), (DENSE, 1)]
    assert float(out['loss_x']) == 3.0 and float(out['dense.loss_x']) == 6.0
    assert network.active == 'nm@2:4'
