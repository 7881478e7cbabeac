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
registered on the class, and ``__setstate__`` restores the defaults), so
:func:`portable_checkpoint` replaces, in the checkpoint dict about to be saved (and nowhere
else: pickling and copying of HistoryBuffer elsewhere in the process are unchanged), each
buffer by a stand-in that pickles as a plain ``HistoryBuffer`` without that dict.
:class:`PortableCheckpointHook` calls it before every save; ``mmsparse.engine.launch``'s
``build_runner`` (tools/train.py) registers it. Resume files written by runners without it
still need ``weights_only=False`` to load.
"""
import numpy as np
import torch
from mmengine.hooks import Hook


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


class _PortableHistoryBuffer:
    """Stands in for one HistoryBuffer in a checkpoint dict: pickles as that buffer's class
    and state, without the bound statistics methods."""

    def __init__(self, buffer):
        self.buffer = buffer

    def __reduce_ex__(self, protocol):
        state = {k: v for k, v in self.buffer.__dict__.items() if k != 'statistics_methods'}
        # An empty buffer of the class, then its state (``__setstate__``): both are what an
        # allow-listed class may do under weights_only.
        return type(self.buffer), (), state


def portable_checkpoint(checkpoint):
    """Make the message hub's HistoryBuffers in ``checkpoint`` (a dict mmengine is about to
    save) loadable with ``weights_only=True``; in place. The live message hub is untouched
    (mmengine saves copies)."""
    from mmengine.logging.history_buffer import HistoryBuffer
    scalars = (checkpoint.get('message_hub') or {}).get('log_scalars') or {}
    for key, value in scalars.items():
        if type(value) is HistoryBuffer:
            scalars[key] = _PortableHistoryBuffer(value)


class PortableCheckpointHook(Hook):
    """Calls :func:`portable_checkpoint` on every checkpoint the Runner saves (last, after
    the other hooks have added their state)."""

    priority = 'LOWEST'

    def before_save_checkpoint(self, runner, checkpoint):
        portable_checkpoint(checkpoint)


def register_checkpoint_safe_globals():
    """Allow-list the globals of mmengine checkpoints for ``weights_only`` loading.

    Safe to call many times. A no-op on torch versions without ``add_safe_globals``.
    """
    if not hasattr(torch.serialization, 'add_safe_globals'):  # torch < 2.4
        return
    from mmengine.logging.history_buffer import HistoryBuffer
    torch.serialization.add_safe_globals([HistoryBuffer, *_numpy_globals()])
