"""Validation during training can track several subnets; the hook generates the masks."""
import json
import re
import textwrap

import pytest
import torch

import mmsparse.engine  # noqa: F401  (allow-lists mmengine checkpoint globals)
from conftest import TINY_CONFIG, assert_ok, run_tool


def _config(tmp_path, hook):
    cfg = tmp_path / 'val_subnets.py'
    cfg.write_text(textwrap.dedent(f'''
        _base_ = ['{TINY_CONFIG}']
        custom_hooks = [{hook}]
        train_cfg = dict(max_iters=2, val_interval=2)
        val_cfg = dict(type='mmsparse.SubnetValLoop', subnets='dense,nm@2:4')
    '''))
    return cfg


def test_training_with_subnet_validation(tmp_path, tiny_data):
    hook = ("dict(type='mmsparse.SparseSubnetsHook', "
            "subnets=['unstructured@0.5', 'nm@2:4', 'channel@0.25'])")
    work = tmp_path / 'work'
    result = run_tool(['tools/train.py', _config(tmp_path, hook), '--work-dir', work])
    assert_ok(result)
    log = result.stdout + result.stderr
    assert 'mmsparse: generated masks for dense, unstructured@0.50, channel@0.25, nm@2:4' in log
    assert 'dense/coco/bbox_mAP' in log and 'nm@2:4/coco/segm_mAP' in log
    scalars = [json.loads(line) for line in next(work.rglob('scalars.json')).read_text()
               .splitlines()]
    assert any('nm@2:4/coco/bbox_mAP' in s for s in scalars)
    state = torch.load(work / 'iter_2.pth', weights_only=True)['state_dict']
    assert state['backbone.layer1.0.conv1.mask_nm_nm'].tolist() == [[2, 4]]
    assert state['backbone.layer1.0.conv1.mask_channel'].shape == (1, 16)


def test_impossible_subnet_fails_before_training(tmp_path, tiny_data):
    # the stem (3 input channels) alone: no selected layer can hold 2:4
    hook = ("dict(type='mmsparse.SparseSubnetsHook', subnets=['nm@2:4'], "
            "include=['backbone.conv1'], sparsify_input_layers=True)")
    result = run_tool(['tools/train.py', _config(tmp_path, hook), '--work-dir', tmp_path / 'w'])
    assert result.returncode != 0
    assert 'backbone.conv1' in result.stderr
    assert 'no selected layer has input channels divisible by M=4' in result.stderr
    assert 'Iter(train)' not in result.stdout + result.stderr


def test_glob_matching_nothing_fails_before_training(tmp_path, tiny_data):
    hook = ("dict(type='mmsparse.SparseSubnetsHook', subnets=['nm@2:4'], "
            "exclude=['roi_head.no_such_head*'])")
    result = run_tool(['tools/train.py', _config(tmp_path, hook), '--work-dir', tmp_path / 'w'])
    assert result.returncode != 0
    assert "exclude glob 'roi_head.no_such_head*' matches no maskable layer" in result.stderr


@pytest.mark.parametrize('subnets,match', [("'sparsest'", 'unknown subnet set'),
                                            ("['unstructured@1.5']", r'\[0, 1\)')])
def test_bad_subnets_in_the_config(tmp_path, tiny_data, subnets, match):
    hook = f"dict(type='mmsparse.SparseSubnetsHook', subnets={subnets})"
    result = run_tool(['tools/train.py', _config(tmp_path, hook), '--work-dir', tmp_path / 'w'])
    assert result.returncode != 0
    assert re.search(match, result.stderr)


def _val_config(tmp_path, subnets, val_subnets, name='cfg.py', iters=2):
    cfg = tmp_path / name
    cfg.write_text(textwrap.dedent(f'''
        _base_ = ['{TINY_CONFIG}']
        custom_hooks = [dict(type='mmsparse.SparseSubnetsHook', subnets={subnets!r})]
        train_cfg = dict(max_iters={iters}, val_interval={iters})
        val_cfg = dict(type='mmsparse.SubnetValLoop', subnets={val_subnets!r})
    '''))
    return cfg


