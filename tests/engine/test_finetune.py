"""Fine-tuning from a trained detector (configs/_base_/sparsity/cocktail_finetune.py,
configs/finetune/): the first masks are one-shot UMG of the LOADED weights (not of the random
init), a legacy-format checkpoint starts the run, MMDetection's frozen set-up
(``norm_eval=True``, ``frozen_stages=1``) stays frozen, the one-shot baseline's commands
run, a run without its start fails before training, and the shipped configs parse. Tiny
detector, tiny data, nothing downloaded."""
import logging
import textwrap
from types import SimpleNamespace

import pytest
import torch
from mmdet.registry import MODELS
from mmdet.utils import register_all_modules
from mmengine.config import Config
from mmengine.runner import BaseLoop, CheckpointLoader

import mmsparse.engine  # noqa: F401  (allow-lists mmengine checkpoint globals)
from conftest import REPO, TINY_CONFIG, assert_ok, checkpoint_state, run_tool, train
from mmsparse.core import MaskSpec, cocktail_subnets, generate_masks, is_mask_key
from mmsparse.engine.hooks import RequireLoadFromHook, SparseSubnetsHook
from mmsparse.engine.sparse_checkpoint import load_from_state
from mmsparse.models import attached_network, sparsify_detector

ITERS = 3
FINETUNE = REPO / 'configs/finetune'
URL = ('https://download.openmmlab.com/mmdetection/v2.0/mask_rcnn/mask_rcnn_r50_fpn_1x_coco/'
       'mask_rcnn_r50_fpn_1x_coco_20200205-d4b0c5d6.pth')
FROZEN_BN_BUFFERS = ('running_mean', 'running_var', 'num_batches_tracked')


@pytest.fixture(scope='module')
def start(tmp_path_factory, tiny_data):
    """A tiny dense detector trained 2 iterations (BatchNorm statistics not 0/1), saved
    again in torch's legacy (non-zip) format as MMDetection's model-zoo files are, and the
    tiny fine-tune config (the fragment on the tiny detector, MMDetection's frozen set-up)."""
    root = tmp_path_factory.mktemp('finetune')
    train(TINY_CONFIG, root / 'dense', '--cfg-options', 'train_cfg.max_iters=2',
          'default_hooks.checkpoint.interval=2')
    trained = root / 'dense/iter_2.pth'
    legacy = root / 'legacy.pth'
    torch.save({'state_dict': checkpoint_state(trained)}, legacy,
               _use_new_zipfile_serialization=False)
    cfg = root / 'finetune_tiny.py'
    cfg.write_text(textwrap.dedent(f'''
        _base_ = ['{TINY_CONFIG}', '{REPO}/configs/_base_/sparsity/cocktail_finetune.py']
        custom_imports = dict(imports=['first_masks_hook'])
        model = dict(backbone=dict(norm_eval=True, frozen_stages=1))
        train_cfg = dict(max_iters={ITERS}, val_interval=1000)
        param_scheduler = [
            dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=2),
            dict(type='MultiStepLR', by_epoch=False, begin=0, end={ITERS}, milestones=[2],
                 gamma=0.1)]
        optim_wrapper = dict(optimizer=dict(lr=0.01))
        default_hooks = dict(checkpoint=dict(interval={ITERS}))
        custom_hooks = [*_base_.sparse_hooks, dict(type='FirstMasksHook')]
        sparse_cocktail = dict(stage_end=0.5)
    '''))
    return dict(root=root, trained=trained, legacy=legacy, cfg=cfg)


@pytest.fixture(scope='module')
def run(start):
    work = start['root'] / 'cocktail'
    log = train(start['cfg'], work, '--cfg-options', f'load_from={start["legacy"]}')
    return dict(log=log, first=torch.load(work / 'first_masks.pth', weights_only=True),
                final=checkpoint_state(work / f'iter_{ITERS}.pth'))


def _umg_masks(cfg_path, weights):
    """The masks SparseSubnetsHook's defaults give the 24 subnets on ``weights``."""
    register_all_modules()
    cfg = Config.fromfile(str(cfg_path))
    model = MODELS.build(cfg.model)
    model.load_state_dict(weights, strict=False)
    network = sparsify_detector(model)
    generate_masks(network, cocktail_subnets(), MaskSpec())
    return {k: v for k, v in model.state_dict().items() if is_mask_key(k)}


