"""Export the tensor parts of an MMDetection detector to ONNX.

A detector's ``predict`` mixes dense tensor code (backbone, neck, head convolutions, RoI
head FCs) with data-dependent code (anchor decoding, NMS, RoIAlign, mask pasting). Only the
former is exported, as separate graphs; :class:`~mmsparse.deploy.ort_detector.OrtDetector`
runs them in ONNX Runtime and keeps MMDetection's own PyTorch code for the rest, so the
results are MMDetection's ``DetDataSample`` objects and need no custom ONNX operators.

Graphs (one ``.onnx`` file each, listed in ``manifest.json``):

* ``features``: the preprocessed image ``(1, 3, H, W)`` (fixed size) -> backbone -> neck ->
  the dense head's ``forward`` (``rpn_head`` of a two-stage detector, ``bbox_head`` of a
  single-stage one). Outputs: the neck's levels (two-stage only: the RoI heads need them),
  then the head's outputs flattened (their nesting is recorded as ``head_structure``);
* ``bbox_head`` (two-stage): RoI features ``(num_rois, C, h, w)`` -> ``(cls_score,
  bbox_pred)``, ``num_rois`` dynamic;
* ``mask_head`` (two-stage with masks): RoI features -> mask logits, ``num_rois`` dynamic.
"""
import json
import os.path as osp

import torch
from torch import nn

from mmdet.models.detectors import SingleStageDetector, TwoStageDetector
from mmdet.models.roi_heads import StandardRoIHead

from mmsparse.utils.safe_write import atomic_path, atomic_write_json

MANIFEST = 'manifest.json'
FORMAT_VERSION = 1
OPSET = 18
# Children of a StandardRoIHead whose forward the exported graphs cover; any other child
# (shared head, mask IoU head, grid head, ...) would be silently skipped, so it is refused.
_ROI_CHILDREN = {'bbox_roi_extractor', 'bbox_head', 'mask_roi_extractor', 'mask_head'}


class OnnxExportError(RuntimeError):
    """A detector part that cannot be exported; the message names the part."""


def detector_kind(model):
    """``'two_stage'`` or ``'single_stage'``; raises OnnxExportError naming what is not
    supported (other detector types, RoI heads with parts the graphs would not cover)."""
    name = type(model).__name__
    if isinstance(model, TwoStageDetector):
        roi_head = getattr(model, 'roi_head', None)
        if not getattr(model, 'with_rpn', False) or roi_head is None:
            raise OnnxExportError(f'{name}: a two-stage detector without rpn_head and '
                                  'roi_head cannot be exported (proposals from files are not '
                                  'supported)')
        if not isinstance(roi_head, StandardRoIHead):
            raise OnnxExportError(
                f'{name}.roi_head is {type(roi_head).__name__}; only StandardRoIHead-like '
                'RoI heads (one bbox_head, optional mask_head) are supported')
        extra = sorted(n for n, _ in roi_head.named_children() if n not in _ROI_CHILDREN)
        if extra:
            raise OnnxExportError(f'{name}.roi_head ({type(roi_head).__name__}) has parts '
                                  f'the ONNX export does not cover: {", ".join(extra)}')
        return 'two_stage'
    if isinstance(model, SingleStageDetector) and hasattr(model, 'bbox_head'):
        return 'single_stage'
    raise OnnxExportError(f'{name} is neither a single-stage (SingleStageDetector) nor a '
                          'two-stage (TwoStageDetector with rpn_head and roi_head) detector; '
                          'its ONNX export is not supported')


def flatten_outputs(outs):
    """A head's outputs (a tuple of tensors and lists of tensors) as a flat list, and the
    structure to rebuild them: one entry per output, ``-1`` for a tensor, else the list's
    length."""
    flat, structure = [], []
    for out in outs:
        if isinstance(out, torch.Tensor):
            flat.append(out)
            structure.append(-1)
        elif isinstance(out, (list, tuple)) and all(isinstance(t, torch.Tensor) for t in out):
            flat.extend(out)
            structure.append(len(out))
        else:
            raise OnnxExportError(f'head output of type {type(out).__name__} is neither a '
                                  'tensor nor a list of tensors')
    return flat, structure


def unflatten_outputs(flat, structure):
    """Inverse of :func:`flatten_outputs`."""
    outs, i = [], 0
    for n in structure:
        if n == -1:
            outs.append(flat[i])
            i += 1
        else:
            outs.append(list(flat[i:i + n]))
            i += n
    return tuple(outs)


class FeaturesGraph(nn.Module):
    """image -> backbone -> neck -> dense head forward, outputs flattened."""

    def __init__(self, model, kind):
        super().__init__()
        self.model = model
        self.kind = kind
        self.head = model.rpn_head if kind == 'two_stage' else model.bbox_head

    def forward(self, image):
        x = self.model.extract_feat(image)
        flat, _ = flatten_outputs(self.head(x))
        return (*x, *flat) if self.kind == 'two_stage' else tuple(flat)


class RoIPart(nn.Module):
    """A RoI head part called on one tensor, outputs as a tuple."""

    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, x):
        out = self.module(x)
        return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def _roi_feature_shape(extractor, channels):
    size = extractor.roi_layers[0].output_size
    size = (size, size) if isinstance(size, int) else tuple(size)
    return (channels, *size)


