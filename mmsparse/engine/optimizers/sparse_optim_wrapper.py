"""Optimizer wrappers for sparse training: AST's gradient correction.

Gradients of masked weights are already masked by autograd (the forward uses
``weight * mask``), and the momentum of the weights a subnet removes is kept (straight-
through updates move them). These wrappers add what autograd cannot: AST gradient correction
between consecutive subnets (:mod:`mmsparse.core.methods.correction`), applied before the
optimizer step.

:class:`SparseAmpOptimWrapper` is the same on top of mmengine's ``AmpOptimWrapper``;
``tools/train.py --amp`` maps one to the other instead of replacing the wrapper.
"""
from mmengine.logging import MessageHub
from mmengine.optim import AmpOptimWrapper, OptimWrapper

from mmsparse.core.methods.correction import GradientCorrector
from mmsparse.registry import OPTIM_WRAPPERS
from ..launch import AMP_VARIANTS

CORRECTION_OPTIONS = ('group_size', )


def build_corrector(gradient_correction):
    """A :class:`GradientCorrector` from the wrapper's ``gradient_correction`` option (None
    when it is None or empty); a ValueError names a malformed option."""
    if not gradient_correction:
        return None
    if not isinstance(gradient_correction, dict):
        raise ValueError('optim_wrapper.gradient_correction must be a dict like '
                         f'dict(group_size=K) or None, got {gradient_correction!r}')
    unknown = sorted(set(gradient_correction) - set(CORRECTION_OPTIONS))
    if unknown or 'group_size' not in gradient_correction:
        raise ValueError(f'optim_wrapper.gradient_correction takes exactly '
                         f'{list(CORRECTION_OPTIONS)}, got {sorted(gradient_correction)}')
    size = gradient_correction['group_size']
    if isinstance(size, bool) or not isinstance(size, int):
        raise ValueError('optim_wrapper.gradient_correction group_size must be an integer '
                         f'>= 2 (the number of alternating subnets), got {size!r}')
    return GradientCorrector(size)


class _SparseStep:
    """Behaviour shared by the plain and the AMP sparse wrappers (mixed in before the
    mmengine wrapper, so ``super()`` reaches ``OptimWrapper`` or ``AmpOptimWrapper``)."""

    def __init__(self, *args, gradient_correction=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.corrector = build_corrector(gradient_correction)

    def _named_params(self):
        for gi, group in enumerate(self.optimizer.param_groups):
            for pi, param in enumerate(group['params']):
                yield f'{gi}.{pi}', param

    def step(self, **kwargs):
        if self.corrector is not None:
            iteration = MessageHub.get_current_instance().get_info('iter', 0)
            self.corrector.apply(self._named_params(), iteration)
        super().step(**kwargs)

    def correction_state(self, next_iteration):
        """The corrector's state a resumed run needs to correct ``next_iteration`` as an
        uninterrupted run does (for checkpoint meta)."""
        state = dict(correction_fired=self.corrector.fired)
        if next_iteration % self.corrector.group_size:
            # The next iteration is inside a correction group: keep its "previous"
            # gradients, so a resumed run corrects it as an uninterrupted one does.
            state['correction_previous'] = dict(self.corrector.previous)
        return state

    def load_correction_state(self, state):
        """Restore what :meth:`correction_state` returned."""
        self.corrector.previous = dict(state.get('correction_previous', {}))
        self.corrector.fired = int(state.get('correction_fired', 0))


@OPTIM_WRAPPERS.register_module()
class SparseOptimWrapper(_SparseStep, OptimWrapper):
    """``OptimWrapper`` with AST gradient correction.

    Args:
        gradient_correction: e.g. ``dict(group_size=K)`` to correct each subnet's gradient
            against the previous subnet's within groups of K iterations; None to disable.
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