def test_first_masks_are_umg_of_the_loaded_weights(start, run):
    first, loaded = run['first'], checkpoint_state(start['legacy'])
    # the first iteration starts from the checkpoint's weights, not the random init
    assert all(torch.equal(first['start'][k], v) for k, v in loaded.items())
    assert not torch.equal(first['init']['backbone.layer2.0.conv1.weight'],
                           loaded['backbone.layer2.0.conv1.weight'])
    expected = _umg_masks(start['cfg'], loaded)
    assert first['masks'].keys() == expected.keys() and len(expected) > 50
    assert [k for k in expected if not torch.equal(first['masks'][k], expected[k])] == []
    from_init = _umg_masks(start['cfg'], first['init'])
    assert any(not torch.equal(first['masks'][k], from_init[k]) for k in expected)
    assert 'mmsparse: generated masks for' in run['log']


def test_frozen_batchnorm_and_stages_stay_frozen(start, run):
    """MMDetection's COCO set-up: backbone BatchNorm statistics (norm_eval) and every
    parameter of the stem and layer1 (frozen_stages=1, their BatchNorm affines included)
    end the run bit-identical; BatchNorm affines of later stages train, as in mmdet."""
    loaded, final = checkpoint_state(start['legacy']), run['final']
    frozen_prefix = ('backbone.conv1.', 'backbone.bn1.', 'backbone.layer1.')
    frozen = [k for k in loaded if k.startswith(frozen_prefix)
              or (k.startswith('backbone.') and k.rsplit('.', 1)[-1] in FROZEN_BN_BUFFERS)]
    assert len(frozen) > 40
    assert [k for k in frozen if not torch.equal(loaded[k], final[k])] == []
    assert not torch.equal(loaded['backbone.layer2.0.conv1.weight'],
                           final['backbone.layer2.0.conv1.weight'])
    # frozen layers stay dense, and every BatchNorm is frozen: no per-subnet statistics
    assert not [k for k in final if k.startswith('backbone.layer1.') and is_mask_key(k)]
    assert not [k for k in final if 'subnet_running' in k]


def test_the_one_shot_baseline_commands_run(start):
    """attach_masks (masks of the trained weights), store_bn_stats (BatchNorm trained, not
    frozen: per-subnet statistics), test.py on the subnets: the documented commands."""
    root, subnets = start['root'], 'dense,unstructured@0.49,channel@0.27,nm@2:4'
    oneshot, with_bn = root / 'oneshot.pth', root / 'oneshot_bn.pth'
    assert_ok(run_tool(['tools/misc/attach_masks.py', TINY_CONFIG, start['legacy'],
                        '--subnets', 'cocktail', '--out', oneshot]))
    assert_ok(run_tool(['tools/misc/store_bn_stats.py', TINY_CONFIG, oneshot, '--batches', '1',
                        '--out', with_bn]))
    assert [k for k in checkpoint_state(with_bn) if 'subnet_running' in k]
    out = root / 'oneshot_results.json'
    assert_ok(run_tool(['tools/test.py', TINY_CONFIG, with_bn, '--subnets', subnets,
                        '--work-dir', root / 'oneshot_test', '--out', out]))
    assert out.is_file() and 'nm@2:4' in out.read_text()


def _serve(prefix, state):
    """Make mmengine's loader answer URLs starting with ``prefix`` with ``state`` (a test
    scheme stands in for https: nothing is downloaded)."""
    CheckpointLoader.register_scheme(prefixes=prefix, force=True)(
        lambda filename, map_location=None: {'state_dict': dict(state)})


def test_load_from_url_is_read_by_mmengine_loader():
    """A URL ``load_from`` (the COCO config's model-zoo file) is read through mmengine's
    loader, not refused as a missing local file."""
    _serve('mmsparse-test://', {'module.backbone.conv1.weight': torch.ones(2)})
    assert list(load_from_state('mmsparse-test://zoo/model.pth')) == ['backbone.conv1.weight']