@pytest.mark.parametrize('val_subnets,match', [
    ('dense,nm@2:4', r"unknown subnet 'nm@2:4'; the checkpoint holds: dense, "
                     r'unstructured@0.50'),
    ('dense,nm@2:x', "cannot parse subnet name 'nm@2:x'"),
    ('dense,unstructured@0.5,unstructured@0.50', 'listed twice'),
    ('', 'no subnet to evaluate'),
])
def test_wrong_validation_subnets_fail_before_training(tmp_path, tiny_data, val_subnets,
                                                       match):
    cfg = _val_config(tmp_path, ['unstructured@0.5'], val_subnets)
    result = run_tool(['tools/train.py', cfg, '--work-dir', tmp_path / 'w'])
    assert result.returncode != 0
    assert 'SubnetValLoop(subnets=' in result.stderr and re.search(match, result.stderr)
    assert 'Iter(train)' not in result.stdout + result.stderr


def test_resume_with_other_subnets_fails_naming_both_lists(tmp_path, tiny_data):
    work = tmp_path / 'work'
    first = _val_config(tmp_path, ['unstructured@0.5', 'nm@2:4'], 'all', 'first.py')
    assert_ok(run_tool(['tools/train.py', first, '--work-dir', work]))
    ckpt = work / 'iter_2.pth'
    other = _val_config(tmp_path, ['unstructured@0.3', 'nm@2:4'], 'all', 'other.py', iters=3)
    result = run_tool(['tools/train.py', other, '--work-dir', work, '--resume', ckpt])
    assert result.returncode != 0
    assert ('cannot resume: the checkpoint holds masks for the subnets [nm@2:4, '
            'unstructured@0.50], but the config\'s SparseSubnetsHook lists [nm@2:4, '
            'unstructured@0.30]') in result.stderr
    assert 'load_from=' in result.stderr
    assert 'Iter(train)' not in result.stdout + result.stderr
    assert not (work / 'iter_3.pth').exists()
    # the way the message points to: a new run from the weights, with new masks
    new = tmp_path / 'new'
    result = run_tool(['tools/train.py', other, '--work-dir', new, '--cfg-options',
                       f'load_from={ckpt}', 'train_cfg.max_iters=1', 'train_cfg.val_interval=1'])
    assert_ok(result)
    log = result.stdout + result.stderr
    assert 'the loaded checkpoint holds masks for [nm@2:4, unstructured@0.50]' in log
    assert 'generated masks for dense, unstructured@0.30, nm@2:4' in log
    state = torch.load(new / 'iter_1.pth', weights_only=True)['state_dict']
    assert state['backbone.layer1.0.conv1.mask_unstructured_ratios'].tolist() == [
        pytest.approx(0.3)]
    # the same subnets resume as before
    result = run_tool(['tools/train.py', first, '--work-dir', work, '--resume', ckpt,
                       '--cfg-options', 'train_cfg.max_iters=3', 'train_cfg.val_interval=3'])
    assert_ok(result)


def test_sparse_validation_subnets_without_the_hook_fail_before_training(tmp_path, tiny_data):
    cfg = tmp_path / 'no_hook.py'
    cfg.write_text(textwrap.dedent(f'''
        _base_ = ['{TINY_CONFIG}']
        val_cfg = dict(type='mmsparse.SubnetValLoop', subnets='dense,nm@2:4')
    '''))
    result = run_tool(['tools/train.py', cfg, '--work-dir', tmp_path / 'w'])
    assert result.returncode != 0
    assert 'sparse subnets need mmsparse.SparseSubnetsHook in custom_hooks' in result.stderr
    assert 'Iter(train)' not in result.stdout + result.stderr
