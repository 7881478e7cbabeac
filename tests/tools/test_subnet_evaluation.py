"""tools/test.py --subnets: every subnet's COCO metrics from one run, checked against
single-subnet runs, plain MMDetection, two processes, and BatchNorm recalibration."""
import json
import textwrap

import matplotlib.image
import pytest

from conftest import TINY_CONFIG, assert_ok, run_tool, train

SUBNETS = 'dense,unstructured@0.5,channel@0.25,nm@2:4'
NAMES = ['dense', 'unstructured@0.50', 'channel@0.25', 'nm@2:4']


@pytest.fixture(scope='module')
def trained(tmp_path_factory, tiny_data):
    """A tiny Mask R-CNN overfit on the 8 training images (evaluated there, so its metrics
    are far from zero), its dense checkpoint and a copy with four subnets' masks."""
    root = tmp_path_factory.mktemp('subnets')
    cfg = root / 'tiny_eval.py'
    cfg.write_text(textwrap.dedent(f'''
        _base_ = ['{TINY_CONFIG}']
        _ann = 'annotations/instances_train.json'
        train_cfg = dict(max_iters=200, val_interval=1000)
        default_hooks = dict(checkpoint=dict(interval=200), logger=dict(interval=50))
        param_scheduler = [dict(type='ConstantLR', factor=1.0, by_epoch=False, begin=0,
                                end=200)]
        val_dataloader = dict(dataset=dict(ann_file=_ann))
        test_dataloader = val_dataloader
        val_evaluator = dict(ann_file='{tiny_data}/' + _ann)
        test_evaluator = val_evaluator
    '''))
    train(cfg, root / 'train')
    dense = root / 'train/iter_200.pth'
    sparse = root / 'sparse.pth'
    assert_ok(run_tool(['tools/misc/attach_masks.py', cfg, dense, '--subnets', SUBNETS,
                        '--out', sparse]))
    return dict(root=root, cfg=cfg, dense=dense, sparse=sparse)


def _test(trained, checkpoint, *args, name='run'):
    out = trained['root'] / f'{name}.json'
    result = run_tool(['tools/test.py', trained['cfg'], checkpoint, '--work-dir',
                       trained['root'] / f'work_{name}', '--out', out, *args])
    return result, out


@pytest.fixture(scope='module')
def all_results(trained):
    result, out = _test(trained, trained['sparse'], '--subnets', 'all', '--report',
                        trained['root'] / 'report', name='all')
    assert_ok(result)
    return json.loads(out.read_text()), result.stdout


def test_all_subnets_results_json_and_table(all_results):
    results, stdout = all_results
    assert list(results) == NAMES  # sorted by pattern, then sparsity
    for name, metrics in results.items():
        for key in ('coco/bbox_mAP', 'coco/bbox_mAP_50', 'coco/segm_mAP', 'sparsity', 'params',
                    'flops'):
            assert key in metrics, (name, key)
    assert results['dense']['sparsity'] == 0 and results['unstructured@0.50']['sparsity'] == 0.5
    assert results['nm@2:4']['sparsity'] == 0.5
    assert results['channel@0.25']['params'] < results['dense']['params']
    assert results['nm@2:4']['flops'] < results['dense']['flops']
    assert results['dense']['coco/bbox_mAP'] > 0.05, 'the metrics must be informative'
    assert len({r['coco/bbox_mAP'] for r in results.values()}) > 1
    assert '| subnet | sparsity | params | flops | coco/bbox_mAP' in stdout
    assert '| nm@2:4 | 0.500 |' in stdout


def test_each_subnet_alone_matches_the_all_run(trained, all_results):
    results, _ = all_results
    for name in NAMES:
        result, out = _test(trained, trained['sparse'], '--subnets', name,
                            name=name.replace(':', '_'))
        assert_ok(result)
        alone = json.loads(out.read_text())
        assert list(alone) == [name] and alone[name] == results[name], name


