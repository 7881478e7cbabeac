"""``type='mmsparse.SlimmedDetector'``: the config entry of an exported channel subnet.

``tools/export_subnet.py`` writes a channel-slimmed subnet as an ordinary checkpoint plus a
config whose model is::

    model = dict(type='mmsparse.SlimmedDetector', detector_type='MaskRCNN',
                 narrowed={'backbone.layer1.0.conv1': dict(out_channels=12), ...},
                 backbone=..., neck=..., rpn_head=..., roi_head=..., data_preprocessor=...,
                 train_cfg=..., test_cfg=...)

The original detector's keys stay at the top level, so tools that read ``cfg.model.backbone``
and the like (``mmdet.apis.init_detector``) keep working. The builder is a function: it
builds the original detector under MMDetection's scope, then narrows the listed layers
(:func:`mmsparse.core.export.narrowing.narrow_modules`); the checkpoint's weights fit it.
"""
from mmdet.registry import MODELS as MMDET_MODELS

from mmsparse.core.export.narrowing import narrow_modules
from mmsparse.registry import MODELS


@MODELS.register_module(name='SlimmedDetector')
def slimmed_detector(detector_type, narrowed, **detector):
    """Build ``dict(type=detector_type, **detector)`` with MMDetection's registry, then
    narrow the modules ``narrowed`` names (``{module name: {width attribute: int}}``)."""
    with MMDET_MODELS.switch_scope_and_registry('mmdet') as registry:
        model = registry.build(dict(type=detector_type, **detector))
    return narrow_modules(model, narrowed)
