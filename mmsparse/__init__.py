"""mmsparse: switchable sparse subnetworks for MMDetection.

Importing the package registers its mmengine components (``custom_imports=['mmsparse']``)
and allow-lists what mmengine checkpoints need under ``torch.load(weights_only=True)``.
The framework-free core lives in :mod:`mmsparse.core` and imports torch only.
"""
from .version import __version__
from .utils.checkpoint import register_checkpoint_safe_globals

register_checkpoint_safe_globals()

# Register components; importing mmdet here is fine because the adapters need it anyway.
from . import datasets, engine  # noqa: E402,F401

__all__ = ['__version__', 'register_checkpoint_safe_globals']
