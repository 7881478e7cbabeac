"""ChaseHook on the tiny Mask R-CNN: masks change only at the update iterations, weights and
momentum stay masked, removed channels output exactly 0, the budget is exact, resume is
exact."""
import shutil
import textwrap

import pytest
import torch
from mmdet.registry import MODELS
from mmdet.utils import register_all_modules
from mmengine.config import Config

import mmsparse.engine  # noqa: F401  (registers the hooks, allow-lists checkpoint globals)
from conftest import REPO, TINY_CONFIG, assert_same_tensors, train, train_two_ranks
from mmsparse.core import channel_keep, is_mask_key
from mmsparse.core.methods.chase import ChaseSchedule, weight_masks
from mmsparse.models import detector_loss_run, sparsify_detector
from mmsparse.registry import HOOKS

ITERS = 6
HOOK = dict(sparsity=0.5, channel_sparsity=0.3, update_interval=2, update_end=0.7,
            extra_density=0.1, drop_fraction=0.3, beta=0.5)
SCHEDULE = ChaseSchedule(max_iters=ITERS, **HOOK)  # updates after iterations 2 and 4


def _config(root):
    cfg = root / 'chase_tiny.py'
    cfg.write_text(textwrap.dedent(f'''
        _base_ = ['{TINY_CONFIG}', '{REPO}/configs/_base_/sparsity/chase.py']
        train_cfg = dict(max_iters={ITERS}, val_interval=1000)
        custom_hooks = [
            dict(type='mmsparse.SparseSubnetsHook',
                 subnets=['unstructured@0.50', 'channel@0.30']),
            dict(type='mmsparse.ChaseHook', **{HOOK!r}),
            dict(type='mmsparse.RNGStateHook'),
        ]
        default_hooks = dict(checkpoint=dict(interval=1), logger=dict(interval=1))
        log_processor = dict(window_size=1)
    '''))
    return cfg


def _load(path):
    return torch.load(path, map_location='cpu', weights_only=True)


def _split(state, masks):
    return {k: v for k, v in state['state_dict'].items() if is_mask_key(k) == masks}


@pytest.fixture(scope='module')
def run(tmp_path_factory, tiny_data):
    root = tmp_path_factory.mktemp('chase')
    cfg = _config(root)
    return root, cfg, train(cfg, root / 'a')


@pytest.fixture(scope='module')
def network_at(run):
    """The attached network of a checkpoint (tiny Mask R-CNN with masks loaded)."""
    root, cfg, _ = run
    register_all_modules()
    model_cfg = Config.fromfile(str(cfg)).model

    network = sparsify_detector(MODELS.build(model_cfg))  # analysed once, reloaded per use

    def load(t):
        network.model.load_state_dict(_load(root / f'a/iter_{t}.pth')['state_dict'])
        return network
    return load


def test_masks_change_exactly_at_the_update_iterations(run):
    root, _, log = run
    assert 'Chase ERK masks at density 0.600' in log
    assert [t for t in range(1, ITERS + 1) if SCHEDULE.is_update(t)] == [2, 4]
    for t in (2, 4):
        assert f'Chase update at iteration {t}:' in log
    for t in range(1, ITERS):
        before, after = _split(_load(root / f'a/iter_{t}.pth'), True), _split(
            _load(root / f'a/iter_{t + 1}.pth'), True)
        changed = any(not torch.equal(before[k], after[k]) for k in before)
        assert changed == SCHEDULE.is_update(t + 1), t


def test_weights_and_momentum_are_masked_and_the_budget_is_exact(run, network_at):
    root, _, _ = run
    for t in (1, 2, 3, ITERS):  # before any update, at one, between, at the end
        network = network_at(t)
        state = _load(root / f'a/iter_{t}.pth')
        names = [n for n, _ in network.model.named_parameters()]
        momentum = {names[i]: s['momentum_buffer']
                    for i, s in state['optimizer']['state'].items()}
        masks = weight_masks(network, SCHEDULE.unstructured)
        total = sum(m.numel() for m in masks.values())
        kept = sum(int(m.sum()) for m in masks.values())
        updates = [u for u in range(1, t + 1) if SCHEDULE.is_update(u)]
        expected = SCHEDULE.density_at(updates[-1] if updates else 0) * total
        # ERK rounds per layer before the first update; updates keep the count exactly.
        assert abs(kept - expected) <= (len(masks) if not updates else 0.5), t
        for name, mask in masks.items():
            assert not network.layers[name].dense_weight[~mask].any(), (t, name)
            assert not momentum[f'{name}.weight'][~mask].any(), (t, name)
        keeps = channel_keep(network, SCHEDULE.channel, all_layers=True)
        modules = dict(network.model.named_modules())
        for name, keep in keeps.items():
            for follower in network.graph.channels[name].followers:
                assert not modules[follower].weight[~keep].any(), (t, follower)
                assert not modules[follower].bias[~keep].any(), (t, follower)
                assert not momentum[f'{follower}.bias'][~keep].any(), (t, follower)
    removed = sum(int((~k).sum()) for k in keeps.values())
    assert removed == round(0.3 * sum(k.numel() for k in keeps.values())) > 0
    assert kept == round(0.5 * total)