def test_masks_of_a_url_checkpoint_attach_without_a_subnets_list():
    """``SparseSubnetsHook(subnets=None)`` (as tools/test.py uses it) takes the masked layers
    from a URL ``load_from`` too."""
    register_all_modules()
    model_cfg = Config.fromfile(str(TINY_CONFIG)).model
    trained = MODELS.build(model_cfg)
    masked = sparsify_detector(trained)
    generate_masks(masked, ['dense', 'nm@2:4'], MaskSpec())
    _serve('mmsparse-masks-test://', trained.state_dict())
    model = MODELS.build(model_cfg)
    runner = SimpleNamespace(model=model, logger=logging.getLogger(__name__),
                             cfg=Config(dict(load_from='mmsparse-masks-test://zoo/m.pth')))
    SparseSubnetsHook(subnets=None).before_run(runner)
    network = attached_network(model)  # its masks load later, with the weights
    assert network is not None and sorted(network.layers) == sorted(masked.layers)


def test_training_without_load_from_fails_before_the_first_iteration(start):
    """A fine-tune config run without its start stops at ``before_run``, naming the option,
    instead of training the random init with the fine-tune schedule."""
    work = start['root'] / 'no_start'
    result = run_tool(['tools/train.py', start['cfg'], '--work-dir', work])
    assert result.returncode != 0
    assert '--cfg-options load_from=CKPT' in result.stderr + result.stdout
    assert not (work / 'first_masks.pth').exists() and not list(work.glob('*.pth'))


class _Loop(BaseLoop):
    def run(self):
        pass


def _runner(work_dir, load_from=None, resume=False, training=True):
    return SimpleNamespace(_train_loop=_Loop(None, []) if training else dict(), work_dir=str(
        work_dir), _load_from=load_from, _resume=resume)


def test_require_load_from_hook_checks_the_start_of_training_runs(tmp_path):
    hook = RequireLoadFromHook()
    existing = tmp_path / 'start.pth'
    existing.write_bytes(b'')
    hook.before_run(_runner(tmp_path, load_from=str(existing)))
    hook.before_run(_runner(tmp_path, load_from='https://example.com/zoo.pth'))  # mmengine's
    hook.before_run(_runner(tmp_path, training=False))  # tools/test.py and other evaluations
    with pytest.raises(ValueError, match='--cfg-options load_from=CKPT'):
        hook.before_run(_runner(tmp_path))
    with pytest.raises(FileNotFoundError, match='missing.pth'):
        hook.before_run(_runner(tmp_path, load_from=str(tmp_path / 'missing.pth')))
    # --resume without load_from: the work dir's latest checkpoint is the start
    with pytest.raises(ValueError, match='--resume found no checkpoint'):
        hook.before_run(_runner(tmp_path, resume=True))
    (tmp_path / 'last_checkpoint').write_text(str(tmp_path / 'iter_2.pth'))
    hook.before_run(_runner(tmp_path, resume=True))


def test_shipped_finetune_configs_parse():
    names = sorted(p.name for p in FINETUNE.glob('*.py'))
    assert len(names) == 8
    for name in names:
        cfg = Config.fromfile(str(FINETUNE / name))
        assert cfg.model.backbone.norm_eval is True and cfg.model.backbone.frozen_stages == 1
        warmup, steps = cfg.param_scheduler
        iters = cfg.train_cfg.max_iters
        assert warmup.type == 'LinearLR' and warmup.end == 50
        assert steps.milestones == [int(iters * 0.75), int(iters * 0.9)] and steps.end == iters
        if 'coco' in name:
            assert cfg.load_from == URL and iters == 14660
            assert cfg.model.backbone.init_cfg is None  # no ImageNet download
            assert cfg.optim_wrapper.optimizer.lr == 0.01
        else:
            assert cfg.load_from is None and iters == 600  # given on the command line
            assert cfg.optim_wrapper.optimizer.lr == 0.01
        hooks = {h['type']: h for h in cfg.custom_hooks}
        assert 'mmsparse.RequireLoadFromHook' in hooks  # a run without its start fails
        if 'cocktail' in name:
            assert hooks['mmsparse.SparseCocktailHook']['stage_end'] == 0.5
            assert hooks['mmsparse.SparseSubnetsHook']['subnets'] == 'cocktail'
        elif 'dedicated' in name:
            assert len(hooks['mmsparse.SparseSubnetsHook']['subnets']) == 1
            assert hooks['mmsparse.SparseCocktailHook']['regenerate_masks'] is False
            assert hooks['mmsparse.SparseCocktailHook']['num_stages'] == 1
        else:
            assert list(hooks) == ['mmsparse.RNGStateHook', 'mmsparse.RequireLoadFromHook']
