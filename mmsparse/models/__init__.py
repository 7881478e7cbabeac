"""MMDetection-side adapters of the core: how to run a detector for graph analysis."""
from .detector_run import (AnalysisError, attach_network, attached_network, detector_loss_run,
                           detector_predict_run, sparsify_checkpoint_layers, sparsify_detector)

__all__ = ['AnalysisError', 'attach_network', 'attached_network', 'detector_loss_run',
           'detector_predict_run', 'sparsify_checkpoint_layers', 'sparsify_detector']
