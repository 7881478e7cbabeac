"""Stop training at the first NaN or infinite loss, for configs without SparseCocktailHook."""
from mmengine.hooks import Hook

from mmsparse.registry import HOOKS
from ..stability import check_finite_loss


@HOOKS.register_module()
class FiniteLossHook(Hook):
    """Raise a ``FloatingPointError`` after the first training iteration whose loss is not
    finite, naming the iteration, the subnet trained (when the model has one) and the
    non-finite loss terms, and saying what to change.

    Unlike MMDetection's ``CheckInvalidLossHook`` it checks every iteration and raises even
    under ``python -O``. Its priority runs it before ``CheckpointHook``, so no checkpoint
    holds the broken weights. :class:`SparseCocktailHook` runs the same check itself; add
    ``dict(type='mmsparse.FiniteLossHook')`` to ``custom_hooks`` for any other run.
    """

    priority = 'ABOVE_NORMAL'  # before LoggerHook (BELOW_NORMAL) and CheckpointHook

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        check_finite_loss(runner, outputs)