def _export(module, args, path, names, dynamic, dynamo, what):
    """torch.onnx.export of one graph; errors name the graph and ``what`` it holds."""
    inputs, outputs = names
    kwargs = dict(input_names=inputs, output_names=outputs, opset_version=OPSET,
                  dynamo=dynamo)
    kwargs.update(dict(external_data=False, verbose=False) if dynamo else
                  dict(do_constant_folding=True))
    if dynamic:
        if dynamo:
            kwargs['dynamic_shapes'] = ({0: torch.export.Dim('num_rois', min=1)},)
        else:
            kwargs['dynamic_axes'] = {n: {0: 'num_rois'} for n in (*inputs, *outputs)}
    try:
        with torch.no_grad(), atomic_path(path) as tmp:
            torch.onnx.export(module, args, tmp, **kwargs)
    except Exception as err:  # name the graph: the exporters' own messages often do not
        raise OnnxExportError(f'exporting graph {osp.basename(path)!r} ({what}) failed: '
                              f'{type(err).__name__}: {err}') from err


def export_onnx(model, out_dir, shape, dynamo=True, extra_meta=None):
    """Export ``model``'s tensor parts into ``out_dir`` (which must exist).

    Args:
        model: An MMDetection detector (folded or slimmed), any device; exported on the CPU
            in eval mode.
        out_dir: Folder receiving the ``.onnx`` files and ``manifest.json``.
        shape: ``(H, W)`` of the preprocessed (normalized, padded) image the features graph
            takes; smaller inputs are zero-padded to it at run time, as MMDetection pads
            batches.
        dynamo: Use torch's dynamo exporter (``torch.onnx.export(dynamo=True)``), else the
            TorchScript-based one.
        extra_meta: More entries for the manifest (e.g. the subnet, the sources).

    Returns:
        The manifest dict (also written to ``out_dir/manifest.json``).
    """
    model = model.cpu().eval()
    kind = detector_kind(model)
    h, w = shape
    image = torch.randn(1, 3, h, w)
    features = FeaturesGraph(model, kind).eval()
    with torch.no_grad():
        x = model.extract_feat(image)
        _, structure = flatten_outputs(features.head(x))
    num_feats = len(x) if kind == 'two_stage' else 0
    head_name = 'rpn_head' if kind == 'two_stage' else 'bbox_head'
    out_names = [f'feat{i}' for i in range(num_feats)] + [
        f'{head_name}.{j}' for j in range(sum(1 if n == -1 else n for n in structure))]
    what = ' -> '.join(f'{part} {type(getattr(model, part)).__name__}' for part in (
        'backbone', 'neck', head_name) if getattr(model, part, None) is not None)
    _export(features, (image,), osp.join(out_dir, 'features.onnx'), (['image'], out_names),
            False, dynamo, what)
    graphs = dict(features=dict(file='features.onnx', inputs=['image'], outputs=out_names,
                                input_shape=[1, 3, h, w], num_feats=num_feats,
                                head=head_name, head_structure=structure))
    if kind == 'two_stage':
        roi_head = model.roi_head
        channels = x[0].shape[1]
        parts = [('bbox_head', roi_head.bbox_roi_extractor, roi_head.bbox_head,
                  ['cls_score', 'bbox_pred'])]
        if roi_head.with_mask:
            parts.append(('mask_head', roi_head.mask_roi_extractor, roi_head.mask_head,
                          ['mask_pred']))
        for name, extractor, head, outputs in parts:
            roi_shape = _roi_feature_shape(extractor, channels)
            sample = torch.randn(8, *roi_shape)  # 8 RoIs; the RoI count is dynamic
            _export(RoIPart(head).eval(), (sample,), osp.join(out_dir, f'{name}.onnx'),
                    (['roi_feats'], outputs), True, dynamo,
                    f'roi_head.{name} {type(head).__name__}')
            graphs[name] = dict(file=f'{name}.onnx', inputs=['roi_feats'], outputs=outputs,
                                roi_feature_shape=list(roi_shape))
    manifest = dict(format_version=FORMAT_VERSION, kind=kind, detector=type(model).__name__,
                    exporter='dynamo' if dynamo else 'torchscript', opset=OPSET,
                    torch=torch.__version__, graphs=graphs, **(extra_meta or {}))
    atomic_write_json(osp.join(out_dir, MANIFEST), manifest)
    return manifest


def read_manifest(onnx_dir):
    """The manifest of an export folder; a clear error when it is not one."""
    path = osp.join(onnx_dir, MANIFEST)
    if not osp.isfile(path):
        raise FileNotFoundError(f'{onnx_dir!r} holds no {MANIFEST}: not an ONNX export of '
                                'tools/deploy/export_onnx.py')
    with open(path) as f:
        manifest = json.load(f)
    if manifest.get('format_version') != FORMAT_VERSION:
        raise ValueError(f'{path}: format_version {manifest.get("format_version")!r}, this '
                         f'mmsparse reads {FORMAT_VERSION}')
    return manifest
