"""Spartan sparse training inside MMDetection's own training loop."""
from mmengine.hooks import Hook

from mmsparse.core import DENSE
from mmsparse.core.methods.spartan import (ALLOCATIONS, SpartanMasker, SpartanSchedule,
                                           check_spartan_schedule, clear_forward_weights,
                                           default_beta_end, flops_costs, spartan_forward)
from mmsparse.core.subnets import SubnetSpec
from mmsparse.models import detector_loss_run
from mmsparse.registry import HOOKS
from ..network import broadcast_masks, required_network, unwrap

COST_MODELS = ('params', 'flops')


def _check_pair(value, option, allow_none=False):
    """Raise unless ``value`` is two positive integers (or None where allowed)."""
    if value is None and allow_none:
        return None
    if (not isinstance(value, (tuple, list)) or len(value) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1
                       for v in value)):
        raise ValueError(f'SpartanHook {option} must be two positive integers, got {value!r}')
    return tuple(value)


@HOOKS.register_module()
class SpartanHook(Hook):
    """Train the masked layers with Spartan: soft top-k masks, dual averaging, frozen end.

    Needs :class:`SparseSubnetsHook` holding the target subnet (``unstructured@<sparsity>``,
    or ``block@<sparsity>`` with ``mask_spec=dict(block_shape=...)``), which selects the
    layers. Before every iteration the soft masks are rebuilt from the current (just
    updated) weights and each masked layer's forward weight becomes ``Π_k(m ⊙ w)`` with a
    straight-through gradient to the dense weight; the hard mask is written to the target
    subnet's standard buffer, so checkpoints evaluate (``tools/test.py --subnets
    unstructured@0.80``) and export without Spartan code. From ``freeze_at`` on, the soft
    mask is merged into the weights once and the frozen subnet is fine-tuned.

    Distributed: the masks are recomputed on every rank from the weights, which DDP keeps
    identical after each step, by the same deterministic code, so every rank computes the
    same masks; the stored masks are also broadcast from rank 0 when they freeze.

    Args:
        sparsity: Target sparsity (fraction of weights, or of FLOPs with ``cost='flops'``).
        allocation: ``'global'`` (learned per-layer budget), ``'uniform'`` or ``'erk'``.
        block_shape: (out, in) block dims for block sparsity; None: unstructured.
        cost: ``'params'`` (unit cost per weight) or ``'flops'`` (cost per weight = the
            layer's output H·W: high-resolution layers are pruned more).
        anneal_end: Fraction of training over which density falls from 1 to the target.
        beta_start, beta_end: β schedule; ``beta_end`` None: ``20·sqrt(bo·bi)``.
        freeze_at: Fraction of training after which the mask is frozen.
        through_mask: Differentiate through the soft mask (Spartan); False: plain dual
            averaging with soft-masked weights.
        analysis_image_size: (H, W) of the synthetic image for the FLOPs cost model.
        tol: Budget tolerance of the soft top-k (relative).
    """

    priority = 'ABOVE_NORMAL'  # after SparseSubnetsHook (VERY_HIGH) has attached the layers

    def __init__(self, sparsity=0.8, allocation='global', block_shape=None, cost='params',
                 anneal_end=0.2, beta_start=1.0, beta_end=None, freeze_at=0.8,
                 through_mask=True, analysis_image_size=(128, 128), tol=1e-4):
        if allocation not in ALLOCATIONS:
            raise ValueError(f'SpartanHook allocation must be one of {ALLOCATIONS}, got '
                             f'{allocation!r}')
        if cost not in COST_MODELS:
            raise ValueError(f'SpartanHook cost must be one of {COST_MODELS}, got {cost!r}')
        if not tol > 0:
            raise ValueError(f'SpartanHook tol must be > 0, got {tol!r}')
        self.sparsity = float(sparsity)
        self.allocation = allocation
        self.block_shape = _check_pair(block_shape, 'block_shape', allow_none=True)
        self.cost = cost
        self.schedule_args = dict(anneal_end=anneal_end, beta_start=beta_start,
                                  beta_end=(default_beta_end(self.block_shape)
                                            if beta_end is None else beta_end),
                                  freeze_at=freeze_at)
        check_spartan_schedule(self.sparsity, **self.schedule_args)
        self.through_mask = through_mask
        self.analysis_image_size = _check_pair(analysis_image_size, 'analysis_image_size')
        self.tol = tol
        self.masker = None
        pattern = 'unstructured' if self.block_shape is None else 'block'
        self.target = SubnetSpec(pattern, round(self.sparsity, 6))

    def _network(self, runner):
        return required_network(runner, 'SpartanHook')

    def before_train(self, runner):
        network = self._network(runner)
        if self.target not in network.subnets():
            raise ValueError(f'SpartanHook stores its mask as {self.target.name}, but '
                             'SparseSubnetsHook holds '
                             f'{[s.name for s in network.subnets()]}: add '
                             f"subnets=['{self.target.name}'] to it")
        block = network.layers[next(iter(network.layers))].mask_block_shape.tolist()
        if self.block_shape is not None and tuple(block) != self.block_shape:
            raise ValueError(f'SpartanHook block_shape {self.block_shape} differs from the '
                             f"SparseSubnetsHook's mask_spec block_shape {tuple(block)}")
        costs = None
        if self.cost == 'flops':
            costs = flops_costs(unwrap(runner.model),
                                detector_loss_run(self.analysis_image_size),
                                list(network.layers))
        self.masker = SpartanMasker(network.layers, self.allocation, self.block_shape,
                                    costs, tol=self.tol)
        self.schedule = SpartanSchedule(self.sparsity, runner.max_iters, **self.schedule_args)

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        network = self._network(runner)
        it = runner.iter
        schedule = self.schedule
        hub = runner.message_hub
        if schedule.frozen(it):
            if it == schedule.freeze_iter:  # once (a resumed run past it has merged already)
                self.masker.freeze(self.sparsity, schedule.beta_end)
                broadcast_masks(network)  # every rank's stored mask rank 0's
                runner.logger.info(f'mmsparse: iteration {it}: Spartan mask frozen '
                                   f'({self.target.name}); fine-tuning the subnet')
            network.set_active(self.target)
            hub.update_scalar('train/spartan_density', 1.0 - self.sparsity)
            return
        network.set_active(DENSE)
        sparsity, beta = schedule.sparsity_at(it), schedule.beta_at(it)
        hub.update_scalar('train/spartan_density', 1.0 - sparsity)
        hub.update_scalar('train/spartan_beta', beta)
        if sparsity <= 0:
            return
        masks = spartan_forward(self.masker, sparsity, beta, self.through_mask)
        self.masker.store(masks, self.sparsity)

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        if self.masker is not None:
            # Drop the iteration's graph; validation sees plain masked layers.
            clear_forward_weights(self.masker.layers)

    def after_train(self, runner):
        if self.masker is not None:
            clear_forward_weights(self.masker.layers)
        self._network(runner).set_active(DENSE)
