"""What the ONNX export refuses, and how it names the culprit."""
import pytest
import torch
from torch import nn

from onnx_fixtures import tiny_detector

from mmsparse.deploy import OnnxExportError, OrtDetector, export_onnx
from mmsparse.deploy.onnx_export import detector_kind, flatten_outputs, unflatten_outputs


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
