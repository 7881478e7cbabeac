"""BatchNorm state shared by the three mechanisms: list, save, restore, per-subnet rows,
and re-estimating the statistics for the active subnet.

Subnets share BatchNorm layers. A sparse subnet's activations have other statistics than
the dense network's, so evaluating it with re-estimated running statistics
("recalibration") is often more accurate. :func:`recalibrated_bn` does it reversibly: the
original statistics are back when the block exits.

Stored statistics (:mod:`.stored_stats`) and switchable BatchNorm (:mod:`.switchable`)
both keep per-subnet copies of a BatchNorm's tensors as *rows*: a buffer ``<prefix><name>``
of shape ``(K, *shape)`` next to the live ``<name>``, row k for the k-th subnet in
``SparseNetwork.subnets()`` order (of the subnets the mechanism holds). :func:`add_rows`
makes them, :func:`row_views` pairs live tensors with one row and :func:`copy_all` copies
between them.
"""
import contextlib

import torch
from torch.nn.modules.batchnorm import _BatchNorm


def batchnorms(model):
    """``{name: module}`` of every BatchNorm layer."""
    return {n: m for n, m in model.named_modules() if isinstance(m, _BatchNorm)}


def live_tensor(bn, name):
    """The live parameter or buffer ``name`` of ``bn`` (None when the BatchNorm has none,
    e.g. ``weight`` without ``affine`` or ``running_mean`` without tracking)."""
    return bn._parameters[name] if name in bn._parameters else bn._buffers.get(name)


def add_rows(bn, prefix, names, count):
    """Register ``count`` rows ``<prefix><name>`` for each of ``names`` that ``bn`` has, every
    row a copy of the live tensor."""
    with torch.no_grad():
        for name in names:
            live = live_tensor(bn, name)
            if live is None:
                continue
            live = live.detach()
            bn.register_buffer(prefix + name,
                               live.unsqueeze(0).repeat(count, *([1] * live.dim())))


def row_views(norms, prefix, names, *rows):
    """The live tensors ``names`` (those it has) of every BatchNorm in ``norms`` and, for each
    of ``rows``, their views in that row of the ``<prefix><name>`` buffers (same order), for
    one ``torch._foreach_copy_`` per direction instead of a copy per tensor."""
    live, views = [], [[] for _ in rows]
    for bn in norms:
        for name in names:
            tensor = live_tensor(bn, name)
            if tensor is None:
                continue
            live.append(tensor)
            stored = getattr(bn, prefix + name)
            for out, row in zip(views, rows):
                out.append(stored[row])
    return live, views


@torch.no_grad()
def copy_all(targets, sources):
    """Copy each of ``sources`` into the matching one of ``targets`` (lists from
    :func:`row_views`) in one batched call; nothing to do for empty lists."""
    if targets:
        torch._foreach_copy_(targets, sources)


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
    # Not torch.optim.swa_utils.update_bn, which does the same averaging but calls
    # ``model(batch[0])`` (a detector needs its data preprocessor and ``predict`` with the
    # batch's data samples) and puts the *whole* model in training mode (the detector's heads
    # would take their training branches, dropout would drop); the batches here are a
    # callable and only the BatchNorms train.
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
