"""Distil the dense network into the active sparse subnet inside MMDetection's loss forward.

On a sparse step, forward hooks capture the subnet's classification outputs: RPN
objectness, the sampled RoIs and the RoI class logits for two-stage detectors, the dense
head's class maps for one-stage ones. A forward hook on the detector then runs the dense
network without gradients on the same batch (and the same RoIs), rescales the task losses by
``1 - weight`` and adds ``loss_kd = weight * KD``. No MMDetection code changes, and it works
under DDP (the hooks fire inside DDP's forward).
"""
import torch

from mmsparse.core import DENSE
from mmsparse.core.batchnorm.recalibration import batchnorms
from mmsparse.core.methods.distill import sigmoid_kd, softmax_kd
from .detector_call import batch_of, forward_mode


def scale_loss(value, factor):
    """``value * factor`` for a loss tensor or a list/tuple of them (per-level losses)."""
    if isinstance(value, (list, tuple)):
        return type(value)(scale_loss(v, factor) for v in value)
    return value * factor


class DenseDistiller:
    """KD from the dense network on sparse steps of a :class:`~mmsparse.core.SparseNetwork`.

    Args:
        model: The (unwrapped) MMDetection detector.
        network: Its sparse network.
        weight: w in ``(1 - w) task + w KD`` (0.5 in Sparse Cocktail).
        temperature: Softmax temperature for RoI class logits.
    """

    def __init__(self, model, network, weight=0.5, temperature=1.0):
        self.check_options(weight, temperature)
        self.model, self.network = model, network
        self.weight, self.temperature = weight, temperature
        self.enabled = False
        self._capture = {}
        self._recording = False
        self.two_stage = getattr(model, 'with_rpn', False) and hasattr(model, 'roi_head')
        heads = ([model.rpn_head, model.roi_head.bbox_head] if self.two_stage
                 else [model.bbox_head])
        if not all(h is not None for h in heads):
            raise ValueError(f'distillation supports two-stage detectors (RPN + RoI head) and '
                             f'one-stage detectors with a bbox_head, not {type(model).__name__}')
        if self.two_stage:
            model.rpn_head.register_forward_hook(self._keep('rpn', lambda out: out[0]))
            model.roi_head.bbox_roi_extractor.register_forward_hook(
                self._keep('rois', lambda out: None, from_inputs=True))
            model.roi_head.bbox_head.register_forward_hook(self._keep('roi', lambda out: out[0]))
        else:
            model.bbox_head.register_forward_hook(self._keep('dense_head', lambda out: out[0]))
        model.register_forward_hook(self._add_kd, with_kwargs=True)

    @staticmethod
    def check_options(weight=0.5, temperature=1.0):
        """Raise for bad options (an unknown one is a ``TypeError``), before any model."""
        if not 0 < weight <= 1:
            raise ValueError(f'distillation weight must be in (0, 1], got {weight}')
        if not temperature > 0:
            raise ValueError(f'distillation temperature must be > 0, got {temperature}')

    def _keep(self, key, pick, from_inputs=False):
        def hook(module, inputs, output):
            if self._recording:
                self._capture[key] = inputs[1].detach() if from_inputs else pick(output)
        return hook

    def step(self, spec):
        """Arm the distiller for the coming iteration: KD only on sparse steps."""
        self.enabled = spec != DENSE
        self._recording = self.enabled
        self._capture = {}

    @torch.no_grad()
    def _teacher(self, batch_inputs, active):
        """Dense outputs for the same batch (and RoIs), then back to the active subnet.

        BatchNorm normalises with batch statistics as in the student's pass but must not
        update its running statistics: the teacher pass is not a training step, and the
        student's backward still needs those buffers unmodified. ``track_running_stats`` is
        switched off for the pass (no in-place buffer update at all).
        """
        self._recording = False
        self.network.set_active(DENSE)
        norms = [m for m in batchnorms(self.model).values()
                 if m.training and m.track_running_stats]
        for norm in norms:
            norm.track_running_stats = False
        try:
            feats = self.model.extract_feat(batch_inputs)
            if not self.two_stage:
                return dict(dense_head=self.model.bbox_head(feats)[0])
            out = dict(rpn=self.model.rpn_head(feats)[0])
            out['roi'] = self.model.roi_head._bbox_forward(feats, self._capture['rois'])[
                'cls_score']
            return out
        finally:
            for norm in norms:
                norm.track_running_stats = True
            self.network.set_active(active)

    def _add_kd(self, module, args, kwargs, output):
        if not self.enabled or forward_mode(args, kwargs) != 'loss' or not self._capture:
            return output
        teacher = self._teacher(batch_of(args, kwargs)[0], self.network.active)
        terms = []
        for key in ('rpn', 'dense_head'):
            if key in teacher:
                terms += [sigmoid_kd(s, t) for s, t in zip(self._capture[key], teacher[key])]
        kd = sum(terms) / len(terms)
        if 'roi' in teacher:
            kd = kd + softmax_kd(self._capture['roi'], teacher['roi'], self.temperature)
        losses = {k: (scale_loss(v, 1 - self.weight) if 'loss' in k else v)
                  for k, v in output.items()}
        losses['loss_kd'] = self.weight * kd
        self._capture = {}
        return losses
