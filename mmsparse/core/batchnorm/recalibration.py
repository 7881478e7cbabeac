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


def batchnorms(model, include_frozen_bn=True, frozen=None):
    """``{name: module}`` of every BatchNorm layer; without the frozen ones when
    ``include_frozen_bn`` is False: those named in ``frozen``, or by default those
    :func:`frozen_batchnorms` finds."""
    norms = {n: m for n, m in model.named_modules() if isinstance(m, _BatchNorm)}
    if not include_frozen_bn:
        frozen = set(frozen_batchnorms(model) if frozen is None else frozen)
        norms = {n: m for n, m in norms.items() if n not in frozen}
    return norms


def frozen_batchnorms(model):
    """``{name: module}`` of the BatchNorm layers that training leaves unchanged.

    A BatchNorm is frozen when

    * it sits in a module whose ``norm_eval`` attribute is true (MMDetection's backbones:
      their ``train()`` puts every BatchNorm below them back in eval mode, so the running
      statistics keep their pretrained values), or
    * it has affine parameters and none of them requires a gradient
      (``norm_cfg=dict(type='BN', requires_grad=False)``, or a stage frozen by
      ``frozen_stages``, which also keeps its BatchNorms in eval mode).

    Both are set when the model is built (MMDetection's ResNet freezes its stages in
    ``__init__`` as well as in ``train()``), so this holds before the first ``train()``.
    Read by attribute, without importing MMDetection.
    """
    roots = [n for n, m in model.named_modules() if getattr(m, 'norm_eval', False) is True]
    frozen = {}
    for name, module in model.named_modules():
        if not isinstance(module, _BatchNorm):
            continue
        params = [p for p in (module.weight, module.bias) if p is not None]
        under_eval = any(r == '' or name == r or name.startswith(r + '.') for r in roots)
        if under_eval or (params and not any(p.requires_grad for p in params)):
            frozen[name] = module
    return frozen


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
def recalibrated_bn(model, forward_batches, include_frozen_bn=False, frozen=None):
    """Re-estimate BatchNorm statistics with ``forward_batches(model)``; restore on exit.

    Statistics are reset and accumulated as an exact average over the batches
    (``momentum=None``). Only the BatchNorm layers are put in training mode, so dropout and
    heads keep their eval behaviour. Frozen BatchNorms (:func:`frozen_batchnorms`) keep
    their statistics and mode: the model was trained with them as they are. When every
    BatchNorm is frozen, ``forward_batches`` is not run.

    Args:
        model: The network (its active subnet is the one recalibrated).
        forward_batches: Callable running the model on the calibration batches, e.g.
            ``lambda m: [m.predict(x) for x in batches]``. Called under ``no_grad``.
        include_frozen_bn: Re-estimate the frozen BatchNorms too.
        frozen: Names of the frozen BatchNorms when the model's own flags do not tell
            (e.g. ``SparseNetwork.frozen_bn`` for an EMA copy); default: found in ``model``.
    """
    # Not torch.optim.swa_utils.update_bn, which does the same averaging but calls
    # ``model(batch[0])`` (a detector needs its data preprocessor and ``predict`` with the
    # batch's data samples) and puts the *whole* model in training mode (the detector's heads
    # would take their training branches, dropout would drop); the batches here are a
    # callable and only the BatchNorms train.
    saved = save_bn_stats(model)
    norms = batchnorms(model, include_frozen_bn, frozen)
    modes = {n: m.training for n, m in norms.items()}
    try:
        for module in norms.values():
            module.reset_running_stats()
            module.momentum = None
            module.train()
        if norms:
            with torch.no_grad():
                forward_batches(model)
        for name, module in norms.items():
            module.train(modes[name])
        yield
    finally:
        restore_bn_stats(model, saved)
        for name, module in norms.items():
            module.train(modes[name])
