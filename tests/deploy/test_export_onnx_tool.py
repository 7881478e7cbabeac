"""tools/deploy/export_onnx.py: subnets of a sparse checkpoint and plain models become ONNX
folders that OrtDetector runs; bad requests fail early and name the culprit; nothing is
overwritten without --force, an input never."""
import json

import onnx_fixtures

from conftest import assert_ok, run_tool

sparse_tiny, tiny_batches = onnx_fixtures.sparse_tiny, onnx_fixtures.tiny_batches
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
