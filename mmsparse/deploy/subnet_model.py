"""The plain detector modules an ONNX export starts from.

Subnets of a sparse checkpoint are taken out exactly as ``tools/export_subnet.py`` does it
(``mmsparse.engine.subnet_export``): dense, unstructured, N:M and block masks folded into
the weights, channel subnets physically slimmed, BatchNorm statistics the subnet's own when
the checkpoint stores them. A model ``tools/export_subnet.py`` wrote is loaded as MMDetection
loads it.
"""
import contextlib
import math

import torch

from mmsparse.core import DENSE
from mmsparse.core.batchnorm.stored_stats import stored_bn_stats
from mmsparse.core.export.deploy import ExportError
from mmsparse.engine.sparse_checkpoint import load_sparse_detector
from mmsparse.engine.subnet_export import bn_source, export_model


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
        source = bn_source(0, model, network, ())
        with (stored_bn_stats(network, spec) if source == 'stored'
              else contextlib.nullcontext()):
            exported, _ = export_model(model, network, spec, ())
        yield spec, exported.eval()


def plain_model(cfg, checkpoint):
    """A model ``tools/export_subnet.py`` (or MMDetection) wrote: built from ``cfg.model``
    with ``mmdet.apis.init_detector``, or, when the config has no model entry (a pickled
    slimmed module), the module pickled in ``checkpoint`` (load only files you trust)."""
    if cfg.get('model') is None:
        obj = torch.load(checkpoint, map_location='cpu', weights_only=False)
        if not isinstance(obj, dict) or not isinstance(obj.get('model'), torch.nn.Module):
            raise ExportError(f'the config has no model entry and {checkpoint} holds no '
                              'pickled module ("model"): nothing to build the detector from')
        return obj['model'].cpu().eval()
    from mmdet.apis import init_detector
    return init_detector(cfg, checkpoint, device='cpu').eval()


def _pipeline_scale(cfg):
    dataloader = cfg.get('test_dataloader') or {}
    pipeline = (dataloader.get('dataset') or {}).get('pipeline') or cfg.get('test_pipeline') or []
    for step in pipeline:
        if 'Resize' in str(step.get('type', '')) and step.get('scale') is not None:
            scale = step['scale']
            return (scale, scale) if isinstance(scale, int) else tuple(scale)
    return None


def default_shape(cfg, model):
    """``(H, W)`` the features graph is exported at by default: the test pipeline's Resize
    scale (MMDetection's ``(w, h)``), padded up to the data preprocessor's divisor."""
    scale = _pipeline_scale(cfg)
    if scale is None:
        raise ExportError('the test pipeline has no Resize with a scale; pass --shape H W')
    divisor = getattr(model.data_preprocessor, 'pad_size_divisor', 1) or 1
    w, h = scale
    return (math.ceil(h / divisor) * divisor, math.ceil(w / divisor) * divisor)
