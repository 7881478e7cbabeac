"""SubnetBNStatsHook: the last checkpoint carries every subnet's BatchNorm statistics, the
final validation and tools/test.py evaluate each subnet with its own, and --trained-bn or
--recalibrate-bn override them."""
import json
import textwrap

import pytest
import torch

import mmsparse.engine  # noqa: F401  (allow-lists mmengine checkpoint globals)
from conftest import TINY_CONFIG, assert_ok, checkpoint_state, run_tool, train

ITERS = 2
NAMES = ['dense', 'unstructured@0.50', 'nm@2:4']
PROBED = 'backbone.layer1.0.bn1'  # follows a masked conv: its statistics differ per subnet


@pytest.fixture(scope='module')
def trained(tmp_path_factory, tiny_data):
    root = tmp_path_factory.mktemp('bn_stats')
    cfg = root / 'tiny_bn_stats.py'
    cfg.write_text(textwrap.dedent(f'''
        _base_ = ['{TINY_CONFIG}']
        train_cfg = dict(max_iters={ITERS}, val_interval={ITERS})
        default_hooks = dict(checkpoint=dict(interval=1))
        val_cfg = dict(type='mmsparse.SubnetValLoop', subnets='all')
        custom_hooks = [
            dict(type='mmsparse.SparseSubnetsHook', subnets=['unstructured@0.5', 'nm@2:4']),
            dict(type='mmsparse.SubnetBNStatsHook', batches=2),
        ]
    '''))
    # trained with tests/helpers' BNProbeHook, which records the validation's statistics
    probed = root / 'tiny_bn_stats_probed.py'
    probed.write_text(f"_base_ = ['{cfg}']\n"
                      "custom_imports = dict(imports=['bn_probe_hook'])\n"
                      "custom_hooks = [*_base_.custom_hooks, dict(type='BNProbeHook', out='"
                      + str(root / 'val_probe.json') + "')]\n")
    log = train(probed, root / 'train')
    return dict(root=root, cfg=cfg, log=log, ckpt=root / 'train' / f'iter_{ITERS}.pth',
                val_probe=root / 'val_probe.json')


def test_only_the_last_checkpoint_stores_each_subnets_statistics(trained):
    first = checkpoint_state(trained['root'] / 'train/iter_1.pth')
    assert not [k for k in first if 'subnet_running' in k]
    state = checkpoint_state(trained['ckpt'])
    mean, var = state[f'{PROBED}.subnet_running_mean'], state[f'{PROBED}.subnet_running_var']
    assert mean.shape == var.shape == (3, 16)
    assert not torch.allclose(mean[0], mean[2])  # dense and nm@2:4 differ
    assert 'stored the BatchNorm statistics of 3 subnets (2 batches each' in trained['log']
    # the final validation (after the hook, same iteration) evaluated each subnet with its row
    during = {active: v for when, active, v in json.loads(trained['val_probe'].read_text())
              if when == 'val_iter'}
    assert list(during) == NAMES
    for row, name in enumerate(NAMES):
        assert during[name] == pytest.approx(float(mean[row].sum()), abs=1e-5), name


def _probe(trained, name, *args):
    """tools/test.py on the last checkpoint with tests/helpers' BNProbeHook; its records."""
    probe = trained['root'] / f'{name}.json'
    cfg = trained['root'] / f'{name}_cfg.py'
    cfg.write_text(f"_base_ = ['{trained['cfg']}']\n"
                   "custom_imports = dict(imports=['bn_probe_hook'])\n"
                   # the training config's hooks stay (SparseSubnetsHook with subnets)
                   "custom_hooks = [*_base_.custom_hooks, dict(type='BNProbeHook', out='"
                   + str(probe) + "')]\n")
    result = run_tool(['tools/test.py', cfg, trained['ckpt'], '--work-dir',
                       trained['root'] / name, '--subnets', 'all', *args])
    assert_ok(result)
    records = json.loads(probe.read_text())
    loaded = next(v for when, _, v in records if when == 'before_test')
    during = {active: v for when, active, v in records if when == 'iter'}
    assert records[-1][0] == 'after_test' and records[-1][2] == loaded  # restored exactly
    return loaded, during, result.stdout + result.stderr


def test_test_tool_evaluates_each_subnet_with_its_stored_statistics(trained):
    stored = checkpoint_state(trained['ckpt'])[f'{PROBED}.subnet_running_mean']
    _, during, log = _probe(trained, 'stored')
    assert list(during) == NAMES
    for row, name in enumerate(NAMES):
        assert during[name] == pytest.approx(float(stored[row].sum()), abs=1e-5), name
    assert "each subnet's own, stored in the checkpoint" in log


def test_trained_bn_ignores_the_stored_statistics(trained):
    loaded, during, log = _probe(trained, 'trained', '--trained-bn')
    assert all(v == loaded for v in during.values())
    assert 'as trained (shared by all subnets)' in log


def test_training_from_the_checkpoint_drops_the_stored_statistics(trained):
    assert [k for k in checkpoint_state(trained['ckpt']) if 'subnet_running' in k]
    # Without SubnetBNStatsHook nothing stores new statistics: whatever the new checkpoint
    # holds would be the loaded ones, kept through training.
    cfg = trained['root'] / 'again_cfg.py'
    cfg.write_text(f"_base_ = ['{trained['cfg']}']\n"
                   'custom_hooks = [_base_.custom_hooks[0]]\n')
    train(cfg, trained['root'] / 'again', '--cfg-options', f'load_from={trained["ckpt"]}',
          'train_cfg.max_iters=1', 'train_cfg.val_interval=1000')
    state = checkpoint_state(trained['root'] / 'again/iter_1.pth')
    assert any(k.endswith('.mask_nm_bits') for k in state)  # the masks came along
    assert not [k for k in state if 'subnet_running' in k]
