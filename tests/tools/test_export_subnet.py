"""tools/export_subnet.py: exported subnets load and evaluate from their files alone (folded
and pickled ones in a process that never imports mmsparse; a slimmed channel subnet's config
imports mmsparse for its builder), with the COCO metrics tools/test.py reports for the subnet
inside the checkpoint."""
import json
from pathlib import Path

import pytest
import torch

from conftest import REPO, assert_ok, load_tool, run_tool
import export_fixtures
from export_fixtures import NAMES, export_api

# the shared fixtures (each computed once per session, see export_fixtures)
sparse_checkpoint, in_checkpoint = export_fixtures.sparse_checkpoint, export_fixtures.in_checkpoint
exported, pickled = export_fixtures.exported, export_fixtures.pickled

PLAIN = '''
import json, runpy, sys
import torch
from mmengine.config import Config
from mmengine.runner import Runner
from mmdet.apis import inference_detector, init_detector

folder, pickled, image, mmdet_test = sys.argv[1:5]
metrics = {}
for name in ('unstructured@0.30', 'nm@2-4'):  # ordinary checkpoints + the plain config
    cfg = Config.fromfile(f'{folder}/{name}.py')
    cfg.work_dir = f'{folder}/plain_{name}'
    metrics[name] = Runner.from_cfg(cfg).test()
    init_detector(f'{folder}/{name}.py', f'{folder}/{name}.pth', device='cpu')
cfg = Config.fromfile(pickled[:-4] + '.py')  # --pickle-module: the slimmed module itself
model = torch.load(pickled, weights_only=False)['model']
metrics['pickled'] = Runner(
    model=model, work_dir=f'{folder}/plain_pickled', test_dataloader=cfg.test_dataloader,
    test_evaluator=cfg.test_evaluator, test_cfg=cfg.test_cfg, default_scope='mmdet').test()
detections = inference_detector(model, image)  # model.cfg travels with the module
assert len(detections.pred_instances) > 0
# (the editable install's path finder, __editable___mmsparse_*_finder, is no mmsparse code)
assert 'mmsparse' not in sys.modules and not [m for m in sys.modules if m.startswith('mmsparse')]

# The default channel export: a checkpoint + a config whose model mmsparse's builder makes.
config, weights = f'{folder}/channel@0.25.py', f'{folder}/channel@0.25.pth'
cfg = Config.fromfile(config)  # its custom_imports import mmsparse
cfg.work_dir = f'{folder}/plain_channel'
metrics['channel@0.25'] = Runner.from_cfg(cfg).test()
model = init_detector(config, weights, device='cpu')
assert type(model).__name__ == 'MaskRCNN' and model.backbone.layer1[0].conv1.out_channels == 12
assert len(inference_detector(model, image).pred_instances) > 0
# MMDetection's own tools/test.py CONFIG CKPT
sys.argv = [mmdet_test, config, weights, '--work-dir', f'{folder}/mmdet_test']
runpy.run_path(mmdet_test, run_name='__main__')
print('METRICS' + json.dumps(metrics))
'''


@pytest.fixture(scope='module')
def plain_metrics(exported, pickled, tiny_data, tmp_path_factory):
    import mmdet
    folder, _ = exported
    script = tmp_path_factory.mktemp('plain') / 'plain.py'
    script.write_text(PLAIN)
    mmdet_test = Path(mmdet.__file__).parent / '.mim/tools/test.py'
    # From the repository root (the configs' relative data_root), with this interpreter.
    result = run_tool([script, folder, pickled[0], tiny_data / 'train/000000.png', mmdet_test])
    assert_ok(result)
    metrics = json.loads(result.stdout.split('METRICS')[-1])
    return {name.replace('nm@2-4', 'nm@2:4'): m for name, m in metrics.items()}


def test_plain_mmdetection_metrics_equal_the_in_checkpoint_subnets(in_checkpoint,
                                                                    plain_metrics):
    assert set(plain_metrics) == {*NAMES, 'pickled'}
    for name in (*NAMES, 'pickled'):
        plain = plain_metrics[name]
        inside = in_checkpoint['channel@0.25' if name == 'pickled' else name]
        keys = [k for k in plain if k.startswith('coco/')]
        assert len(keys) == 12 and inside['coco/bbox_mAP'] > 0.0, name  # informative
        if name in ('channel@0.25', 'pickled'):  # slimmed: same function up to rounding
            for key in keys:
                assert abs(plain[key] - inside[key]) <= 1e-3, (name, key)
        else:  # folded: the very same arithmetic as the masked forward
            assert {k: plain[k] for k in keys} == {k: inside[k] for k in keys}, name
    assert len({m['coco/bbox_mAP_50'] for m in plain_metrics.values()}) > 1


