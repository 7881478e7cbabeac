"""The SparseNetwork inside a Runner's model: find it, and keep its masks equal on every rank.

Hooks, loops and tools import these helpers from here; no module imports from a hook file
except the registry's package face (``mmsparse.engine.hooks``).
"""
from mmengine.dist import broadcast, is_distributed
from mmengine.model import is_model_wrapper

from mmsparse.models import attached_network


def unwrap(model):
    """The model inside a DDP (or other mmengine) wrapper; the model itself otherwise."""
    return model.module if is_model_wrapper(model) else model


def required_network(runner, hook, needs='the masked layers'):
    """The SparseNetwork that SparseSubnetsHook attached to the runner's model; fails naming
    ``hook`` (the hook that needs it) when the config lacks SparseSubnetsHook."""
    network = attached_network(unwrap(runner.model))
    if network is None:
        raise RuntimeError(f'{hook} needs SparseSubnetsHook in custom_hooks (it attaches '
                           f'{needs})')
    return network


def broadcast_masks(network):
    """Make every rank's masks rank 0's (they already agree when computed from DDP's
    synchronised weights; this makes it explicit and robust to numeric drift)."""
    if not is_distributed():
        return
    for layer in network.layers.values():
        for name, buffer in layer.named_buffers(recurse=False):
            if name.startswith('mask_'):
                broadcast(buffer, 0)
        layer.masks_changed()
