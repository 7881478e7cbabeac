"""MACs of an exported detector, counted by mmengine's ``FlopAnalyzer``.

The detector runs its tensor-mode forward on one preprocessed batch. A two-stage detector's
RoI head depends on the proposals its RPN makes, which differ from subnet to subnet; to
compare subnets on the same work, the RoI head runs on fixed proposals (the dense
network's, see :func:`fixed_proposals`). mmengine counts, as fvcore does, one multiply-add
as one FLOP.
"""
import warnings

import torch
from mmengine.analysis import FlopAnalyzer
from torch import nn


class _TensorForward(nn.Module):
    """A detector's tensor-mode forward as a one-input module (what the analyzer traces)."""

    def __init__(self, model, samples, proposals=None):
        super().__init__()
        self.model, self.samples, self.proposals = model, samples, proposals

    def forward(self, inputs):
        if self.proposals is None:
            return self.model(inputs, self.samples, mode='tensor')
        feats = self.model.extract_feat(inputs)
        return (self.model.rpn_head(feats),
                self.model.roi_head.forward(feats, self.proposals, self.samples))


def fixed_proposals(model, inputs, samples):
    """The RPN proposals of ``model`` on ``inputs`` (two-stage detectors), else None."""
    if not (getattr(model, 'with_rpn', False) and getattr(model, 'with_roi_head', False)):
        return None
    with torch.no_grad():
        return model.rpn_head.predict(model.extract_feat(inputs), samples, rescale=False)


def model_flops(model, inputs, samples, proposals=None):
    """FLOPs (multiply-adds) of ``model``'s forward on ``inputs``, every operator mmengine
    knows (convolutions, linear layers, normalisation, upsampling), the RoI head on
    ``proposals`` when given."""
    module = _TensorForward(model, samples, proposals).eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter('ignore')  # the tracer's notes on data-dependent shapes
        analyzer = FlopAnalyzer(module, (inputs, ))
        analyzer.unsupported_ops_warnings(False)
        analyzer.uncalled_modules_warnings(False)
        return int(analyzer.total())