def test_dense_matches_plain_mmdetection(trained, all_results, tmp_path):
    """MMDetection's own Runner.test(), with no mmsparse hook, loop or allow-list, loading
    mmsparse's checkpoint (same dense weights; the mask buffers are unexpected keys)."""
    script = tmp_path / 'plain.py'
    script.write_text(textwrap.dedent(f'''
        import json, sys
        from mmengine.config import Config
        from mmengine.runner import Runner
        cfg = Config.fromfile('{trained['cfg']}')
        cfg.load_from = '{trained['sparse']}'
        cfg.work_dir = '{tmp_path / 'plain'}'
        metrics = Runner.from_cfg(cfg).test()
        assert 'mmsparse.core' not in sys.modules and 'mmsparse.engine' not in sys.modules
        print('METRICS' + json.dumps(metrics))
    '''))
    result = run_tool([script])
    assert_ok(result)
    plain = json.loads(result.stdout.split('METRICS')[-1])
    dense = all_results[0]['dense']
    assert {k: dense[k] for k in plain} == plain


def test_two_processes_give_the_same_numbers(trained, all_results):
    out = trained['root'] / 'dist.json'
    result = run_tool(['bash', 'tools/dist_test.sh', trained['cfg'], trained['sparse'], '2',
                       '--subnets', 'all', '--out', out, '--work-dir', trained['root'] / 'wd'],
                      env={'PORT': '29631'})
    assert_ok(result)
    assert json.loads(out.read_text()) == all_results[0]


def test_report_files_and_plot(all_results, trained):
    report = trained['root'] / 'report'
    table = (report / 'results.md').read_text()
    assert all(f'| {name} |' in table for name in NAMES)
    assert (report / 'results.csv').read_text().splitlines()[0].startswith('subnet,')
    image = matplotlib.image.imread(report / 'results.png')
    assert image.ndim == 3 and image.shape[0] > 300 and image.shape[1] > 600
    from mmsparse.evaluation.report import plot_results
    drawn = plot_results(all_results[0], trained['root'] / 'again.png')
    assert drawn == {m: ['dense', 'unstructured', 'channel', 'nm']
                     for m in ('coco/bbox_mAP', 'coco/segm_mAP')}


def test_stock_checkpoint_is_dense_only(trained):
    result, out = _test(trained, trained['dense'], '--subnets', 'all', name='stock')
    assert_ok(result)
    assert list(json.loads(out.read_text())) == ['dense']
    result, _ = _test(trained, trained['dense'], '--subnets', 'nm@2:4', name='stock_nm')
    assert result.returncode != 0
    assert 'holds no sparse subnets' in result.stderr and "only 'dense'" in result.stderr


def test_unknown_subnet_lists_the_valid_ones(trained):
    result, _ = _test(trained, trained['sparse'], '--subnets', 'channel@0.99', name='bad')
    assert result.returncode != 0
    assert ("unknown subnet 'channel@0.99'; the checkpoint holds: dense, "
            'unstructured@0.50, channel@0.25, nm@2:4') in result.stderr


def test_recalibrate_bn_changes_statistics_only_during_evaluation(trained, tmp_path):
    probe = tmp_path / 'probe.json'
    cfg = tmp_path / 'probe_cfg.py'
    cfg.write_text(f"_base_ = ['{trained['cfg']}']\n"
                   "custom_imports = dict(imports=['bn_probe_hook'])\n"
                   f"custom_hooks = [dict(type='BNProbeHook', out='{probe}')]\n")
    result = run_tool(['tools/test.py', cfg, trained['sparse'], '--work-dir', tmp_path / 'w',
                       '--subnets', 'dense,nm@2:4', '--recalibrate-bn', '2'])
    assert_ok(result)
    records = json.loads(probe.read_text())
    loaded = next(v for when, _, v in records if when == 'before_test')
    during = {active: v for when, active, v in records if when == 'iter'}
    after = records[-1]
    assert set(during) == {'dense', 'nm@2:4'}
    assert during['dense'] != loaded and during['nm@2:4'] != loaded
    assert during['nm@2:4'] != during['dense']  # each subnet gets its own statistics
    assert after[0] == 'after_test' and after[2] == loaded  # restored exactly


def test_show_dir_paints_each_subnet_into_its_own_folder(trained):
    work = trained['root'] / 'vis_work'
    result = run_tool(['tools/test.py', trained['cfg'], trained['sparse'], '--work-dir', work,
                       '--subnets', 'dense,nm@2:4', '--show-dir', 'painted'])
    assert_ok(result)
    for name in ('dense', 'nm@2:4'):
        painted = list(work.glob(f'*/painted/{name}/*.png'))
        assert len(painted) == 8, name  # the 8 evaluated images
