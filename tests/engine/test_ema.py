"""Co-training with MMDetection's EMAHook (RTMDet, YOLOX): the EMA copy holds exactly the
live model's masks and stored BatchNorm statistics, and validation and the checkpoint
evaluate the EMA weights with them."""
import textwrap

import pytest
import torch

from conftest import REPO, TINY_CONFIG, train

ITERS = 8


@pytest.fixture(scope='module')
def ema_run(tmp_path_factory, tiny_data):
    """The recommended recipe on the tiny detector with RTMDet's EMAHook (momentum raised so
    the EMA weights differ visibly from the live ones), validating at the end."""
    root = tmp_path_factory.mktemp('ema')
    cfg = root / 'cocktail_ema.py'
    cfg.write_text(textwrap.dedent(f'''
        _base_ = ['{TINY_CONFIG}', '{REPO}/configs/_base_/sparsity/cocktail.py']
        custom_imports = dict(imports=['ema_probe_hook'])
        subnet_bn_stats = dict(_base_.subnet_bn_stats, batches=1)
        custom_hooks = [
            dict(type='EMAHook', ema_type='ExpMomentumEMA', momentum=0.3,
                 update_buffers=True, priority=49),
            _base_.sparse_subnets, _base_.sparse_cocktail, _base_.rng_state, subnet_bn_stats,
            dict(type='EMAProbeHook')]
        val_cfg = dict(type='mmsparse.SubnetValLoop', subnets='dense,channel@0.27,nm@2:4')
        train_cfg = dict(max_iters={ITERS}, val_interval={ITERS})
        default_hooks = dict(checkpoint=dict(interval={ITERS}))
    '''))
    log = train(cfg, root / 'w')
    ckpt = torch.load(root / f'w/iter_{ITERS}.pth', map_location='cpu', weights_only=False)
    return log, ckpt, torch.load(root / 'w/ema_probe.pth', weights_only=False)


def test_ema_masks_and_stored_statistics_equal_the_live_models(ema_run):
    """EMAHook puts the EMA copy's state in ``state_dict`` and the live model's in
    ``ema_state_dict`` (``module.`` prefixed): masks and stored statistics must agree."""
    log, ckpt, _ = ema_run
    ema, live = ckpt['state_dict'], ckpt['ema_state_dict']
    masks = [k for k in ema if k.rsplit('.', 1)[-1].startswith('mask_')]
    stats = [k for k in ema if '.subnet_running_' in k]
    assert masks and stats and 'masks regenerated' in log
    assert any(ema[k].numel() for k in masks)  # generated, not the empty placeholders
    for key in masks + stats:
        assert torch.equal(ema[key], live['module.' + key]), key
    weights = [k for k in ema if k.endswith('.weight') and 'module.' + k in live]
    assert any(not torch.equal(ema[k], live['module.' + k]) for k in weights)


def test_validation_runs_each_subnet_on_the_ema_weights(ema_run):
    log, ckpt, probe = ema_run
    ema, live = ckpt['state_dict'], ckpt['ema_state_dict']
    assert set(probe) == {'dense', 'channel@0.27', 'nm@2:4'}
    assert "BatchNorm statistics: each subnet's own" in log
    for subnet in ('channel@0.27', 'nm@2:4'):
        name, weight, mask = probe[subnet]
        assert torch.equal(weight, ema[name + '.weight'])          # the EMA weights ...
        assert not torch.equal(weight, live['module.' + name + '.weight'])  # ... not live
        assert mask is not None and 0 < mask.mean() < 1             # a sparse subnet's mask
    assert 'channel@0.27/coco/bbox_mAP' in log
