"""Attach mmsparse's masked layers to the Runner's model (train and test)."""
import torch
from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present
from mmengine.dist import broadcast, is_distributed
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper

from mmsparse.core import MaskSpec, check_selection, generate_masks, is_mask_key, parse_subnets
from mmsparse.core.batchnorm.stored_stats import PREFIX as STORED_BN_PREFIX
from mmsparse.core.batchnorm.stored_stats import (drop_stored_bn_stats, register_stored_bn_stats,
                                                  stored_bn_count)
from mmsparse.core.subnets import cocktail_subnets
from mmsparse.models import (attach_network, attached_network, sparsify_checkpoint_layers,
                             sparsify_detector)
from mmsparse.registry import HOOKS

SUBNET_SETS = {'cocktail': cocktail_subnets}


def unwrap(model):
    return model.module if is_model_wrapper(model) else model


def required_network(runner, hook, needs='the masked layers'):
    """The SparseNetwork that SparseSubnetsHook attached to the runner's model; fails naming
    ``hook`` (the hook that needs it) when the config lacks SparseSubnetsHook."""
    network = attached_network(unwrap(runner.model))
    if network is None:
        raise RuntimeError(f'{hook} needs SparseSubnetsHook in custom_hooks (it attaches '
                           f'{needs})')
    return network


def require_dense_momentum(runner, who):
    """Fail, naming ``who``, when the optimizer wrapper masks momentum: a straight-through
    update moves the weights a subnet removes, so their momentum must stay."""
    if getattr(runner.optim_wrapper, 'mask_momentum', False):
        raise ValueError(f'{who}: the optimizer wrapper masks momentum, but the '
                         'straight-through update needs dense momentum; use OptimWrapper '
                         '(or mask_momentum=False)')


def broadcast_masks(network):
    """Make every rank's masks rank 0's (they already agree when computed from DDP's
    synchronised weights; this makes it explicit and robust to numeric drift)."""
    if not is_distributed():
        return
    for layer in network.layers.values():
        for name, buffer in layer.named_buffers(recurse=False):
            if name.startswith('mask_'):
                broadcast(buffer, 0)
        layer._mask_version += 1


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


@HOOKS.register_module()
class SparseSubnetsHook(Hook):
    """Turn the model's chosen layers into masked layers holding ``subnets``.

    Runs at ``before_run``, i.e. before mmengine loads or resumes a checkpoint, so the mask
    buffers exist and load with it. In training, masks are generated from the weights at
    ``before_train`` when the loaded checkpoint held none.

    Args:
        subnets: Subnet names, or ``'cocktail'`` for the 24 Sparse Cocktail subnets. None:
            take the masked layers from the checkpoint being loaded (``load_from``), as
            ``tools/test.py`` does; a checkpoint without masks leaves the model dense.
        include, exclude, sparsify_input_layers, sparsify_output_layers: layer selection
            (see :func:`mmsparse.core.select_layers`).
        mask_spec: kwargs of :class:`mmsparse.core.MaskSpec`.
        analysis_image_size: (H, W) of the synthetic image for dependency analysis.
        channel_groups: Let channel subnets also remove the channels that several layers
            share, keeping them equal across the group: ResNet's residual streams and the
            FPN's outputs (with them RoIAlign and the heads' inputs shrink). Default False.
    """

    priority = 'VERY_HIGH'

    def __init__(self, subnets=None, include=('*', ), exclude=(), sparsify_input_layers=False,
                 sparsify_output_layers=False, mask_spec=None, analysis_image_size=(128, 128),
                 channel_groups=False):
        if isinstance(subnets, str):
            if subnets not in SUBNET_SETS:
                raise ValueError(f'unknown subnet set {subnets!r}; known: {sorted(SUBNET_SETS)}'
                                 ' (or give a list of subnet names)')
            subnets = SUBNET_SETS[subnets]()
        self.subnets = None if subnets is None else parse_subnets(subnets)
        self.include, self.exclude = tuple(include), tuple(exclude)
        self.sparsify_input_layers = sparsify_input_layers
        self.sparsify_output_layers = sparsify_output_layers
        self.mask_spec = MaskSpec(**(mask_spec or {}))
        self.analysis_image_size = tuple(analysis_image_size)
        self.channel_groups = channel_groups

    def before_run(self, runner):
        model = unwrap(runner.model)
        if attached_network(model) is not None:
            return
        if self.subnets is not None:
            network = sparsify_detector(model, self.include, self.exclude,
                                        self.analysis_image_size,
                                        sparsify_input_layers=self.sparsify_input_layers,
                                        sparsify_output_layers=self.sparsify_output_layers,
                                        channel_groups=self.channel_groups)
            check_selection(network, self.subnets, self.mask_spec.block_shape)
            if runner.cfg.get('load_from'):  # e.g. tools/test.py with a training config
                register_checkpoint_bn_stats(model, checkpoint_state(runner.cfg.load_from))
        else:
            load_from = runner.cfg.get('load_from')
            network = (checkpoint_network(model, load_from, self.analysis_image_size)
                       if load_from else None)
            if network is None:
                runner.logger.info('mmsparse: the checkpoint holds no masks; only the dense '
                                   'network can be evaluated')
                return
        attach_network(model, network)
        runner.logger.info(f'mmsparse: {len(network.layers)} masked layers '
                           f'({len(network.channel_layers)} with removable channels)')

    def before_train(self, runner):
        network = attached_network(unwrap(runner.model))
        if network is None:
            return
        if stored_bn_count(network.model):
            # Training changes the weights the loaded statistics were estimated for.
            drop_stored_bn_stats(network.model)
            runner.logger.info('mmsparse: dropped the checkpoint\'s stored per-subnet '
                               'BatchNorm statistics (training makes them stale)')
        if hasattr(runner.optim_wrapper, 'masked_params'):  # mmsparse's wrappers
            runner.optim_wrapper.masked_params = {layer.dense_weight: layer
                                                  for layer in network.layers.values()}
        if self.subnets is None or holds_masks(network):
            return
        generate_masks(network, self.subnets, self.mask_spec)
        runner.logger.info('mmsparse: generated masks for '
                           f'{", ".join(s.name for s in network.subnets())}')
