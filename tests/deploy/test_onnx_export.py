"""What the ONNX export refuses, and how it names the culprit."""
import pytest
import torch
from torch import nn

from mmsparse.core import parse_subnet
from mmsparse.core.export.deploy import ExportError
from mmsparse.deploy import OnnxExportError, OrtDetector, export_onnx
from mmsparse.deploy.onnx_export import detector_kind, flatten_outputs, unflatten_outputs
from mmsparse.deploy.subnet_model import plain_model, subnet_models

from .onnx_helpers import tiny_detector


def test_unsupported_detectors_are_named():
    with pytest.raises(OnnxExportError, match='Linear is neither a single-stage'):
        detector_kind(nn.Linear(2, 2))
    model = tiny_detector()
    model.roi_head.add_module('mask_iou_head', nn.Identity())  # e.g. MaskScoringRoIHead's
    with pytest.raises(OnnxExportError, match='roi_head .*does not cover: mask_iou_head'):
        detector_kind(model)


def test_export_failure_names_the_graph(tmp_path):
    model = tiny_detector()

    def not_exportable(x):  # matrix inverse: no ONNX operator
        return torch.linalg.inv(x[..., :4, :4])
    model.roi_head.mask_head.forward = not_exportable
    with pytest.raises(OnnxExportError, match=r"'mask_head.onnx' \(roi_head.mask_head "
                       r'FCNMaskHead\) failed'):
        export_onnx(model, str(tmp_path), (64, 64), dynamo=False)
    assert not (tmp_path / 'mask_head.onnx').exists()  # no partial file left


def test_flatten_roundtrip():
    a, b, c = torch.zeros(1), torch.ones(2), torch.full((3,), 2.0)
    flat, structure = flatten_outputs(([a, b], c, (b,)))
    assert structure == [2, -1, 1] and len(flat) == 4
    outs = unflatten_outputs(flat, structure)
    assert outs[0] == [a, b] and outs[1] is c and outs[2] == [b]


def test_model_must_match_the_export(tmp_path):
    model = tiny_detector()
    export_onnx(model, str(tmp_path), (64, 64), dynamo=False)
    model.roi_head.mask_head = None  # a box-only model cannot run a mask export
    with pytest.raises(ValueError, match='mask head exported: True'):
        OrtDetector(model, str(tmp_path))
    with pytest.raises(FileNotFoundError, match='holds no manifest.json'):
        OrtDetector(model, str(tmp_path / 'nothing'))


def test_plain_model_loads_strictly(sparse_tiny, tmp_path):
    """The training config with a slimmed subnet's weights (or any other model's) is an
    error naming the mismatched keys, not an export of random weights."""
    from mmengine.config import Config
    cfg = Config.fromfile(str(sparse_tiny['cfg']))
    (_, slim), = subnet_models(cfg, str(sparse_tiny['sparse']), [parse_subnet('channel@0.25')])
    path = tmp_path / 'slim.pth'
    torch.save(dict(meta={}, state_dict=slim.state_dict()), path)
    with pytest.raises(ExportError, match=r"slim.pth' does not fit .*with another shape "
                       r'\(e\.g\. backbone\..*config it wrote beside the weights'):
        plain_model(cfg, str(path))
    state = tiny_detector().state_dict()
    del state['roi_head.mask_head.conv_logits.weight']
    torch.save(dict(meta={}, state_dict=state), path)
    with pytest.raises(ExportError, match=r'1 of \d+ weights missing \(e\.g\. '
                       r'roi_head\.mask_head\.conv_logits\.weight\)'):
        plain_model(cfg, str(path))
    assert isinstance(plain_model(cfg, str(sparse_tiny['dense'])), torch.nn.Module)
