"""The plain detector modules an ONNX export starts from.

Subnets of a sparse checkpoint are taken out exactly as ``tools/export_subnet.py`` does it
(``mmsparse.engine.subnet_export``): dense, unstructured, N:M and block masks folded into
the weights, channel subnets physically slimmed, BatchNorm statistics the subnet's own when
the checkpoint stores them. A model ``tools/export_subnet.py`` wrote is loaded as MMDetection
loads it.
"""
import math

import torch

from mmsparse.core import DENSE
from mmsparse.core.export.deploy import ExportError
from mmsparse.engine.sparse_checkpoint import (CheckpointError, check_model_fits,
                                               load_sparse_detector, read_checkpoint)
from mmsparse.engine.subnet_export import subnet_module


def subnet_models(cfg, checkpoint, subnets):
    """Yield ``(spec, folded or slimmed eval-mode module)`` per subnet of a sparse checkpoint;
    every name is checked (SubnetNameError listing the held ones) before the first export."""
    model, network, _ = load_sparse_detector(cfg, checkpoint)
    if network is None:
        wrong = [s.name for s in subnets if s != DENSE]
        if wrong:
            raise ExportError(f'subnet {wrong[0]!r} requested, but {checkpoint} holds no '
                              "sparse subnets (no mask buffers): only 'dense' can be exported")
    else:
        for spec in subnets:
            if spec != DENSE:
                network.resolve(spec)
    for spec in subnets:
        yield spec, subnet_module(model, network, spec)[0]


def plain_model(cfg, checkpoint):
    """A model ``tools/export_subnet.py`` (or MMDetection) wrote: built from ``cfg.model``
    with ``mmdet.apis.init_detector`` (every weight of the model must be in the checkpoint
    with its shape, else ExportError naming a few missing or mismatched keys), or, when the
    config has no model entry (a pickled slimmed module), the module pickled in
    ``checkpoint`` (load only files you trust)."""
    if cfg.get('model') is None:
        obj = torch.load(checkpoint, map_location='cpu', weights_only=False)
        if not isinstance(obj, dict) or not isinstance(obj.get('model'), torch.nn.Module):
            raise ExportError(f'the config has no model entry and {checkpoint} holds no '
                              'pickled module ("model"): nothing to build the detector from')
        return obj['model'].cpu().eval()
    from mmdet.apis import init_detector
    model = init_detector(cfg, checkpoint, device='cpu').eval()
    # init_detector loads non-strictly: a checkpoint of another model (e.g. the training
    # config with a slimmed subnet's weights) would only warn and export random weights.
    state, _ = read_checkpoint(checkpoint)
    try:
        check_model_fits(model.state_dict(), state, checkpoint)
    except CheckpointError as err:
        raise ExportError(f'{err} For a tools/export_subnet.py export, pass the config it '
                          'wrote beside the weights (X.py for X.pth).') from None
    return model


def _pipeline_resize(cfg):
    """``((w, h), keep_ratio)`` of the test pipeline's Resize, or None."""
    dataloader = cfg.get('test_dataloader') or {}
    pipeline = (dataloader.get('dataset') or {}).get('pipeline') or cfg.get('test_pipeline') or []
    for step in pipeline:
        if 'Resize' in str(step.get('type', '')) and step.get('scale') is not None:
            scale = step['scale']
            scale = (scale, scale) if isinstance(scale, int) else tuple(scale)
            return scale, bool(step.get('keep_ratio', False))
    return None


def default_shape(cfg, model):
    """``(H, W)`` the features graph is exported at by default, padded up to the data
    preprocessor's divisor: the test pipeline's Resize scale (MMDetection's ``(w, h)``), or,
    with ``keep_ratio``, a square of its long side (COCO's ``(1333, 800)``: 1344 x 1344), as
    a portrait image is resized to at most 800 wide and 1333 high, a landscape one the other
    way round."""
    resize = _pipeline_resize(cfg)
    if resize is None:
        raise ExportError('the test pipeline has no Resize with a scale; pass --shape H W')
    (w, h), keep_ratio = resize
    if keep_ratio:
        w = h = max(w, h)
    divisor = getattr(model.data_preprocessor, 'pad_size_divisor', 1) or 1
    return (math.ceil(h / divisor) * divisor, math.ceil(w / divisor) * divisor)
