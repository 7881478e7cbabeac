"""Bad input across the tools: each case ends in an early error naming the culprit (file,
key, option) and leaves every input file as it was (hashed before and after).

The tools run in this process through their ``main(argv)`` where they allow it (no
interpreter start per case); one tiny random-init checkpoint set serves every case.
"""
import hashlib
import json
import math
import re

import pytest
import torch

from conftest import TINY_CONFIG, assert_ok, load_tool, run_tool
from mmsparse.core.subnets import SubnetNameError
from mmsparse.engine.sparse_checkpoint import CheckpointError
from mmsparse.utils.safe_write import OutputError

SUBNETS = ['unstructured@0.50', 'nm@2:4']


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope='module')
def ckpts(tmp_path_factory):
    """Random-init checkpoints of the tiny Mask R-CNN: plain, with two subnets' masks, in
    torch's legacy (non-zip) format, of another model (7 classes instead of 5), and a torn copy."""
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    from mmengine.config import Config

    import mmsparse.engine  # noqa: F401  (allow-lists mmengine checkpoint globals)
    from mmsparse.core import generate_masks
    from mmsparse.models import sparsify_detector
    root = tmp_path_factory.mktemp('bad_input')
    register_all_modules()
    torch.manual_seed(0)
    cfg = Config.fromfile(str(TINY_CONFIG))
    model = MODELS.build(cfg.model)
    meta = dict(dataset_meta=dict(classes=('circle', 'square', 'triangle', 'star', 'cross')))
    torch.save(dict(meta=meta, state_dict=model.state_dict()), root / 'plain.pth')
    torch.save(dict(meta=meta, state_dict=model.state_dict()), root / 'legacy.pth',
               _use_new_zipfile_serialization=False)
    cfg.model.roi_head.bbox_head.num_classes = 7
    cfg.model.roi_head.mask_head.num_classes = 7
    torch.save(dict(meta={}, state_dict=MODELS.build(cfg.model).state_dict()), root / 'other.pth')
    generate_masks(sparsify_detector(model), SUBNETS)
    torch.save(dict(meta=meta, state_dict=model.state_dict()), root / 'sparse.pth')
    torch.save(dict(meta=meta, state_dict=model.state_dict()), root / 'legacy_sparse.pth',
               _use_new_zipfile_serialization=False)
    raw = (root / 'sparse.pth').read_bytes()
    (root / 'torn.pth').write_bytes(raw[:len(raw) // 2])
    (root / 'config.py').write_text(f"_base_ = ['{TINY_CONFIG}']\n")
    return root


@pytest.fixture
def unchanged(ckpts):
    """Asserts, after the test, that no file of the checkpoint set changed."""
    before = {p.name: _digest(p) for p in ckpts.iterdir() if p.is_file()}
    yield
    assert {p.name: _digest(p) for p in ckpts.iterdir() if p.is_file()
            if p.name in before} == before


def _tool(name):
    return load_tool(f'tools/{name}')


# -- never overwrite an input, nor an existing file without --force -------------------------
def test_export_refuses_its_input_checkpoint_even_with_force(ckpts, unchanged):
    sparse = str(ckpts / 'sparse.pth')
    for extra in ([], ['--force']):
        with pytest.raises(OutputError, match=f"--out: '{sparse}' is an input of this run"):
            _tool('export_subnet.py').main([str(ckpts / 'config.py'), sparse, '--subnet',
                                            'nm@2:4', '--out', sparse, *extra])


def test_export_refuses_to_overwrite_a_config_beside_the_output(ckpts, unchanged, tmp_path):
    mine = tmp_path / 'mycfg.py'
    mine.write_text('# the user\'s own config\n')
    before = _digest(mine)
    args = [str(ckpts / 'config.py'), str(ckpts / 'sparse.pth'), '--subnet', 'nm@2:4',
            '--out', str(tmp_path / 'mycfg.pth')]
    with pytest.raises(OutputError, match=f"'{mine}' already exists; .* pass --force"):
        _tool('export_subnet.py').main(args)
    assert _digest(mine) == before and not (tmp_path / 'mycfg.pth').exists()
    # The config the tool reads sits where `--out config.pth` would write its .py.
    with pytest.raises(OutputError, match='is an input of this run'):
        _tool('export_subnet.py').main([*args[:4], '--out', str(ckpts / 'config.pth'),
                                        '--force'])
    _tool('export_subnet.py').main([*args, '--force'])  # explicit: replaced, atomically
    assert 'Exported by mmsparse' in mine.read_text()
    assert torch.load(tmp_path / 'mycfg.pth', weights_only=True)['meta']['mmsparse'][
        'subnet'] == 'nm@2:4'
    assert sorted(p.name for p in tmp_path.iterdir()) == ['mycfg.pth', 'mycfg.py']  # no temp


def test_other_tools_refuse_inputs_and_existing_outputs(ckpts, unchanged, tmp_path):
    cfg, sparse = str(ckpts / 'config.py'), str(ckpts / 'sparse.pth')
    with pytest.raises(OutputError, match=f"'{sparse}' is an input"):
        _tool('misc/store_bn_stats.py').main([cfg, sparse, '--out', sparse, '--force'])
    plain = str(ckpts / 'plain.pth')
    with pytest.raises(OutputError, match=f"'{plain}' is an input"):
        _tool('misc/attach_masks.py').main([cfg, plain, '--subnets', 'nm@2:4', '--out', plain,
                                            '--force'])
    existing = tmp_path / 'out.pth'
    existing.write_bytes(b'keep me')
    with pytest.raises(OutputError, match=f"'{existing}' already exists"):
        _tool('misc/attach_masks.py').main([cfg, str(ckpts / 'plain.pth'), '--out',
                                            str(existing)])
    assert existing.read_bytes() == b'keep me'
    stages = tmp_path / 'run'
    stages.mkdir()
    (stages / 'stage_1.pth').write_bytes((ckpts / 'sparse.pth').read_bytes())
    with pytest.raises(OutputError, match='stage_1.pth.* is an input'):
        _tool('analysis_tools/interpolate_stages.py').main(
            [cfg, str(stages), '--out', str(stages / 'stage_1.pth'), '--force'])
    (tmp_path / 'ms/stage_1').mkdir(parents=True)
    (tmp_path / 'ms/stage_1/stage_config.py').write_text('# a finished run\n')
    with pytest.raises(OutputError, match="--work-dir: .*stage_config.py' already exists"):
        _tool('cocktail_multistage.py').main([cfg, '--work-dir', str(tmp_path / 'ms')])
    bench = tmp_path / 'bench'
    bench.mkdir()
    (bench / 'benchmark.json').write_text('{}')
    with pytest.raises(OutputError, match="--out-dir: .*benchmark.json' already exists"):
        _tool('analysis_tools/benchmark_subnets.py').main([cfg, sparse, '--out-dir', str(bench)])


def test_test_tool_refuses_existing_results_before_evaluating(ckpts, unchanged, tmp_path):
    results = tmp_path / 'results.json'
    results.write_text('{"dense": {}}')
    report = tmp_path / 'report'
    report.mkdir()
    (report / 'results.csv').write_text('mine')
    base = [str(ckpts / 'config.py'), str(ckpts / 'sparse.pth'), '--work-dir',
            str(tmp_path / 'work')]
    with pytest.raises(OutputError, match=f"--out: '{results}' already exists"):
        _tool('test.py').main([*base, '--out', str(results)])
    with pytest.raises(OutputError, match="--report: .*results.csv' already exists"):
        _tool('test.py').main([*base, '--report', str(report)])
    assert results.read_text() == '{"dense": {}}' and not (tmp_path / 'work').exists()


# -- checkpoints: another model, torn files, the legacy format ------------------------------
def test_a_checkpoint_of_another_model_is_refused(ckpts, unchanged, tmp_path, tiny_data):
    cfg, other = str(ckpts / 'config.py'), str(ckpts / 'other.pth')
    fit = (f"checkpoint '{other}' does not fit the config's model: \\d+ with another shape "
           r'\(e.g. roi_head.bbox_head.fc_cls.weight: checkpoint \(8, 32\), model \(6, 32\)')
    with pytest.raises(CheckpointError, match=fit):
        _tool('misc/attach_masks.py').main([cfg, other, '--subnets', 'nm@2:4', '--out',
                                            str(tmp_path / 'masked.pth')])
    assert not (tmp_path / 'masked.pth').exists()
    with pytest.raises(CheckpointError, match=fit):
        _tool('test.py').main([cfg, other, '--work-dir', str(tmp_path / 'work')])
    assert not list((tmp_path / 'work').rglob('*.json'))  # nothing was evaluated


def test_a_torn_checkpoint_is_named(ckpts, unchanged, tmp_path):
    cfg, torn = str(ckpts / 'config.py'), str(ckpts / 'torn.pth')
    message = f"cannot read checkpoint '{torn}' .*truncated"
    for tool, extra in (('test.py', ['--work-dir', str(tmp_path / 'w')]),
                        ('export_subnet.py', ['--subnet', 'dense', '--out',
                                              str(tmp_path / 'x.pth')]),
                        ('misc/attach_masks.py', ['--out', str(tmp_path / 'y.pth')]),
                        ('misc/store_bn_stats.py', ['--out', str(tmp_path / 'z.pth')])):
        with pytest.raises(CheckpointError, match=message):
            _tool(tool).main([cfg, torn, *extra])
    assert list(tmp_path.iterdir()) == []


def test_legacy_format_checkpoints_load_in_the_sparse_paths(ckpts, unchanged, tmp_path,
                                                             tiny_data):
    cfg = str(ckpts / 'config.py')
    out = tmp_path / 'masked.pth'
    _tool('misc/attach_masks.py').main([cfg, str(ckpts / 'legacy.pth'), '--subnets',
                                        'nm@2:4', '--out', str(out)])
    state = torch.load(out, weights_only=True)['state_dict']
    plain = torch.load(ckpts / 'plain.pth', weights_only=True)['state_dict']
    key = 'backbone.layer1.0.conv1.weight'
    assert torch.equal(state[key], plain[key]) and state[key.replace(
        'weight', 'mask_nm_nm')].tolist() == [[2, 4]]
    results = tmp_path / 'results.json'
    result = run_tool(['tools/test.py', cfg, ckpts / 'legacy_sparse.pth', '--subnet',
                       'nm@2:4', '--work-dir', tmp_path / 'work', '--out', results])
    assert_ok(result)
    assert list(json.loads(results.read_text())) == ['nm@2:4']


# -- options ---------------------------------------------------------------------------------
def test_empty_subnet_lists_are_errors_listing_the_valid_names(ckpts, unchanged, tmp_path,
                                                               capsys):
    cfg, sparse = str(ckpts / 'config.py'), str(ckpts / 'sparse.pth')
    with pytest.raises(SubnetNameError, match="--subnets '' names no subnet; pass 'all' or "
                       'names the checkpoint holds: dense, unstructured@0.50, nm@2:4'):
        _tool('test.py').main([cfg, sparse, '--subnets', '', '--work-dir', str(tmp_path)])
    with pytest.raises(SubnetNameError, match="--subnet ' , ' names no subnet"):
        _tool('export_subnet.py').main([cfg, sparse, '--subnet', ' , ', '--out',
                                        str(tmp_path / 'x.pth')])
    with pytest.raises(SubnetNameError, match="--subnets '' names no subnet"):
        _tool('misc/attach_masks.py').main([cfg, sparse, '--subnets', '', '--out',
                                            str(tmp_path / 'y.pth')])
    with pytest.raises(SystemExit):
        _tool('analysis_tools/benchmark_subnets.py').parse_args([cfg, sparse, '--subnets', ''])
    assert "--subnets '' names no subnet" in capsys.readouterr().err


def test_subnet_and_subnets_are_one_option_everywhere(ckpts):
    cfg, sparse = str(ckpts / 'config.py'), str(ckpts / 'sparse.pth')
    for tool, attr, extra in (('test.py', 'subnets', []),
                              ('export_subnet.py', 'subnet', ['--out', 'x.pth']),
                              ('misc/attach_masks.py', 'subnets', ['--out', 'x.pth']),
                              ('analysis_tools/benchmark_subnets.py', 'subnets', [])):
        for flag in ('--subnet', '--subnets'):
            args = _tool(tool).parse_args([cfg, sparse, flag, 'nm@2:4', *extra])
            assert getattr(args, attr) == 'nm@2:4', (tool, flag)


@pytest.mark.skipif(torch.cuda.is_available(), reason='checks the CPU-only message')
def test_amp_on_a_cpu_only_machine_says_it_needs_cuda(ckpts, tmp_path, tiny_data):
    with pytest.raises(RuntimeError, match='--amp: automatic mixed precision needs a CUDA GPU'):
        _tool('train.py').main([str(ckpts / 'config.py'), '--amp', '--work-dir',
                                str(tmp_path)])


def test_resume_with_an_empty_or_stale_last_checkpoint(ckpts, tmp_path, tiny_data):
    pointer = tmp_path / 'last_checkpoint'
    pointer.write_text('')
    args = [str(ckpts / 'config.py'), '--resume', '--work-dir', str(tmp_path)]
    with pytest.raises(RuntimeError, match=f"--resume: '{pointer}' is empty"):
        _tool('train.py').main(args)
    pointer.write_text(str(tmp_path / 'iter_9.pth'))
    with pytest.raises(FileNotFoundError, match='iter_9.pth.*does not exist; pass --resume'):
        _tool('train.py').main(args)
    pointer.write_text(str(ckpts / 'torn.pth'))
    with pytest.raises(CheckpointError, match='torn.pth.*truncated'):
        _tool('train.py').main(args)


# -- select_subnet: malformed results ---------------------------------------------------------
ROW = {'coco/bbox_mAP': 0.3, 'params': 10, 'flops': 100}


@pytest.mark.parametrize('content, message', [
    ([ROW], 'expected a JSON object .* got a list'),
    ({'dense': 0.3}, "subnet 'dense' holds a number 0.3, expected an object of metrics"),
    ({'dense': None}, "subnet 'dense' holds null"),
    (None, 'got null'),
    ({'dense': 'good'}, "subnet 'dense' holds a string"),
    ({'dense': dict(ROW, **{'coco/bbox_mAP': '0.3'})}, "'dense': coco/bbox_mAP is '0.3', not a"),
    ({'sparse@0.5': ROW}, "key 'sparse@0.5' is not a subnet name"),
    ({'channel@0.5': ROW, 'channel@0.50': ROW},
     "keys 'channel@0.5' and 'channel@0.50' both name subnet channel@0.50"),
])
def test_select_subnet_names_the_file_and_key(tmp_path, capsys, content, message):
    results = tmp_path / 'results.json'
    results.write_text(json.dumps(content))
    before = _digest(results)
    assert _tool('select_subnet.py').main([str(results)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f'select_subnet: {results}: ') and 'Traceback' not in err
    assert re.search(message, err), err
    assert _digest(results) == before


def test_select_subnet_never_picks_nan_and_reports_silent_subnets(tmp_path, capsys):
    results = tmp_path / 'results.json'
    # json writes NaN as the bare token NaN, which json.load reads back as float('nan')
    results.write_text(json.dumps({
        'dense': dict(ROW, **{'coco/bbox_mAP': math.nan}),
        'nm@2:4': dict(ROW, **{'coco/bbox_mAP': 0.2}),
        'unstructured@0.90': {'sparsity': 0.9, 'params': 1, 'flops': 10}}))  # no detections
    choice = tmp_path / 'choice.json'
    assert _tool('select_subnet.py').main([str(results), '--json', str(choice)]) == 0
    out = capsys.readouterr().out
    assert out.startswith('chosen: nm@2:4 (coco/bbox_mAP = 0.2000), the best of 1 fitting '
                          'subnet(s) out of 3')
    assert ('not considered, no usable coco/bbox_mAP: 2 (dense: coco/bbox_mAP is NaN, '
            'unstructured@0.90: no coco/bbox_mAP (no detections?))') in out
    assert json.loads(choice.read_text())['unscored'] == {
        'dense': 'coco/bbox_mAP is NaN', 'unstructured@0.90': 'no coco/bbox_mAP (no '
        'detections?)'}
    before = _digest(results)
    assert _tool('select_subnet.py').main([str(results), '--json', str(results)]) == 1
    assert f"--json: '{results}' is an input of this run" in capsys.readouterr().err
    assert _digest(results) == before
