"""Sparse Cocktail with Chase's channel masks and Spartan's unstructured steps in
MMDetection's loop: early validation, the masks at every iteration, exact resume."""
import re
import shutil
import textwrap

import pytest
import torch
from mmdet.registry import MODELS
from mmdet.utils import register_all_modules
from mmengine.config import Config

import mmsparse.engine  # noqa: F401  (allow-lists mmengine checkpoint globals)
from conftest import (REPO, TINY_CONFIG, assert_same_tensors, checkpoint_state, train,
                      train_two_ranks)
from mmsparse.core import SparsitySpecError, cocktail_subnets, generate_masks
from mmsparse.core.methods.chase import channel_floor
from mmsparse.core.methods.mask_sources import chase_channel_masks
from mmsparse.core.patterns import global_levels, keep_count
from mmsparse.engine.hooks import SparseCocktailHook
from mmsparse.engine.mask_sources import CocktailMaskSources
from mmsparse.models import sparsify_detector

ITERS = 12
BETA = 0.3  # configs/_base_/sparsity/cocktail_mask_sources.py


def _config(tmp_path):
    cfg = tmp_path / 'cocktail_sources_tiny.py'
    cfg.write_text(textwrap.dedent(f'''
        _base_ = ['{TINY_CONFIG}', '{REPO}/configs/_base_/sparsity/cocktail.py',
                  '{REPO}/configs/_base_/sparsity/cocktail_mask_sources.py']
        custom_hooks = [
            dict(type='mmsparse.SparseSubnetsHook', subnets='cocktail'),
            dict(type='mmsparse.SparseCocktailHook', ratio_mode='current', stage_end=0.8,
                 mask_sources={{{{_base_.cocktail_mask_sources}}}}),
            dict(type='mmsparse.RNGStateHook'),
        ]
        train_cfg = dict(max_iters={ITERS}, val_interval=1000)
        default_hooks = dict(checkpoint=dict(interval=1), logger=dict(interval=1))
        log_processor = dict(window_size=1)
    '''))
    return cfg


def _by_suffix(state, suffix):
    return {k[:-len(suffix)]: v for k, v in state.items() if k.endswith(suffix) and v.numel()}


@pytest.fixture(scope='module')
def trained(tmp_path_factory, tiny_data):
    root = tmp_path_factory.mktemp('cocktail_sources')
    cfg = _config(root)
    log = train(cfg, root / 'a')
    steps = {int(t): name for t, name in re.findall(r'iteration (\d+) trained (\S+) ', log)}
    assert sorted(steps) == list(range(ITERS))
    return root, cfg, log, steps


@pytest.mark.parametrize('sources, match', [
    (dict(nm='chase'), "only \\['channel'\\]"),
    (dict(channel='chaze'), "unknown source 'chaze'"),
    (dict(chanel='chase'), "unknown pattern 'chanel'"),
    (dict(channel=dict(type='chase', gamma=1)), "no option\\(s\\) \\['gamma'\\]"),
    (dict(channel=dict(type='chase', beta=2)), 'beta must be in'),
    (dict(unstructured=dict(type='spartan', beta_start=30, beta_end=20)), 'beta_start'),
])
def test_bad_sources_fail_when_the_hook_is_built(sources, match):
    with pytest.raises((SparsitySpecError, ValueError), match=match):
        SparseCocktailHook(mask_sources=sources)


def test_a_source_for_a_pattern_the_model_lacks_fails_before_training():
    sources = CocktailMaskSources(dict(channel='chase'))
    with pytest.raises(SparsitySpecError, match="mask_sources\\['channel'\\]='chase'.*holds"):
        sources.setup(None, None, {'unstructured', 'nm'}, 0.8)


def test_training_logs_the_sources_and_spartan_schedule(trained):
    _, _, log, steps = trained
    assert 'mask sources: unstructured by spartan, channel by chase' in log
    assert 'spartan_beta:' in log and 'Spartan unstructured masks frozen' in log
    assert {s.split('@')[0] for s in steps.values()} >= {'dense', 'unstructured', 'channel'}


