"""Attach mmsparse's masked layers to the Runner's model (train and test)."""
from mmengine.hooks import Hook
from mmengine.runner import BaseLoop

from mmsparse.core import check_selection, generate_masks
from mmsparse.core.batchnorm.stored_stats import drop_stored_bn_stats, stored_bn_count
from mmsparse.models import attach_network, attached_network, sparsify_detector
from mmsparse.registry import HOOKS
from mmsparse.utils.checkpoint import portable_checkpoint

from ..ema import ema_models, sync_ema_masks
from ..hook_options import check_subnets_hook_options
from ..network import unwrap
from ..sparse_checkpoint import (check_checkpoint_layers, checkpoint_network, holds_masks,
                                 load_from_state, reconcile_checkpoint_subnets,
                                 register_checkpoint_bn_stats)


@HOOKS.register_module()
class SparseSubnetsHook(Hook):
    """Turn the model's chosen layers into masked layers holding ``subnets``.

    Runs at ``before_run``, i.e. before mmengine loads or resumes a checkpoint, so the mask
    buffers exist and load with it. In training, masks are generated from the weights at
    ``before_train`` when the loaded checkpoint held none.

    A checkpoint whose masks hold other subnets than ``subnets``: ``--resume`` fails naming
    both lists (resuming continues the same run); ``load_from`` starts new masks for
    ``subnets`` from its weights, with a warning. ``before_train`` also checks, before the
    first iteration, that a :class:`~mmsparse.engine.runner.SubnetValLoop`'s subnets are
    held by the model.

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
        sparsify_frozen_layers: Also mask the layers whose weights do not train
            (``requires_grad=False``, e.g. the stages ``frozen_stages`` freezes). Default
            False: they stay dense (a frozen weight cannot recover from a mask) and the log
            names them.
    """

    priority = 'VERY_HIGH'

    def __init__(self, subnets=None, include=('*', ), exclude=(), sparsify_input_layers=False,
                 sparsify_output_layers=False, mask_spec=None, analysis_image_size=(128, 128),
                 channel_groups=False, sparsify_frozen_layers=False):
        options = check_subnets_hook_options(
            subnets, include=include, exclude=exclude, mask_spec=mask_spec,
            sparsify_input_layers=sparsify_input_layers,
            sparsify_output_layers=sparsify_output_layers, channel_groups=channel_groups,
            sparsify_frozen_layers=sparsify_frozen_layers,
            analysis_image_size=analysis_image_size)
        self.__dict__.update(options)

    def before_run(self, runner):
        model = unwrap(runner.model)
        if attached_network(model) is not None:
            return
        if self.subnets is not None:
            network = sparsify_detector(model, self.include, self.exclude,
                                        self.analysis_image_size,
                                        sparsify_input_layers=self.sparsify_input_layers,
                                        sparsify_output_layers=self.sparsify_output_layers,
                                        channel_groups=self.channel_groups,
                                        sparsify_frozen_layers=self.sparsify_frozen_layers)
            check_selection(network, self.subnets, self.mask_spec.block_shape)
            if runner.cfg.get('load_from'):  # e.g. tools/test.py with a training config
                state = load_from_state(runner.cfg.load_from)
                check_checkpoint_layers(state, network, self.subnets)
                register_checkpoint_bn_stats(model, state)
        else:
            load_from = runner.cfg.get('load_from')
            # a local file or a URL (e.g. a model-zoo checkpoint), as above
            network = (checkpoint_network(model, load_from_state(load_from),
                                          self.analysis_image_size)
                       if load_from else None)
            if network is None:
                runner.logger.info('mmsparse: the checkpoint holds no masks; only the dense '
                                   'network can be evaluated')
                return
        attach_network(model, network)
        if network.frozen_dense:
            runner.logger.info(f'mmsparse: {len(network.frozen_dense)} frozen layers stay dense '
                               f'(sparsify_frozen_layers=True masks them): '
                               f'{", ".join(network.frozen_dense)}')
        runner.logger.info(f'mmsparse: {len(network.layers)} masked layers '
                           f'({len(network.channel_layers)} with removable channels)')

    def after_load_checkpoint(self, runner, checkpoint):
        """Before the checkpoint's weights load: compare its subnets with ``subnets``."""
        state = checkpoint.get('state_dict', checkpoint)
        training = isinstance(getattr(runner, '_train_loop', None), BaseLoop)
        if self.subnets is None or not training or not isinstance(state, dict):
            return  # tools/test.py evaluates the subnets the checkpoint holds
        dropped = reconcile_checkpoint_subnets(state, self.subnets,
                                               resume=getattr(runner, '_resume', False))
        if dropped:  # load_from: a new run from these weights; new masks for the config
            runner.logger.warning(
                f'mmsparse: the loaded checkpoint holds masks for [{", ".join(dropped)}], the '
                f'config lists [{", ".join(s.name for s in self.subnets)}]: its masks are not '
                'loaded; new masks for the config\'s subnets are generated from its weights')

    def check_val_subnets(self, runner, network):
        """Fail now, not after the first epoch, on validation subnets the model lacks."""
        loop = getattr(runner, 'val_loop', None)  # built by Runner.train before before_run
        if loop is not None and hasattr(loop, 'check_subnets'):
            loop.check_subnets(network)

    def before_train(self, runner):
        network = attached_network(unwrap(runner.model))
        if network is None:
            self.check_val_subnets(runner, None)
            return
        if stored_bn_count(network.model):
            # Training changes the weights the loaded statistics were estimated for.
            for model in [network.model, *(ema.module for ema in ema_models(runner))]:
                drop_stored_bn_stats(model)
            runner.logger.info('mmsparse: dropped the checkpoint\'s stored per-subnet '
                               'BatchNorm statistics (training makes them stale)')
        if self.subnets is not None and not holds_masks(network):
            generate_masks(network, self.subnets, self.mask_spec)
            runner.logger.info('mmsparse: generated masks for '
                               f'{", ".join(s.name for s in network.subnets())}')
        self.check_val_subnets(runner, network)
        sync_ema_masks(runner, network)

    # EMAHook (mmengine) keeps a deep copy of the model whose weights validation and the
    # checkpoint use. Its masks must be the live model's exactly (not averaged, and sized
    # once generated): copy them before EMAHook acts (this hook's priority is higher).
    def _sync_ema(self, runner):
        network = attached_network(unwrap(runner.model))
        if network is not None:
            sync_ema_masks(runner, network)

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        self._sync_ema(runner)

    def before_val_epoch(self, runner):
        self._sync_ema(runner)

    def before_test_epoch(self, runner):
        self._sync_ema(runner)

    def before_save_checkpoint(self, runner, checkpoint):
        self._sync_ema(runner)
        # Resumable with weights_only=True also when MMDetection's own tools/train.py runs
        # an mmsparse config (mmsparse's tools add PortableCheckpointHook for every config).
        portable_checkpoint(checkpoint)
