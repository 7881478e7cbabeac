"""mmsparse: switchable sparse subnetworks for MMDetection.

The package root has no side effects, so ``mmsparse.core`` (torch only) imports without
mmengine, mmdet or mmcv. MMDetection configs reach mmsparse's components through scoped types
(``type='mmsparse.ShapesDataset'``): mmengine then imports :mod:`mmsparse.registry`, whose
``locations`` import and register the adapters. ``custom_imports=dict(imports=['mmsparse'])``
is accepted too. The tools import :mod:`mmsparse.engine`, which also allow-lists what
mmengine checkpoints need under ``torch.load(weights_only=True)``.
"""
from .version import __version__

__all__ = ['__version__']