def test_channel_masks_are_chase_nested_exact_and_regenerated_at_boundaries(trained):
    root, cfg, log, _ = trained
    register_all_modules()
    model_cfg = Config.fromfile(str(cfg)).model
    boundaries = {int(t) for t in re.findall(r'iteration (\d+): stage \d+/\d+, masks regen', log)}
    assert len(boundaries) >= 3
    for t in range(1, ITERS):
        before, after = (checkpoint_state(root / f'a/iter_{t}.pth', masks=True),
                         checkpoint_state(root / f'a/iter_{t + 1}.pth', masks=True))
        keeps = _by_suffix(after, '.mask_channel')
        ratios = [round(r, 6) for r in after[next(iter(keeps)) + '.mask_channel_ratios'].tolist()]
        total = sum(k.shape[1] for k in keeps.values())
        for i, ratio in enumerate(ratios):
            assert sum(int((~k[i]).sum()) for k in keeps.values()) == total - keep_count(
                total, ratio)
            assert all(int(k[i].sum()) >= channel_floor(k.shape[1], BETA, ratio)
                       for k in keeps.values())
            assert i == 0 or all(not bool((k[i] & ~k[i - 1]).any()) for k in keeps.values())
        channel = {k: v for k, v in after.items() if 'mask_channel' in k}
        if t not in boundaries:
            assert all(torch.equal(before[k], v) for k, v in channel.items()), t
            continue
        # Recompute from the weights iteration t started from: UMG, then Chase's channels.
        model = MODELS.build(model_cfg)
        model.load_state_dict(checkpoint_state(root / f'a/iter_{t}.pth', masks=False), strict=False)
        network = sparsify_detector(model)
        generate_masks(network, cocktail_subnets())
        chase_channel_masks(network, BETA)
        expected = {k: v for k, v in model.state_dict().items() if 'mask_channel' in k}
        assert all(torch.equal(expected[k], v) for k, v in channel.items()), t


def test_unstructured_masks_follow_the_weights_on_spartan_steps_then_freeze(trained):
    root, _, log, steps = trained
    freeze = int(re.search(r'iteration (\d+): Spartan unstructured masks frozen', log)[1])
    spartan = [t for t, name in steps.items() if name.startswith('unstructured') and t < freeze]
    boundaries = {int(t) for t in re.findall(r'iteration (\d+): stage \d+/\d+, masks regen', log)}
    assert spartan
    for t in range(1, ITERS):
        before, after = (checkpoint_state(root / f'a/iter_{t}.pth', masks=True),
                         checkpoint_state(root / f'a/iter_{t + 1}.pth', masks=True))
        levels = _by_suffix(after, '.mask_unstructured_level')
        ratios = [round(r, 6) for r in
                  after[next(iter(levels)) + '.mask_unstructured_ratios'].tolist()]
        total = sum(v.numel() for v in levels.values())
        assert [sum(int((v >= j + 1).sum()) for v in levels.values())
                for j in range(len(ratios))] == [keep_count(total, r) for r in ratios]
        if t in spartan or t in boundaries:
            # rebuilt from the weights the step started from (one global budget; at a
            # boundary UMG's global magnitude levels, which are Spartan's hard projection)
            weights = checkpoint_state(root / f'a/iter_{t}.pth', masks=False)
            expected = global_levels({n: weights[n + '.weight'].abs().float() for n in levels},
                                     ratios)
            assert all(torch.equal(expected[n], levels[n]) for n in levels), t
        else:  # other patterns' steps, and every step once frozen, leave them alone
            assert all(torch.equal(before[k], after[k]) for k in after
                       if k.endswith('unstructured_level')), t
    assert any(t >= freeze and t not in boundaries for t in range(1, ITERS))


def test_resume_continues_exactly(trained):
    root, cfg, log, steps = trained
    work = root / 'b'
    work.mkdir()
    shutil.copy(root / 'a/iter_5.pth', work / 'iter_5.pth')
    train(cfg, work, '--resume', work / 'iter_5.pth')
    assert any(name.startswith('unstructured') for t, name in steps.items() if t >= 5)
    for t in range(6, ITERS + 1):
        for masks in (True, False):
            a, b = (checkpoint_state(root / f'a/iter_{t}.pth', masks),
                    checkpoint_state(work / f'iter_{t}.pth', masks))
            assert all(torch.equal(a[k], b[k]) for k in a), (t, masks)


def test_two_gloo_processes_agree_on_masks_and_weights(tmp_path, tiny_data):
    """Spartan's per-step masks are computed on each rank from DDP's synchronised weights;
    the last step (iteration 7, unstructured) rebuilds them after the last broadcast."""
    cfg = _config(tmp_path)
    cfg.write_text(cfg.read_text() + textwrap.dedent('''
        custom_imports = dict(imports=['subnet_trace_hook', 'rank_weight_dump_hook'])
        custom_hooks = [
            dict(type='mmsparse.SparseSubnetsHook', subnets='cocktail'),
            dict(type='mmsparse.SparseCocktailHook', mask_sources=dict(
                channel='chase', unstructured=dict(type='spartan', freeze_at=1.0))),
            dict(type='mmsparse.RNGStateHook'),
            dict(type='SubnetTraceHook'), dict(type='RankWeightDumpHook')]
        train_cfg = dict(max_iters=8, val_interval=1000)
        default_hooks = dict(checkpoint=dict(interval=1000))
    '''))
    _, (r0, r1), (p0, p1) = train_two_ranks(cfg, tmp_path / 'work', 29663)
    assert r0['trace'] == r1['trace'] and r0['trace'][-1][1].startswith('unstructured')
    assert_same_tensors(r0['masks'], r1['masks'])
    assert_same_tensors(p0['params'], p1['params'])
