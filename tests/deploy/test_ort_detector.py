"""Exported graphs run in ONNX Runtime give PyTorch's features and detections: dense, a
channel subnet and nm@2:4 of the tiny Mask R-CNN, and a tiny RetinaNet."""
import pytest
import torch

from mmsparse.core import parse_subnet
from mmsparse.deploy import OrtDetector, compare_with_torch, export_onnx
from mmsparse.deploy.subnet_model import default_shape, subnet_models

from .onnx_helpers import FEATURE_TOL, assert_same_detections, tiny_detector


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


def test_keep_ratio_default_shape_fits_portrait_images(tmp_path):
    """With keep_ratio a portrait image is resized to the scale's long side in height: the
    default shape is a square of that side (here 96 x 96), so both orientations run."""
    from mmdet.structures import DetDataSample
    from mmengine.config import Config
    model = tiny_detector()  # pad_size_divisor 32
    resize = dict(type='Resize', scale=(96, 40), keep_ratio=True)  # MMDetection's (w, h)
    cfg = Config(dict(test_dataloader=dict(dataset=dict(pipeline=[resize]))))
    assert default_shape(cfg, model) == (96, 96)
    resize['keep_ratio'] = False
    cfg = Config(dict(test_dataloader=dict(dataset=dict(pipeline=[resize]))))
    assert default_shape(cfg, model) == (64, 96)  # h 40 padded to 64, w 96

    export_onnx(model, str(tmp_path), (96, 96), dynamo=False)
    torch.manual_seed(1)
    inputs = torch.randn(1, 3, 96, 64)  # a 96 x 40 portrait image, padded to the divisor
    meta = dict(img_shape=(96, 40), ori_shape=(96, 40), scale_factor=(1.0, 1.0),
                batch_input_shape=(96, 64), pad_shape=(96, 64))
    samples = [DetDataSample(metainfo=meta)]
    with torch.no_grad():
        expected = model.predict(torch.nn.functional.pad(inputs, (0, 32)),
                                 [s.clone() for s in samples])
    got = OrtDetector(model, str(tmp_path)).predict(inputs, [s.clone() for s in samples])
    assert_same_detections(expected, got)


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
