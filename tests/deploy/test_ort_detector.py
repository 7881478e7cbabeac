"""Exported graphs run in ONNX Runtime give PyTorch's features and detections: dense, a
channel subnet and nm@2:4 of the tiny Mask R-CNN, and a tiny RetinaNet."""
import pytest
import torch

import onnx_fixtures
from onnx_fixtures import tiny_detector

from mmsparse.core import parse_subnet
from mmsparse.deploy import OrtDetector, compare_with_torch, export_onnx
from mmsparse.deploy.subnet_model import subnet_models

sparse_tiny, tiny_batches = onnx_fixtures.sparse_tiny, onnx_fixtures.tiny_batches
# float32 graphs: ONNX Runtime and PyTorch order sums differently, nothing more.
FEATURE_TOL = 1e-4  # max abs diff / max(1, largest |output|), per graph
BOX_TOL = 1e-3  # pixels


def assert_same_detections(expected, got):
    """Same detections: count, labels, scores and boxes within float32 noise; masks agree
    on all but a few thresholded pixels."""
    for e, g in zip(expected, got):
        e, g = e.pred_instances, g.pred_instances
        assert len(e) == len(g) > 0
        assert torch.equal(e.labels, g.labels)
        torch.testing.assert_close(g.scores, e.scores, atol=1e-5, rtol=0)
        torch.testing.assert_close(g.bboxes, e.bboxes, atol=BOX_TOL, rtol=0)
        if 'masks' in e:
            assert (e.masks != g.masks).float().mean() < 1e-3


@pytest.mark.parametrize('checkpoint,subnet', [
    ('sparse', 'dense'), ('sparse', 'channel@0.25'), ('sparse', 'nm@2:4'),
    ('groups', 'channel@0.5')])  # channel groups: the FPN and RoI features narrow too
def test_subnet_matches_torch(checkpoint, subnet, sparse_tiny, tiny_batches, tmp_path):
    from mmengine.config import Config
    cfg = Config.fromfile(str(sparse_tiny['cfg']))
    (_, model), = subnet_models(cfg, str(sparse_tiny[checkpoint]), [parse_subnet(subnet)])
    manifest = export_onnx(model, str(tmp_path), (64, 64), dynamo=False)
    assert set(manifest['graphs']) == {'features', 'bbox_head', 'mask_head'}
    for graph, diff in compare_with_torch(model, str(tmp_path)).items():
        assert diff['relative'] < FEATURE_TOL, (graph, diff)
    # The post-processing model is the unslimmed one the config builds (other weights):
    # the graphs alone decide the detections.
    ort = OrtDetector(tiny_detector(seed=1), str(tmp_path))
    for data in tiny_batches:
        data = model.data_preprocessor(data, False)
        with torch.no_grad():
            expected = model.predict(data['inputs'], [s.clone() for s in data['data_samples']])
        got = ort.predict(data['inputs'], [s.clone() for s in data['data_samples']])
        assert_same_detections(expected, got)
    timings = ort.last_timings
    assert {'features', 'bbox_head', 'mask_head', 'ort', 'total'} <= set(timings)
    assert 0 < timings['ort'] < timings['total']


def test_smaller_input_is_padded_larger_refused(tiny_batches, tmp_path):
    model = tiny_detector()
    export_onnx(model, str(tmp_path), (96, 96), dynamo=False)
    ort = OrtDetector(model, str(tmp_path))
    data = model.data_preprocessor(tiny_batches[0], False)
    inputs = data['inputs']  # 64 x 64: padded to 96 x 96, as a batch with a larger image
    with torch.no_grad():
        expected = model.predict(torch.nn.functional.pad(inputs, (0, 32, 0, 32)),
                                 [s.clone() for s in data['data_samples']])
    assert_same_detections(expected, ort.predict(inputs, data['data_samples']))
    with pytest.raises(ValueError, match=r'larger than the exported 96x96.*--shape 128 128'):
        ort.predict(torch.zeros(1, 3, 128, 128), data['data_samples'][:1])


def test_dynamo_exporter(tiny_batches, tmp_path):
    model = tiny_detector()
    manifest = export_onnx(model, str(tmp_path), (64, 64), dynamo=True)
    assert manifest['exporter'] == 'dynamo'
    for graph, diff in compare_with_torch(model, str(tmp_path)).items():
        assert diff['relative'] < FEATURE_TOL, (graph, diff)
    data = model.data_preprocessor(tiny_batches[0], False)
    with torch.no_grad():
        expected = model.predict(data['inputs'], [s.clone() for s in data['data_samples']])
    got = OrtDetector(model, str(tmp_path)).predict(data['inputs'], data['data_samples'])
    assert_same_detections(expected, got)


def tiny_retinanet(tmp_path):
    from mmdet.registry import MODELS
    from mmengine.config import Config
    tiny_detector()  # registers mmdet's modules
    path = tmp_path / 'retinanet.py'
    path.write_text("_base_ = ['mmdet::_base_/models/retinanet_r50_fpn.py']\n")
    cfg = Config.fromfile(str(path)).model
    cfg.backbone.update(depth=18, base_channels=16, init_cfg=None)
    cfg.neck.update(in_channels=[16, 32, 64, 128], out_channels=16)
    cfg.bbox_head.update(num_classes=5, in_channels=16, feat_channels=16, stacked_convs=1)
    torch.manual_seed(0)
    return MODELS.build(cfg).eval()


def test_single_stage(tmp_path):
    from mmdet.structures import DetDataSample
    model = tiny_retinanet(tmp_path)
    manifest = export_onnx(model, str(tmp_path), (64, 64), dynamo=False)
    assert manifest['kind'] == 'single_stage' and list(manifest['graphs']) == ['features']
    for graph, diff in compare_with_torch(model, str(tmp_path)).items():
        assert diff['relative'] < FEATURE_TOL, (graph, diff)
    torch.manual_seed(1)
    inputs = torch.randn(2, 3, 64, 64)
    meta = dict(img_shape=(64, 64), ori_shape=(64, 64), scale_factor=(1.0, 1.0),
                batch_input_shape=(64, 64), pad_shape=(64, 64))
    samples = [DetDataSample(metainfo=meta) for _ in range(2)]
    with torch.no_grad():
        expected = model.predict(inputs, [s.clone() for s in samples])
    ort = OrtDetector(model, str(tmp_path))
    assert_same_detections(expected, ort.predict(inputs, samples))
    assert set(ort.last_timings) == {'features', 'ort', 'total'}
