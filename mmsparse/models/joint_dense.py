"""Train the dense network on every iteration alongside the sparse subnet (joint dense loss).

Sparse Cocktail's dense pivot gives the dense network every other iteration. When the
task is far from converged at the iteration budget, half the dense updates cost the dense
subnet much more accuracy than the sparse steps give back (docs/results.md, 1024 training
images). With the joint dense loss every iteration trains one sparse subnet *and* the dense
network: a forward hook on the detector runs MMDetection's loss forward a second time with
the dense network active, on the same batch, and adds its losses under ``dense.<key>``.
One backward goes through both passes and the optimizer takes one step, as in the
slimmable networks' "sandwich rule". Each iteration costs about two forward/backward
passes. No MMDetection code changes; the hook fires inside DDP's forward.
"""
from mmsparse.core import DENSE
from .distill import forward_mode, scale_loss

PREFIX = 'dense.'


class JointDenseLoss:
    """Add the dense network's task losses to every sparse step of a detector.

    Args:
        model: The (unwrapped) MMDetection detector.
        network: Its :class:`~mmsparse.core.SparseNetwork`.
        weight: Factor of the dense losses (1.0: plain sum, as in the sandwich rule).
    """

    def __init__(self, model, network, weight=1.0):
        if not weight > 0:
            raise ValueError(f'joint dense loss weight must be > 0, got {weight}')
        self.network, self.weight = network, weight
        self.enabled = False
        self._inside = False  # the dense pass re-enters the detector's forward
        model.register_forward_hook(self._add_dense, with_kwargs=True)

    def step(self, spec):
        """Arm for the coming iteration: the dense pass only when a sparse subnet trains."""
        self.enabled = spec != DENSE

    def _add_dense(self, module, args, kwargs, output):
        if not self.enabled or self._inside or forward_mode(args, kwargs) != 'loss':
            return output
        active = self.network.active
        self._inside = True
        self.network.set_active(DENSE)
        try:
            # MMDetection's loss forward copies the data samples it edits (the RPN's
            # class-agnostic labels), so the batch can be fed twice.
            dense = module(*args, **kwargs)
        finally:
            self._inside = False
            self.network.set_active(active)
        losses = dict(output)
        for key, value in dense.items():
            losses[PREFIX + key] = scale_loss(value, self.weight) if 'loss' in key else value
        return losses


def dense_part(log_vars):
    """The summed dense losses among logged loss values (keys ``dense.*loss*``)."""
    return sum(float(v.detach()) if hasattr(v, 'detach') else float(v)
               for k, v in log_vars.items() if k.startswith(PREFIX) and 'loss' in k)
