"""Work after training never costs the trained weights: SubnetBNStatsHook with a training
pipeline that ``predict`` cannot take (no ``Resize``, so no ``scale_factor``), and with a
statistics pass that fails; and the options of both sparse hooks are checked when built."""
import textwrap

import pytest
from mmengine.config import Config

import mmsparse.datasets  # noqa: F401  (registers the datasets)
import mmsparse.engine  # noqa: F401  (allow-lists mmengine checkpoint globals)
from conftest import TINY_CONFIG, assert_ok, checkpoint_state, run_tool
from mmsparse.engine.hooks import subnet_bn_stats_hook as bn_stats_hook
from mmsparse.engine.launch import build_runner
from mmsparse.core.subnets import SubnetNameError
from mmsparse.engine.hooks.sparse_subnets_hook import SparseSubnetsHook
from mmsparse.engine.hooks.subnet_bn_stats_hook import SubnetBNStatsHook

ITERS = 2
PROBED = 'backbone.layer1.0.bn1.subnet_running_mean'

def _config(tmp_path):
    """The tiny detector with stored BN statistics and a training pipeline without Resize
    (the tiny images are all 64x64, the size the model takes)."""
    cfg = tmp_path / 'no_resize.py'
    cfg.write_text(textwrap.dedent(f'''
        _base_ = ['{TINY_CONFIG}']
        train_cfg = dict(max_iters={ITERS}, val_interval=1000)
        val_cfg = dict(type='mmsparse.SubnetValLoop', subnets='dense,nm@2:4')
        custom_hooks = [
            dict(type='mmsparse.SparseSubnetsHook', subnets=['unstructured@0.5', 'nm@2:4']),
            dict(type='mmsparse.SubnetBNStatsHook', batches=1),
        ]
        train_dataloader = dict(dataset=dict(pipeline=[
            dict(type='LoadImageFromFile'),
            dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
            dict(type='RandomFlip', prob=0.5),
            dict(type='PackDetInputs')]))
    '''))
    return cfg


def _train(cfg, work):
    result = run_tool(['tools/train.py', cfg, '--work-dir', work])
    assert_ok(result)
    return result.stdout + result.stderr


def test_statistics_of_a_pipeline_without_resize(tmp_path, tiny_data):
    work = tmp_path / 'work'
    log = _train(_config(tmp_path), work)
    state = checkpoint_state(work / f'iter_{ITERS}.pth')
    assert state[PROBED].shape == (3, 16)
    assert 'stored the BatchNorm statistics of 3 subnets (1 batches each' in log
    assert "BatchNorm statistics: each subnet's own, stored in the checkpoint" in log


def test_a_failing_statistics_pass_still_saves_the_final_checkpoint(tmp_path, tiny_data,
                                                                     monkeypatch):
    """The pass breaks after the first subnet's rows are written (in process, so the failure
    can be injected): the error is logged, nothing half-stored is kept, the checkpoint is
    saved and the final validation runs with the trained statistics."""
    real = bn_stats_hook.store_subnet_bn_stats

    def breaks_after_one(network, forward, progress=None):
        def stop(spec):
            raise RuntimeError(f'calibration broke after {spec.name}')
        return real(network, forward, progress=stop)

    monkeypatch.setattr(bn_stats_hook, 'store_subnet_bn_stats', breaks_after_one)
    cfg = Config.fromfile(str(_config(tmp_path)))
    work = tmp_path / 'work'
    cfg.work_dir = str(work)
    build_runner(cfg).train()  # as tools/train.py builds it
    log = next(work.rglob('*.log')).read_text()
    assert ('SubnetBNStatsHook could not store the per-subnet BatchNorm statistics '
            '(RuntimeError: calibration broke after dense)') in log
    assert 'tools/misc/store_bn_stats.py' in log
    state = checkpoint_state(work / f'iter_{ITERS}.pth')  # the trained weights are saved
    assert state['backbone.layer1.0.conv1.mask_nm_nm'].tolist() == [[2, 4]]
    assert not [k for k in state if 'subnet_running' in k]  # nothing half-stored
    assert 'as trained (shared by all subnets)' in log  # the final validation went on
    assert (work / 'last_checkpoint').read_text().strip().endswith(f'iter_{ITERS}.pth')


@pytest.mark.parametrize('batches', [0, -2, 2.5, '3', True, None])
def test_bn_stats_hook_batches_must_be_a_positive_int(batches):
    with pytest.raises(ValueError, match=f'batches must be a positive int.*{batches!r}'):
        SubnetBNStatsHook(batches=batches)


@pytest.mark.parametrize('kwargs,match', [
    (dict(include='backbone.*'), 'include must be a list of layer-name globs'),
    (dict(exclude=['roi_head.*', 3]), 'exclude must be a list'),
    (dict(include=[]), 'include is empty'),
    (dict(subnets=[]), 'lists no sparse subnet'),
    (dict(subnets=['dense']), 'lists no sparse subnet'),
    (dict(subnets=42), 'subnets must be a list'),
    (dict(sparsify_input_layers='no'), 'sparsify_input_layers must be True or False'),
    (dict(channel_groups=1), 'channel_groups must be True or False'),
    (dict(mask_spec='global'), 'mask_spec must be a dict'),
    (dict(mask_spec=dict(scope='layer')), "bad mask_spec.*unexpected keyword.*'scope'"),
    (dict(analysis_image_size=(0, 64)), r'analysis_image_size must be \(H, W\)'),
    (dict(analysis_image_size=128), r'analysis_image_size must be \(H, W\)'),
])
def test_sparse_subnets_hook_options_are_checked_when_built(kwargs, match):
    kwargs.setdefault('subnets', ['nm@2:4'])
    with pytest.raises(ValueError, match=match):
        SparseSubnetsHook(**kwargs)


def test_sparse_subnets_hook_subnet_names_fail_at_construction():
    with pytest.raises(SubnetNameError, match="'unstructured@0.9999999999'.*rounds to 1.0"):
        SparseSubnetsHook(subnets=['unstructured@0.9999999999'])
    with pytest.raises(SubnetNameError, match='listed twice'):
        SparseSubnetsHook(subnets=['nm@2:4', 'unstructured@0.5', 'unstructured@0.50'])
    hook = SparseSubnetsHook(subnets=['unstructured@0.1234567'], include=('backbone.*', ))
    assert [s.name for s in hook.subnets] == ['unstructured@0.123457']
