"""AST's gradient correction between consecutive subnets, as pure functions.

When the current subnet's gradient g conflicts with the previous subnet's g_prev (negative
dot product), g is projected onto the normal plane of g_prev:
``g <- g - (<g, g_prev> / ||g_prev||^2) g_prev``, so the update no longer undoes the
previous subnet's progress.

The published AST code never applies it: it stores the current gradient as "previous"
*before* the check, so the dot product is ||g||^2 >= 0. Here the previous gradient is only
replaced after the current one has been corrected (:class:`GradientCorrector`).
"""
import torch


def correct_gradient(grad, previous):
    """Return ``grad`` projected away from ``previous`` when they conflict, else ``grad``.

    Returns:
        tuple: (corrected gradient, True if the correction fired).
    """
    dot = torch.sum(grad * previous)
    if dot >= 0:
        return grad, False
    norm_sq = torch.sum(previous * previous)
    if norm_sq == 0:
        return grad, False
    return grad - (dot / norm_sq) * previous, True


class GradientCorrector:
    """Per-parameter previous gradients within a group of K consecutive iterations.

    Args:
        group_size: K; the stored gradients are dropped at the start of every group, so the
            first subnet of a group is never corrected.

    Attributes:
        only: None (correct every parameter with a gradient) or the parameters to correct
            (see :meth:`restrict`); the others are neither corrected nor remembered.
    """

    def __init__(self, group_size):
        if group_size < 2:
            raise ValueError(f'gradient correction needs a group of >= 2 subnets, got '
                             f'{group_size}')
        self.group_size = group_size
        self.previous = {}
        self.fired = 0
        self.only = None

    def restrict(self, params):
        """Correct only ``params`` (None: every parameter). Parameters whose tensor belongs
        to a different subnet on consecutive iterations (e.g. switchable BatchNorm's live
        values) must be left out: their "previous" gradient is another tensor's."""
        self.only = None if params is None else {id(p) for p in params}
        self.previous = {}

    @torch.no_grad()
    def apply(self, named_params, iteration):
        """Correct ``param.grad`` in place for iteration ``iteration``; remember the result.

        Returns:
            int: how many parameter tensors were corrected this iteration.
        """
        if iteration % self.group_size == 0:
            self.previous = {}
        fired = 0
        for name, param in named_params:
            if param.grad is None or (self.only is not None and id(param) not in self.only):
                continue
            previous = self.previous.get(name)
            if previous is not None:
                corrected, did = correct_gradient(param.grad, previous)
                if did:
                    param.grad.copy_(corrected)
                    fired += 1
            # Only now does the current (corrected) gradient become the "previous" one.
            self.previous[name] = param.grad.detach().clone()
        self.fired += fired
        return fired
