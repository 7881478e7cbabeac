"""Attach mmsparse's masked layers to the Runner's model (train and test)."""
from mmengine.hooks import Hook

from mmsparse.core import MaskSpec, check_selection, generate_masks, parse_subnets
from mmsparse.core.batchnorm.stored_stats import drop_stored_bn_stats, stored_bn_count
from mmsparse.core.subnets import cocktail_subnets
from mmsparse.models import attach_network, attached_network, sparsify_detector
from mmsparse.registry import HOOKS

from ..network import unwrap
from ..sparse_checkpoint import (checkpoint_network, checkpoint_state, holds_masks,
                                 register_checkpoint_bn_stats)

SUBNET_SETS = {'cocktail': cocktail_subnets}


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
