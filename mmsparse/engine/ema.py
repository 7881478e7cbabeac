"""mmsparse with mmengine's EMAHook: the EMA copy holds the live model's masks.

EMAHook deep-copies the model at ``before_run`` (after SparseSubnetsHook attached the
masked layers, so the copy has its own SparseNetwork), averages the copy's parameters (and,
with ``update_buffers=True``, its floating buffers) after every iteration, and swaps the
copy's weights into the live model for validation and into the checkpoint. Masks are not
weights to average: the copy must hold exactly the live model's masks, whose buffers change
shape when they are first generated. SparseSubnetsHook calls :func:`sync_ema_masks` before
EMAHook acts (higher priority); SubnetBNStatsHook estimates the stored statistics with the
EMA weights (:func:`ema_weights`), the ones validation and the checkpoint use.
"""
import contextlib

import torch

from mmsparse.core import is_mask_key
from mmsparse.core.batchnorm.stored_stats import PREFIX, STORED
from mmsparse.models import attached_network


def ema_models(runner):
    """The averaged models of the runner's EMA hooks (mmengine's ``EMAHook`` and
    subclasses: hooks with an ``ema_model``)."""
    return [hook.ema_model for hook in getattr(runner, 'hooks', [])
            if getattr(hook, 'ema_model', None) is not None]


def _network_of(ema):
    network = attached_network(ema.module)
    if network is None:
        raise RuntimeError(
            'mmsparse: the EMA model has no masked layers: EMAHook copied the model before '
            'SparseSubnetsHook attached them. Give EMAHook a priority below VERY_HIGH (the '
            'default NORMAL, or 49 as in RTMDet, works).')
    return network


def _refresh_averaged(ema):
    # With update_buffers=True the averaged tensors are a state_dict taken when the copy was
    # made; buffers replaced since (masks sized, statistics stored) must be taken again.
    if getattr(ema, 'update_buffers', False):
        ema.avg_parameters = ema.module.state_dict()


def sync_ema_masks(runner, network):
    """Copy every masked layer's mask buffers from ``network`` (the live model's) into each
    EMA model's copy of that layer (resized where the shapes differ)."""
    for ema in ema_models(runner):
        layers = _network_of(ema).layers
        for name, layer in network.layers.items():
            masks = {k: v for k, v in layer.state_dict().items() if is_mask_key(k)}
            layers[name].load_state_dict(masks, strict=False)
        _refresh_averaged(ema)


@contextlib.contextmanager
def ema_weights(runner, model):
    """Context with the EMA copy's parameters in the live ``model`` (swapped by name, as
    EMAHook swaps them for validation); nothing changes without an EMA hook. Estimating on
    the live model keeps its view of which layers train (the copy's parameters all have
    ``requires_grad=False``)."""
    models = ema_models(runner)
    if len(models) > 1:
        raise RuntimeError(f'mmsparse: {len(models)} EMA hooks in custom_hooks; use one')
    pairs = []
    if models:
        averaged = dict(models[0].module.named_parameters())
        pairs = [(p, averaged[n]) for n, p in model.named_parameters() if n in averaged]

    def swap():
        with torch.no_grad():
            for live, ema in pairs:
                tmp = live.detach().clone()
                live.copy_(ema)
                ema.copy_(tmp)
    swap()
    try:
        yield
    finally:
        swap()


def share_stored_bn_stats(runner, model):
    """After SubnetBNStatsHook stored statistics in the live ``model``: give every EMA copy
    the same stored buffers, so EMAHook's swaps pair them and the checkpoint holds them."""
    stored = {(name, PREFIX + stat): module._buffers[PREFIX + stat]
              for name, module in model.named_modules() for stat in STORED
              if module._buffers.get(PREFIX + stat) is not None}
    for ema in ema_models(runner):
        modules = dict(ema.module.named_modules())
        for (name, key), buffer in stored.items():
            modules[name].register_buffer(key, buffer.detach().clone())
        _refresh_averaged(ema)
