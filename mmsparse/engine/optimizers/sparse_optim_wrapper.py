"""Optimizer wrappers for sparse training: gradient correction and momentum masking.

Gradients of masked weights are already masked by autograd (the forward uses
``weight * mask``). These wrappers add what autograd cannot:

* AST gradient correction between consecutive subnets (:mod:`mmsparse.core.methods.correction`),
  applied before the optimizer step;
* optional momentum masking after the step (Chase): the momentum of weights the active
  subnet removes is zeroed, so it does not carry them back.

:class:`SparseAmpOptimWrapper` is the same on top of mmengine's ``AmpOptimWrapper``;
``tools/train.py --amp`` maps one to the other instead of replacing the wrapper.
"""
from mmengine.logging import MessageHub
from mmengine.optim import AmpOptimWrapper, OptimWrapper

from mmsparse.core.methods.correction import GradientCorrector
from mmsparse.registry import OPTIM_WRAPPERS
from ..launch import AMP_VARIANTS


class _SparseStep:
    """Behaviour shared by the plain and the AMP sparse wrappers (mixed in before the
    mmengine wrapper, so ``super()`` reaches ``OptimWrapper`` or ``AmpOptimWrapper``)."""

    def __init__(self, *args, gradient_correction=None, mask_momentum=False, **kwargs):
        super().__init__(*args, **kwargs)
        self.corrector = (GradientCorrector(**gradient_correction)
                          if gradient_correction else None)
        self.mask_momentum = mask_momentum
        self.masked_params = {}  # param -> masked layer, set by SparseSubnetsHook

    def _named_params(self):
        for gi, group in enumerate(self.optimizer.param_groups):
            for pi, param in enumerate(group['params']):
                yield f'{gi}.{pi}', param

    def step(self, **kwargs):
        if self.corrector is not None:
            iteration = MessageHub.get_current_instance().get_info('iter', 0)
            self.corrector.apply(self._named_params(), iteration)
        super().step(**kwargs)
        if self.mask_momentum:
            self._mask_momentum()

    def _mask_momentum(self):
        """Zero the momentum of the weights the active subnet removes (Chase)."""
        for param, layer in self.masked_params.items():
            mask = layer.active_mask(param)
            state = self.optimizer.state.get(param, {})
            if mask is not None and 'momentum_buffer' in state:
                state['momentum_buffer'].mul_(mask)


@OPTIM_WRAPPERS.register_module()
class SparseOptimWrapper(_SparseStep, OptimWrapper):
    """``OptimWrapper`` with AST gradient correction and optional momentum masking.

    Args:
        gradient_correction: e.g. ``dict(group_size=K)`` to correct each subnet's gradient
            against the previous subnet's within groups of K iterations; None to disable.
        mask_momentum: Zero the momentum of weights the active subnet removes.
        **kwargs: ``OptimWrapper``'s arguments.
    """


@OPTIM_WRAPPERS.register_module()
class SparseAmpOptimWrapper(_SparseStep, AmpOptimWrapper):
    """:class:`SparseOptimWrapper` with automatic mixed precision (``AmpOptimWrapper``).

    The correction is applied to the loss-scaled gradients: the projection is invariant to
    the scale of the previous gradient and linear in the current one, so scaling commutes.
    """


AMP_VARIANTS.update(SparseOptimWrapper='SparseAmpOptimWrapper',
                    SparseAmpOptimWrapper='SparseAmpOptimWrapper')
