"""Chase (channel-aware dynamic sparse training) inside MMDetection's own training loop."""
from mmengine.dist import all_reduce, is_distributed
from mmengine.hooks import Hook

from mmsparse.core.methods.chase import (ChaseSchedule, DenseGradientRecorder, apply_chase_masks,
                                         chase_update, check_chase_options, check_uncoupled,
                                         init_chase_masks)
from mmsparse.registry import HOOKS
from ..network import broadcast_masks, required_network
from ..sparse_checkpoint import masked_layer_names


@HOOKS.register_module()
class ChaseHook(Hook):
    """Train one unstructured sparse subnet with DST and remove channels on the way (Chase).

    Needs :class:`SparseSubnetsHook` listing ``unstructured@<sparsity>`` and
    ``channel@<channel_sparsity>`` (it attaches the masked layers and finds the removable
    channels). Masks come from :mod:`mmsparse.core.methods.chase`: ERK initialisation unless the
    loaded checkpoint holds masks, an update every ``update_interval`` iterations, weights
    and optimizer state masked after every step. The iteration trains ``unstructured@S``;
    iterations that end in an update run ``dense`` (identical, since pruned weights are
    exactly zero) to record dense gradients for growth. Everything is a function of the
    iteration counter and the checkpointed buffers, so ``--resume`` continues exactly.

    Args:
        sparsity: Unstructured sparsity S (global over all masked weights).
        channel_sparsity: Fraction S_c of removable channels removed at the end.
        update_interval, update_end, extra_density, drop_fraction, beta, erk_power,
            prune_scope: see :class:`mmsparse.core.methods.chase.ChaseSchedule`.
    """

    priority = 'ABOVE_NORMAL'  # after SparseSubnetsHook; before CheckpointHook saves

    def __init__(self, sparsity=0.5, channel_sparsity=0.3, update_interval=100,
                 update_end=0.8, extra_density=0.1, drop_fraction=0.3, beta=0.5,
                 erk_power=1.0, prune_scope='global'):
        self.kwargs = dict(sparsity=sparsity, channel_sparsity=channel_sparsity,
                           update_interval=update_interval, update_end=update_end,
                           extra_density=extra_density, drop_fraction=drop_fraction, beta=beta,
                           erk_power=erk_power, prune_scope=prune_scope)
        check_chase_options(**self.kwargs)  # the schedule itself needs max_iters
        self.loaded_masks = False
        self.recorder = None

    def _network(self, runner):
        return required_network(runner, 'ChaseHook')

    def after_load_checkpoint(self, runner, checkpoint):
        # A checkpoint with masks (a Chase run, resumed or fine-tuned) keeps them; a dense
        # one (e.g. a stock MMDetection checkpoint) starts from ERK masks.
        self.loaded_masks = bool(masked_layer_names(checkpoint.get('state_dict', checkpoint)))

    def before_train(self, runner):
        network = self._network(runner)
        check_uncoupled(network, 'ChaseHook')
        self.schedule = ChaseSchedule(max_iters=runner.max_iters, **self.kwargs)
        self.modules = dict(network.model.named_modules())
        if not self.loaded_masks:
            densities = init_chase_masks(network, self.schedule)
            broadcast_masks(network)
            dense = sum(d >= 1.0 for d in densities.values())
            runner.logger.info(f'mmsparse: Chase ERK masks at density '
                               f'{self.schedule.density_at(0):.3f} ({dense} of '
                               f'{len(densities)} layers dense); updates every '
                               f'{self.schedule.update_interval} iterations until '
                               f'{self.schedule.last_update}')
            apply_chase_masks(network, self.schedule, runner.optim_wrapper.optimizer,
                              self.modules)
        network.set_active(self.schedule.unstructured)
        self.recorder = DenseGradientRecorder(network, self.schedule)

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        network = self._network(runner)
        network.set_active(self.schedule.unstructured)
        if self.schedule.is_update(runner.iter + 1):
            self.recorder.start()

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        network = self._network(runner)
        optimizer = runner.optim_wrapper.optimizer
        completed = runner.iter + 1
        if self.schedule.is_update(completed):
            grads = self.recorder.stop()
            if is_distributed():  # grow from the global gradient, not one rank's batch
                for grad in grads.values():
                    all_reduce(grad, op='mean')
            info = chase_update(network, self.schedule, completed, grads)
            broadcast_masks(network)  # identical on every rank, whatever numeric drift
            runner.logger.info(
                f'mmsparse: Chase update at iteration {completed}: density '
                f'{info["density"]:.3f}, pruned {info["pruned"]}, grown {info["grown"]}, '
                f'channels removed {info["removed_channels"]}/{info["channels"]}')
            runner.message_hub.update_scalar('train/chase_removed_channels',
                                             info['removed_channels'])
        apply_chase_masks(network, self.schedule, optimizer, self.modules)

    def after_train(self, runner):
        if self.recorder is not None and self.recorder.handles:
            self.recorder.stop()
        self._network(runner).set_active('dense')