def test_exported_files(exported, in_checkpoint, sparse_checkpoint):
    folder, log = exported
    for name in ('unstructured@0.30', 'nm@2-4'):
        ckpt = torch.load(folder / f'{name}.pth', weights_only=True)  # plain tensors only
        assert set(ckpt) == {'meta', 'state_dict'}
        assert not [k for k in ckpt['state_dict'] if k.rsplit('.', 1)[-1].startswith('mask_')]
        info = ckpt['meta']['mmsparse']
        inside = in_checkpoint[name.replace('-', ':')]
        assert info['subnet'] == name.replace('-', ':') and info['format'] == 'state_dict'
        assert abs(info['sparsity'] - inside['sparsity']) < 1e-4  # measured zeros
        assert info['source_checkpoint'] == str(sparse_checkpoint['sparse'])
        assert ckpt['meta']['dataset_meta']['classes'][0] == 'circle'
        config = (folder / f'{name}.py').read_text()
        assert 'mmsparse.' not in config.replace('mmsparse tools/', '')
        assert "type='CocoDataset'" in config and 'load_from' in config
    slim = torch.load(folder / 'channel@0.25.pth', weights_only=True)  # plain types only
    assert set(slim) == {'meta', 'state_dict'}
    info = slim['meta']['mmsparse']
    assert info['format'] == 'state_dict' and info['slimmed'] and info['narrowed_modules'] > 10
    assert info['params'] < 0.8 * info['params_dense']
    assert info['params'] == sum(v.numel() for k, v in slim['state_dict'].items()
                                 if not k.endswith(('running_mean', 'running_var',
                                                    'num_batches_tracked')))
    assert slim['state_dict']['backbone.layer1.0.conv1.weight'].shape[0] == 12  # 16 - 25 %
    config = (folder / 'channel@0.25.py').read_text()
    assert "type='mmsparse.SlimmedDetector'" in config and "detector_type='MaskRCNN'" in config
    assert 'mmdet.apis.init_detector(' in log and 'mmsparse must be installed' in log
    assert log.count('] 3/3') == 1  # one progress bar over the three subnets


def test_also_and_bn_recalibration(sparse_checkpoint, exported, tmp_path):
    out = tmp_path / 'combo.pth'
    result = run_tool(['tools/export_subnet.py', sparse_checkpoint['cfg'],
                       sparse_checkpoint['sparse'], '--subnet', 'channel@0.25', '--also',
                       'unstructured@0.3', '--recalibrate-bn', '2', '--out', out])
    assert_ok(result)
    combo = torch.load(out, weights_only=True)
    only = torch.load(exported[0] / 'channel@0.25.pth', weights_only=True)
    info = combo['meta']['mmsparse']
    assert info['also'] == ['unstructured@0.30'] and info['recalibrated_bn_batches'] == 2
    # channel removal and the unstructured zeros together
    assert info['sparsity'] > only['meta']['mmsparse']['sparsity'] + 0.1
    assert info['params'] == only['meta']['mmsparse']['params']
    assert 'BatchNorm recalibrated on 2 batches' in result.stdout
    key = 'backbone.layer1.0.bn1.running_mean'  # statistics re-estimated
    assert not torch.allclose(combo['state_dict'][key], only['state_dict'][key])


@pytest.mark.skipif(torch.cuda.is_available(), reason='checks the CPU-only message')
def test_semi_structured_on_cpu_says_it_needs_a_gpu(sparse_checkpoint, tmp_path):
    out = tmp_path / 'x.pth'
    result = run_tool(['tools/export_subnet.py', sparse_checkpoint['cfg'],
                       sparse_checkpoint['sparse'], '--subnet', 'nm@2:4', '--semi-structured',
                       '--out', out])
    assert result.returncode != 0 and not out.exists()
    assert ('--semi-structured needs a CUDA GPU with semi-structured (2:4) sparse support '
            '(compute capability 8.0+') in result.stderr and 'no CUDA device' in result.stderr