def test_removed_channels_output_zero_and_both_subnets_agree(network_at):
    network = network_at(ITERS)
    keeps = channel_keep(network, SCHEDULE.channel, all_layers=True)
    modules = dict(network.model.named_modules())
    outputs, handles = {}, []
    for name in keeps:
        # A removed channel is zero after its BatchNorms, or, without any, at the layer.
        for where in network.graph.channels[name].followers or [name]:
            handles.append(modules[where].register_forward_hook(
                lambda m, i, o, n=name: outputs.setdefault(n, []).append(o)))
    run = detector_loss_run((64, 64))
    losses = {}
    for subnet in ('unstructured@0.50', 'channel@0.30'):
        network.set_active(subnet)
        outputs.clear()
        with torch.no_grad():
            losses[subnet] = {k: float(sum(v) if isinstance(v, list) else v)
                              for k, v in run(network.model).items()}
        assert set(outputs) == set(keeps)
        for name, outs in outputs.items():
            assert all(not o[:, ~keeps[name]].any() for o in outs), (subnet, name)
    for handle in handles:
        handle.remove()
    assert losses['unstructured@0.50'] == pytest.approx(losses['channel@0.30'], abs=1e-6)


def test_resume_continues_exactly(run):
    root, cfg, _ = run
    work = root / 'b'
    work.mkdir()
    shutil.copy(root / 'a/iter_3.pth', work / 'iter_3.pth')
    log = train(cfg, work, '--resume', work / 'iter_3.pth')
    assert 'Chase ERK masks' not in log and 'Chase update at iteration 4:' in log
    for t in range(4, ITERS + 1):
        a, b = _load(root / f'a/iter_{t}.pth'), _load(work / f'iter_{t}.pth')
        for masks in (True, False):
            first, second = _split(a, masks), _split(b, masks)
            assert all(torch.equal(first[k], second[k]) for k in first), (t, masks)


def test_impossible_settings_fail_when_the_hook_is_built():
    with pytest.raises(ValueError, match='sparsity must be in'):
        HOOKS.build(dict(type='mmsparse.ChaseHook', sparsity=1.0))
    with pytest.raises(ValueError, match='prune_scope'):
        HOOKS.build(dict(type='mmsparse.ChaseHook', prune_scope='layers'))


@pytest.mark.parametrize('options, match', [
    (dict(channel_sparsity=1.0), r'Chase channel_sparsity must be in \[0, 1\), got 1.0'),
    (dict(update_interval=0), 'update_interval must be an integer >= 1, got 0'),
    (dict(update_interval=2.5), 'update_interval must be an integer >= 1, got 2.5'),
    (dict(update_end=1.5), r'update_end must be in \(0, 1\] .* got 1.5'),
    (dict(update_end=0), r'update_end must be in \(0, 1\] .* got 0'),
    (dict(extra_density=0.6), r'extra_density must be in \[0, sparsity=0.5\], got 0.6'),
    (dict(drop_fraction=1.0), r'drop_fraction must be in \[0, 1\), got 1.0'),
    (dict(beta=1.5), r'beta must be in \[0, 1\], got 1.5'),
    (dict(erk_power=-1), 'erk_power must be >= 0, got -1'),
])
def test_every_option_is_checked_when_the_hook_is_built(options, match):
    with pytest.raises(ValueError, match=match):
        HOOKS.build(dict(type='mmsparse.ChaseHook', **options))


def test_two_gloo_processes_agree_on_masks_and_weights(tmp_path, tiny_data):
    cfg = _config(tmp_path)
    cfg.write_text(cfg.read_text() + textwrap.dedent('''
        custom_imports = dict(imports=['subnet_trace_hook', 'rank_weight_dump_hook'])
        custom_hooks = [*custom_hooks, dict(type='SubnetTraceHook'),
                        dict(type='RankWeightDumpHook')]
        default_hooks = dict(checkpoint=dict(interval=1000))
    '''))
    log, traces, params = train_two_ranks(cfg, tmp_path / 'work', 29651)
    assert 'Chase update at iteration 2:' in log and 'Chase update at iteration 4:' in log
    # Iterations ending in an update run dense to record the (all-reduced) dense gradients.
    expected = [[t, 'dense' if SCHEDULE.is_update(t + 1) else 'unstructured@0.50']
                for t in range(ITERS)]
    assert traces[0]['trace'] == traces[1]['trace'] == expected
    assert [name for _, name in expected].count('dense') == 2
    assert_same_tensors(traces[0]['masks'], traces[1]['masks'])
    assert params[0]['wrapper'] == params[1]['wrapper'] == 'MMDistributedDataParallel'
    assert_same_tensors(params[0]['params'], params[1]['params'])
