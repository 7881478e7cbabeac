"""Make mmengine checkpoints load under ``torch.load(weights_only=True)``.

torch >= 2.6 defaults to ``weights_only=True``. mmengine 0.10.7's resume checkpoints hold a
few non-tensor objects (the message hub's ``HistoryBuffer``, numpy scalars, arrays and
dtypes), so ``--resume`` fails with an ``UnpicklingError``. Rather than switching the check
off for every load, we allow-list exactly those classes; everything else still fails.
mmsparse's own state (masks, schedule position) is tensors and plain Python values, so it
needs nothing here.

One object needs more than an allow-list: ``HistoryBuffer.__getstate__`` adds its
``statistics_methods`` dict, which pickles functions through ``builtins.getattr``, and
allow-listing ``getattr`` would defeat the check. That dict is redundant (the methods are
registered on the class, and ``__setstate__`` restores the defaults), so we register a
``copyreg`` reducer that leaves it out of checkpoints written by processes that import mmsparse.
Resume files written without mmsparse still need ``weights_only=False`` to load.
"""
import copyreg

import numpy as np
import torch


def _numpy_globals():
    """Numpy objects pickled inside mmengine checkpoints (arrays, scalars, dtypes)."""
    try:  # numpy >= 2 moved the pickling helpers to numpy._core
        from numpy._core.multiarray import _reconstruct, scalar
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct, scalar
    dtype_classes = [type(np.dtype(t)) for t in (
        np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32,
        np.uint64, np.float16, np.float32, np.float64, np.str_)]
    return [_reconstruct, scalar, np.ndarray, np.dtype, *dtype_classes]


def _reduce_history_buffer(buffer):
    """Pickle a HistoryBuffer as class + state, without its bound statistics methods."""
    state = {k: v for k, v in buffer.__dict__.items() if k != 'statistics_methods'}
    return copyreg.__newobj__, (type(buffer), ), state


def register_checkpoint_safe_globals():
    """Allow-list the globals of mmengine checkpoints for ``weights_only`` loading.

    Safe to call many times. A no-op on torch versions without ``add_safe_globals``.
    """
    if not hasattr(torch.serialization, 'add_safe_globals'):  # torch < 2.4
        return
    from mmengine.logging.history_buffer import HistoryBuffer
    copyreg.pickle(HistoryBuffer, _reduce_history_buffer)
    torch.serialization.add_safe_globals([HistoryBuffer, *_numpy_globals()])
