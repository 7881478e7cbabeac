"""MMDetection-side adapters of the core: how to run a detector for graph analysis."""
from .detector_run import detector_loss_run, sparsify_detector

__all__ = ['detector_loss_run', 'sparsify_detector']
