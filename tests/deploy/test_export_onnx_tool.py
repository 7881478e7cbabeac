"""tools/deploy/export_onnx.py: subnets of a sparse checkpoint and plain models become ONNX
folders that OrtDetector runs; bad requests fail early and name the culprit; nothing is
overwritten without --force, an input never."""
import json

import torch

from conftest import assert_ok, run_tool

from .onnx_helpers import assert_same_detections

TOOL = 'tools/deploy/export_onnx.py'


def test_subnets_export_and_run(sparse_tiny, tiny_batches, tmp_path):
    out = tmp_path / 'onnx'
    result = run_tool([TOOL, sparse_tiny['cfg'], sparse_tiny['sparse'], '--subnet',
                       'dense,channel@0.25', '--out', out])  # default: the dynamo exporter
    assert_ok(result)
    assert 'ONNX Runtime vs PyTorch, max abs diff: features' in result.stdout
    for name in ('dense', 'channel@0.25'):
        manifest = json.loads((out / name / 'manifest.json').read_text())
        assert manifest['subnet'] == name and manifest['exporter'] == 'dynamo'
        # the test pipeline's 64 x 64 resize, already a multiple of the pad divisor
        assert manifest['graphs']['features']['input_shape'] == [1, 3, 64, 64]
        assert all(d['relative'] < 1e-4 for d in manifest['check'].values())
        assert {p.name for p in (out / name).iterdir()} == {
            'features.onnx', 'bbox_head.onnx', 'mask_head.onnx', 'config.py', 'manifest.json'}

    assert '2/2' in result.stdout  # the progress bar

    # the folder alone runs: its config.py builds the post-processing model
    from mmsparse.deploy import OrtDetector
    ort = OrtDetector.from_dir(str(out / 'channel@0.25'), threads=1)
    data = ort.model.data_preprocessor(tiny_batches[0], False)
    samples = ort.predict(data['inputs'], data['data_samples'])
    assert all(len(s.pred_instances) > 0 for s in samples)


def test_plain_model(sparse_tiny, tmp_path):
    out = tmp_path / 'plain'
    result = run_tool([TOOL, sparse_tiny['cfg'], sparse_tiny['dense'], '--out', out,
                       '--shape', '96', '128', '--legacy-exporter'])
    assert_ok(result)
    manifest = json.loads((out / 'manifest.json').read_text())
    assert manifest['subnet'] is None and manifest['exporter'] == 'torchscript'
    assert manifest['graphs']['features']['input_shape'] == [1, 3, 96, 128]


def test_unknown_subnet(sparse_tiny, tmp_path):
    result = run_tool([TOOL, sparse_tiny['cfg'], sparse_tiny['sparse'], '--subnet', 'nm@1:4',
                       '--out', tmp_path / 'x'])
    assert result.returncode != 0
    assert ("unknown subnet 'nm@1:4'; this model holds: dense, channel@0.25, nm@2:4"
            in result.stderr)
    assert not (tmp_path / 'x' / 'features.onnx').exists()


def test_never_overwrites(sparse_tiny, tmp_path):
    out = tmp_path / 'onnx'
    out.mkdir()
    (out / 'features.onnx').write_text('keep me')
    result = run_tool([TOOL, sparse_tiny['cfg'], sparse_tiny['dense'], '--out', out])
    assert result.returncode != 0
    assert 'already exists' in result.stderr and '--force' in result.stderr
    assert (out / 'features.onnx').read_text() == 'keep me'
    # an input inside the output folder is refused even with --force
    config = out / 'config.py'
    config.write_text(sparse_tiny['cfg'].read_text().replace(
        "'./mask-rcnn", f"'{sparse_tiny['cfg'].parent}/mask-rcnn"))
    result = run_tool([TOOL, config, sparse_tiny['dense'], '--out', out, '--force'])
    assert result.returncode != 0 and 'is an input of this run' in result.stderr
    assert (out / 'features.onnx').read_text() == 'keep me'


