"""Stored per-subnet BatchNorm statistics: estimate once, keep in the checkpoint, apply on use.

Subnets share BatchNorm layers, and co-training leaves running statistics that fit no
subnet exactly; re-estimating them per subnet (:func:`~.batchnorm.recalibrated_bn`) is
often worth up to 2 mAP. Doing that at every evaluation costs a pass over training batches
and a flag. Instead, :func:`store_subnet_bn_stats` estimates every subnet's statistics once
(at the end of training, or on an existing checkpoint) and keeps them in buffers of every
BatchNorm, so checkpoints carry them:

* ``<bn>.subnet_running_mean`` / ``<bn>.subnet_running_var``: (K, C), row k for the k-th
  subnet of ``network.subnets()`` (``dense`` first, then sorted by pattern and sparsity).

The row order is that of the masks the same checkpoint holds, so no names are stored; a
checkpoint whose row count differs from its subnet count is an error. The live
``running_mean`` / ``running_var`` stay what training left: :func:`stored_bn_stats` puts a
subnet's rows in place for the length of a ``with`` block and restores them on exit.

Frozen BatchNorms (:func:`~.recalibration.frozen_batchnorms`: ``norm_eval=True`` or
affine parameters without gradients) get no rows unless asked: every subnet uses the
statistics they were loaded with.

The statistics fit the weights they were estimated with: training further makes them stale,
so only the end of training (or a tool run on the final checkpoint) should store them.
"""
import contextlib

from .recalibration import (add_rows, batchnorms, copy_all, recalibrated_bn, restore_bn_stats,
                            row_views, save_bn_stats)

STORED = ('running_mean', 'running_var')
PREFIX = 'subnet_'


def _with_stats(model, include_frozen_bn=True, frozen=None):
    """``{name: BN}`` of the BatchNorm layers that track running statistics."""
    return {n: m for n, m in batchnorms(model, include_frozen_bn, frozen).items()
            if m.running_mean is not None}


def _stored(model):
    """``{name: BN}`` of the BatchNorm layers that hold stored-stat rows."""
    return {n: m for n, m in _with_stats(model).items() if hasattr(m, PREFIX + STORED[0])}


def stored_bn_count(model):
    """How many subnets' statistics the model's BatchNorms store (0 when none)."""
    counts = {getattr(m, PREFIX + STORED[0]).shape[0] for m in _stored(model).values()}
    if len(counts) > 1:
        raise ValueError(f'stored BatchNorm statistics disagree on the subnet count: {counts}')
    return counts.pop() if counts else 0


def register_stored_bn_stats(model, count, names=None, include_frozen_bn=False):
    """Give BatchNorms with running statistics ``(count, C)`` stored-stat buffers, each
    row a copy of the live statistics until a checkpoint or :func:`store_subnet_bn_stats`
    fills it (register before loading a checkpoint that holds them, so they load instead of
    being dropped).

    Args:
        model: The network.
        count: Rows per BatchNorm (the number of subnets).
        names: The BatchNorms to give rows (e.g. those a checkpoint stores; names the model
            lacks are ignored). Default: every one that is not frozen.
        include_frozen_bn: Without ``names``, the frozen BatchNorms get rows too.
    """
    norms = _with_stats(model, include_frozen_bn)
    if names is not None:
        norms = {n: m for n, m in _with_stats(model).items() if n in set(names)}
    for bn in norms.values():
        add_rows(bn, PREFIX, STORED, count)


def drop_stored_bn_stats(model):
    """Remove the stored-stat buffers (e.g. from an exported copy, which must load into a
    plain MMDetection model)."""
    for bn in _with_stats(model).values():
        for name in STORED:
            bn._buffers.pop(PREFIX + name, None)


def check_stored_bn_stats(model, network):
    """The number of stored subnets; raises ValueError when it is not ``network``'s."""
    count, held = stored_bn_count(model), len(network.subnets())
    if count and count != held:
        raise ValueError(f'the stored BatchNorm statistics are for {count} subnets, but the '
                         f'masks hold {held} ({", ".join(s.name for s in network.subnets())})'
                         ': they were stored with other masks')
    return count


def store_subnet_bn_stats(network, forward_batches, progress=None, include_frozen_bn=False):
    """Estimate and store every subnet's BatchNorm statistics (in place).

    Each subnet of ``network.subnets()`` is made active and its statistics re-estimated
    with :func:`~.batchnorm.recalibrated_bn` (exact averages over ``forward_batches``); the
    live statistics and the active subnet are restored afterwards.

    Args:
        network: A :class:`~.attach.SparseNetwork`.
        forward_batches: Callable running the model on the calibration batches (the same
            batches for every subnet).
        progress: Optional callable called with each subnet after it is stored.
        include_frozen_bn: Store (re-estimate) the frozen BatchNorms' statistics too.
            Which are frozen is ``network.frozen_bn``'s, read from the trained model (so
            ``network`` may be an EMA copy's).

    Returns:
        list[SubnetSpec]: the subnets, in row order. When no BatchNorm with statistics is
        left (none, or every one frozen), nothing is stored and ``forward_batches`` is not
        run (:func:`stored_bn_count` is then 0).
    """
    model, specs, active = network.model, network.subnets(), network.active
    frozen = network.frozen_bn
    norms = _with_stats(model, include_frozen_bn, frozen)
    if stored_bn_count(model) != len(specs) or set(_stored(model)) != set(norms):
        drop_stored_bn_stats(model)  # e.g. rows a checkpoint stored for other BatchNorms
        if not norms:
            return specs
        register_stored_bn_stats(model, len(specs), names=list(norms))
    norms = norms.values()
    try:
        for row, spec in enumerate(specs):
            network.set_active(spec)
            with recalibrated_bn(model, forward_batches, include_frozen_bn, frozen):
                live, (rows, ) = row_views(norms, PREFIX, STORED, row)
                copy_all(rows, live)
            if progress is not None:
                progress(spec)
    finally:
        network.set_active(active)
    return specs


@contextlib.contextmanager
def stored_bn_stats(network, spec):
    """Make ``spec``'s stored statistics live for the block; restore the previous ones.

    Raises:
        ValueError: the model stores no statistics, or stored them for other masks.
        SubnetNameError: ``spec`` is not a subnet the masks hold.
    """
    model = network.model
    if not check_stored_bn_stats(model, network):
        raise ValueError('the model stores no per-subnet BatchNorm statistics')
    row = network.subnets().index(network.resolve(spec))
    saved = save_bn_stats(model)
    try:
        live, (rows, ) = row_views(_stored(model).values(), PREFIX, STORED, row)
        copy_all(live, rows)
        yield
    finally:
        restore_bn_stats(model, saved)