def test_unknown_subnet_and_maskless_checkpoint(sparse_checkpoint):
    """In-process (the tool's own functions): no interpreter start per error case."""
    from mmdet.utils import register_all_modules
    from mmengine.config import Config

    from mmsparse.core import SubnetNameError, parse_subnet
    tool = export_api()
    register_all_modules()
    cfg = Config.fromfile(str(sparse_checkpoint['cfg']))
    model, network, _ = tool.load_sparse_detector(cfg, str(sparse_checkpoint['sparse']))
    with pytest.raises(SubnetNameError, match=r"unknown subnet 'channel@0.99'; this model "
                       'holds: dense, unstructured@0.30, channel@0.25, nm@2:4'):
        tool.export_model(model, network, parse_subnet('channel@0.99'), ())
    model, network, _ = tool.load_sparse_detector(cfg, str(sparse_checkpoint['dense']))
    assert network is None
    with pytest.raises(tool.ExportError, match="holds no sparse subnets .*only 'dense'"):
        tool.export_model(model, network, parse_subnet('nm@2:4'), ())
    dense, slimmed = tool.export_model(model, network, parse_subnet('dense'), ())
    assert not slimmed and dense.state_dict().keys() == model.state_dict().keys()


def test_plain_config_of_a_cocktail_config():
    """The co-training config (hooks, SubnetValLoop, helper variables, the shapes dataset)
    becomes one with MMDetection types only."""
    from mmengine.config import Config
    tool = export_api()
    cfg = Config.fromfile(
        str(REPO / 'configs/cocktail/mask-rcnn_r18_fpn_cocktail_600it_shapes.py'))
    assert cfg.val_cfg.type == 'mmsparse.SubnetValLoop' and 'cocktail_val_cfg' in cfg
    plain = tool.plain_config(cfg, '/x/u50.pth')
    assert not list(tool.find_mmsparse_types(plain._cfg_dict.to_dict()))
    assert plain.custom_hooks == [] and plain.val_cfg.type == 'ValLoop'
    assert 'cocktail_val_cfg' not in plain and 'sparse_hooks' not in plain
    assert plain.load_from == '/x/u50.pth'
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        dataset = plain[loader].dataset
        assert dataset.type == 'CocoDataset' and dataset.metainfo['classes'][0] == 'circle'
    assert plain.dataset_type == 'CocoDataset' and plain.model == cfg.model
    assert cfg.val_cfg.type == 'mmsparse.SubnetValLoop'  # the original is untouched
    cfg.custom_imports = dict(imports=['mmsparse.engine', 'my_plugin'])
    assert tool.plain_config(cfg).custom_imports.imports == ['my_plugin']
    cfg.test_evaluator = dict(type='mmsparse.SomeMetric')
    with pytest.raises(tool.ExportError, match=r'would still need mmsparse: '
                       r"\['test_evaluator.type=mmsparse.SomeMetric'\]"):
        tool.plain_config(cfg)


def test_stored_bn_statistics_are_stored_by_the_tool_and_exported(sparse_checkpoint, tmp_path):
    """tools/misc/store_bn_stats.py writes every subnet's statistics; the export of a subnet
    carries that subnet's row as its live statistics and no stored-statistics buffers."""
    import argparse

    from mmdet.utils import register_all_modules
    from mmengine.config import Config

    from mmsparse.core import parse_subnet
    stored = tmp_path / 'stored.pth'
    load_tool('tools/misc/store_bn_stats.py').main([
        str(sparse_checkpoint['cfg']), str(sparse_checkpoint['sparse']), '--batches', '1',
        '--out', str(stored)])
    tool = export_api()
    register_all_modules()
    cfg = Config.fromfile(str(sparse_checkpoint['cfg']))
    model, network, _ = tool.load_sparse_detector(cfg, str(stored))
    rows = model.backbone.layer1[0].bn1.subnet_running_mean
    assert rows.shape[0] == 4 and [s.name for s in network.subnets()] == [
        'dense', 'unstructured@0.30', 'channel@0.25', 'nm@2:4']
    args = argparse.Namespace(checkpoint=str(stored), recalibrate_bn=0, semi_structured=False)
    for name, row in (('nm@2:4', 3), ('channel@0.25', 2)):
        out = tmp_path / f'{name.replace(":", "-")}.pth'
        info, _ = tool.write_one(args, cfg, model, network, parse_subnet(name), (), str(out),
                                 {}, [])
        assert info['bn_stats'] == 'stored', name
        state = torch.load(out, weights_only=True)['state_dict']
        assert not [k for k in state if 'subnet_running' in k], name
        if name == 'nm@2:4':  # same channels: the row itself
            assert torch.equal(state['backbone.layer1.0.bn1.running_mean'], rows[row])
    assert tool.bn_source(0, model, network, (parse_subnet('nm@2:4'), )) == 'trained'
    from mmsparse.utils.safe_write import OutputError
    with pytest.raises(OutputError, match='is an input of this run'):
        load_tool('tools/misc/store_bn_stats.py').main(
            [str(sparse_checkpoint['cfg']), str(stored), '--out', str(stored), '--force'])
