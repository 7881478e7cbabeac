"""BatchNorm statistics: save, restore, and re-estimate them for the active subnet.

Subnets share BatchNorm layers. A sparse subnet's activations have other statistics than
the dense network's, so evaluating it with re-estimated running statistics
("recalibration") is often more accurate. :func:`recalibrated_bn` does it reversibly: the
original statistics are back when the block exits.
"""
import contextlib

import torch
from torch.nn.modules.batchnorm import _BatchNorm


def batchnorms(model):
    """``{name: module}`` of every BatchNorm layer."""
    return {n: m for n, m in model.named_modules() if isinstance(m, _BatchNorm)}


def save_bn_stats(model):
    """Copies of every BatchNorm's running statistics and momentum."""
    return {n: (m.running_mean.clone() if m.running_mean is not None else None,
                m.running_var.clone() if m.running_var is not None else None,
                m.num_batches_tracked.clone() if m.num_batches_tracked is not None else None,
                m.momentum)
            for n, m in batchnorms(model).items()}


def restore_bn_stats(model, saved):
    """Put back what :func:`save_bn_stats` returned (in place, same tensors)."""
    for name, module in batchnorms(model).items():
        mean, var, count, momentum = saved[name]
        for buffer, value in ((module.running_mean, mean), (module.running_var, var),
                              (module.num_batches_tracked, count)):
            if buffer is not None:
                buffer.copy_(value)
        module.momentum = momentum


@contextlib.contextmanager
def recalibrated_bn(model, forward_batches):
    """Re-estimate BatchNorm statistics with ``forward_batches(model)``; restore on exit.

    Statistics are reset and accumulated as an exact average over the batches
    (``momentum=None``). Only the BatchNorm layers are put in training mode, so dropout and
    heads keep their eval behaviour.

    Args:
        model: The network (its active subnet is the one recalibrated).
        forward_batches: Callable running the model on the calibration batches, e.g.
            ``lambda m: [m.predict(x) for x in batches]``. Called under ``no_grad``.
    """
    saved = save_bn_stats(model)
    norms = batchnorms(model)
    modes = {n: m.training for n, m in norms.items()}
    try:
        for module in norms.values():
            module.reset_running_stats()
            module.momentum = None
            module.train()
        with torch.no_grad():
            forward_batches(model)
        for name, module in norms.items():
            module.train(modes[name])
        yield
    finally:
        restore_bn_stats(model, saved)
        for name, module in norms.items():
            module.train(modes[name])