def test_failed_check_leaves_nothing(sparse_tiny, tmp_path):
    """A graph beyond --tolerance is written to a temporary folder only: the target gets no
    manifest (a new one is not created, an existing export stays as it was with --force)."""
    out = tmp_path / 'onnx'
    args = [TOOL, sparse_tiny['cfg'], sparse_tiny['dense'], '--out', out, '--legacy-exporter',
            '--tolerance=-1']  # every difference, even 0, is beyond it
    result = run_tool(args)
    assert result.returncode != 0 and 'beyond --tolerance -1.0' in result.stderr
    assert not out.exists() and list(tmp_path.iterdir()) == []  # no temporary folder left
    out.mkdir()
    for name in ('features.onnx', 'manifest.json', 'mask_head.onnx'):
        (out / name).write_text(f'old {name}')
    result = run_tool(args + ['--force'])
    assert result.returncode != 0 and 'beyond --tolerance' in result.stderr
    assert {p.name: p.read_text() for p in out.iterdir()} == {
        n: f'old {n}' for n in ('features.onnx', 'manifest.json', 'mask_head.onnx')}
    assert [p.name for p in tmp_path.iterdir()] == ['onnx']


def test_exported_channel_subnet(sparse_tiny, tiny_batches, tmp_path):
    """The documented path: tools/export_subnet.py writes a slimmed channel subnet (weights +
    a mmsparse.SlimmedDetector config), this tool exports those, and the folder alone gives
    the slimmed PyTorch model's detections. The training config with those weights is
    refused, naming the keys."""
    from mmengine.config import Config

    from mmsparse.deploy import OrtDetector
    from mmsparse.deploy.subnet_model import plain_model
    weights = tmp_path / 'c25.pth'
    assert_ok(run_tool(['tools/export_subnet.py', sparse_tiny['cfg'], sparse_tiny['sparse'],
                        '--subnet', 'channel@0.25', '--out', weights]))
    config = tmp_path / 'c25.py'
    assert "type='mmsparse.SlimmedDetector'" in config.read_text()
    out = tmp_path / 'onnx'
    result = run_tool([TOOL, config, weights, '--out', out])
    assert_ok(result)
    assert f"run: OrtDetector.from_dir('{out}')" in result.stdout

    torch_model = plain_model(Config.fromfile(str(config)), str(weights))
    ort = OrtDetector.from_dir(str(out), threads=1)
    for data in tiny_batches:
        data = torch_model.data_preprocessor(data, False)
        with torch.no_grad():
            expected = torch_model.predict(data['inputs'],
                                           [s.clone() for s in data['data_samples']])
        assert_same_detections(expected, ort.predict(
            data['inputs'], [s.clone() for s in data['data_samples']]))

    result = run_tool([TOOL, sparse_tiny['cfg'], weights, '--out', tmp_path / 'wrong'])
    assert result.returncode != 0
    assert 'c25.pth' in result.stderr and 'with another shape (e.g. backbone.' in result.stderr
    assert not (tmp_path / 'wrong').exists()


def test_pickled_module_message(sparse_tiny, tmp_path):
    """A pickled slimmed module's config has no model entry: the tool says to pass the
    module to OrtDetector, not to use from_dir."""
    weights = tmp_path / 'c25.pth'
    assert_ok(run_tool(['tools/export_subnet.py', sparse_tiny['cfg'], sparse_tiny['sparse'],
                        '--subnet', 'channel@0.25', '--pickle-module', '--out', weights]))
    result = run_tool([TOOL, tmp_path / 'c25.py', weights, '--out', tmp_path / 'onnx',
                       '--legacy-exporter'])
    assert_ok(result)
    assert 'from_dir' not in result.stdout
    assert (f"run: OrtDetector(model, '{tmp_path / 'onnx'}').predict(inputs, data_samples) "
            f'with the pickled module of {weights} as model' in result.stdout)
