"""Read mmsparse checkpoints: the masked layers and stored statistics they hold, and a
detector loaded from one outside a Runner (for the tools that edit or export it)."""
import os.path as osp

import torch
from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present

from mmdet.registry import MODELS
from mmengine.config import Config

from mmsparse.core import is_mask_key
from mmsparse.core.batchnorm.stored_stats import PREFIX as STORED_BN_PREFIX
from mmsparse.core.batchnorm.stored_stats import register_stored_bn_stats
from mmsparse.models import attach_network, sparsify_checkpoint_layers


def masked_layer_names(state_dict):
    """Names of the masked layers in a state dict; empty if it holds no subnet's mask.

    Every masked layer has all mask buffers (possibly empty for some patterns), so layers
    are found by the buffers' presence and the checkpoint "holds masks" when any is filled.
    """
    names = sorted(k[:-len('.mask_unstructured_ratios')] for k in state_dict
                   if k.endswith('.mask_unstructured_ratios'))
    filled = any(v.numel() > 0 for k, v in state_dict.items()
                 if is_mask_key(k) and (k.endswith('_ratios') or k.endswith('_nm_nm')))
    return names if filled else []


def read_checkpoint(path):
    """The state dict and meta dict of checkpoint ``path``, memory-mapped: only what the
    caller reads (key names, the small ratio buffers) comes off the disk; the weights are
    loaded later by mmengine or the caller.

    A checkpoint saved from a DDP-wrapped model (not by mmengine, which unwraps it) has
    every key prefixed ``module.``; the prefix is removed, as mmengine's loader does, so
    its masked layers are found under the model's own names.
    """
    checkpoint = torch.load(path, map_location='cpu', weights_only=True, mmap=True)
    state = checkpoint.get('state_dict', checkpoint)
    consume_prefix_in_state_dict_if_present(state, 'module.')
    return state, checkpoint.get('meta', {})


def checkpoint_state(path):
    """The state dict of checkpoint ``path`` (see ``read_checkpoint``)."""
    return read_checkpoint(path)[0]


def checkpoint_network(model, checkpoint, image_size=(128, 128)):
    """A SparseNetwork of ``model`` over the masked layers a checkpoint holds (stem and
    heads included, channel groups if its channel masks need them); None if it holds no
    masks. When the checkpoint stores per-subnet BatchNorm statistics, ``model`` gets the
    buffers that load them.

    Args:
        checkpoint: The checkpoint's path, or its state dict when the caller has read it.
    """
    state = checkpoint if isinstance(checkpoint, dict) else checkpoint_state(checkpoint)
    names = masked_layer_names(state)
    if not names:
        return None
    channel = [n for n in names if state[f'{n}.mask_channel_ratios'].numel()]
    network = sparsify_checkpoint_layers(model, names, channel, image_size)
    register_checkpoint_bn_stats(model, state)
    return network


def register_checkpoint_bn_stats(model, state):
    """Give ``model`` the buffers that load a checkpoint state dict's stored per-subnet
    BatchNorm statistics, when it holds some (otherwise they would be dropped as
    unexpected keys)."""
    stored = [v.shape[0] for k, v in state.items()
              if k.endswith('.' + STORED_BN_PREFIX + 'running_mean')]
    if stored:
        register_stored_bn_stats(model, stored[0])


def holds_masks(network):
    return any(s.name != 'dense' for s in network.subnets())


def tool_config(args):
    """The config of a tool taking ``config``, ``checkpoint`` and ``--cfg-options``, after
    checking that the checkpoint exists (before anything slow is built)."""
    cfg = Config.fromfile(args.config)
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    if not osp.isfile(args.checkpoint):
        raise FileNotFoundError(f'checkpoint {args.checkpoint!r} does not exist')
    return cfg


def analysis_image_size(cfg):
    """The SparseSubnetsHook's analysis image size in the config, or its default."""
    for hook in cfg.get('custom_hooks', None) or []:
        if 'SparseSubnetsHook' in str(hook.get('type', '')):
            return tuple(hook.get('analysis_image_size', (128, 128)))
    return (128, 128)


def load_sparse_detector(cfg, checkpoint):
    """The config's detector with the checkpoint's weights and, when it holds masks, its
    SparseNetwork (masked layers and stored BatchNorm statistics attached as
    ``tools/test.py``'s SparseSubnetsHook does, and remembered on the model), in eval mode.

    Returns:
        (model, network or None, the checkpoint's meta dict).

    Raises:
        ValueError: the checkpoint lacks keys of the config's model (another model). mmengine
            would only warn, and the tool would then run on random weights.
    """
    model = MODELS.build(cfg.model)
    # Read once; the DDP 'module.' prefix, if any, is already removed.
    state, meta = read_checkpoint(checkpoint)
    network = checkpoint_network(model, state, analysis_image_size(cfg))
    if network is not None:
        attach_network(model, network)
    missing, _ = model.load_state_dict(state, strict=False)
    if missing:
        raise ValueError(f'checkpoint {checkpoint!r} does not fit the config\'s model: '
                         f'{len(missing)} keys missing, e.g. {", ".join(missing[:3])}')
    model.eval()
    return model, network, meta
