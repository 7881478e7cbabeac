"""AST (Alternating Sparse Training) inside MMDetection's own training loop."""
from mmengine.dist import all_reduce, is_distributed
from mmengine.hooks import Hook

from mmsparse.core import DENSE, parse_subnets
from mmsparse.core.batchnorm.switchable import OptimizerStateSlots, SwitchableBatchNorm
from mmsparse.core.methods.ast import ASTMasker, ast_order, check_ast_options, check_ast_specs
from mmsparse.registry import HOOKS
from ..network import broadcast_masks, required_network, unwrap

CORRECTION_SCOPES = ('masked', 'shared', 'all')
CHECKPOINT_KEY = 'mmsparse_ast'
NAME = 'SparseASTHook'


def _mean_over_ranks(grad):
    if is_distributed():  # regrow from the global gradient, not one rank's batch
        all_reduce(grad, op='mean')


@HOOKS.register_module()
class SparseASTHook(Hook):
    """Alternating sparse training of K subnets of one set of shared weights (AST).

    Needs :class:`SparseSubnetsHook` (which attaches the masked layers). Masks, schedule and
    subnet order are :class:`mmsparse.core.methods.ast.ASTMasker`'s; this hook broadcasts
    the masks from rank 0, averages the regrowth gradients over the ranks, switches the
    BatchNorm slots and checkpoints the optimizer-side state. Pair with
    ``optim_wrapper=dict(type='mmsparse.SparseOptimWrapper',
    gradient_correction=dict(group_size=K))``: its groups of K iterations are exactly one
    pass over the subnets in this hook's order (checked at ``before_train``).

    Args:
        subnets: Subnet names in training order (``unstructured@..``, ``nm@N:M``, optionally
            ``dense``); default: the sparse subnets of :class:`SparseSubnetsHook`, sorted.
            Must be every sparse subnet the model holds.
        switchable_bn: One set of BatchNorm statistics and affine parameters per subnet
            (:mod:`mmsparse.core.batchnorm.switchable`), switched with the active subnet.
        swap_bn_optimizer_state: Keep the optimizer state (momentum) of the BN parameters
            per subnet too; False shares it across subnets.
        bn_exclude: BatchNorm module names that stay shared.
        update_interval, prune_start, prune_end, prune_power, regrow_end, regrow_initial,
            regrow_final, scope: the mask schedule, see :class:`ASTMasker`.
        correction_scope: which parameters the optimizer wrapper's gradient correction
            projects: ``'masked'`` (default: the masked weight tensors), ``'shared'`` (every
            parameter but the switchable BatchNorm ones) or ``'all'`` (with switchable BN
            this projects one subnet's BN gradient against another subnet's, meaningless).
    """

    priority = 'ABOVE_NORMAL'  # after SparseSubnetsHook (VERY_HIGH) attached the layers

    def __init__(self, subnets=None, switchable_bn=True, swap_bn_optimizer_state=True,
                 bn_exclude=(), update_interval=100, prune_start=0.0, prune_end=0.5,
                 prune_power=3, regrow_end=0.8, regrow_initial=0.5, regrow_final=0.005,
                 scope='global', correction_scope='masked'):
        if correction_scope not in CORRECTION_SCOPES:
            raise ValueError(f'{NAME}: correction_scope must be one of {CORRECTION_SCOPES}, '
                             f'got {correction_scope!r}')
        self.order = None if subnets is None else check_ast_specs(parse_subnets(subnets), NAME)
        self.options = dict(update_interval=update_interval, prune_start=prune_start,
                            prune_end=prune_end, prune_power=prune_power,
                            regrow_end=regrow_end, regrow_initial=regrow_initial,
                            regrow_final=regrow_final, scope=scope)
        check_ast_options(**self.options, num_subnets=self.order and len(self.order), who=NAME)
        self.switchable_bn, self.swap_bn_optimizer_state = switchable_bn, swap_bn_optimizer_state
        self.bn_exclude, self.correction_scope = tuple(bn_exclude), correction_scope
        self.switch = self.optim_slots = self.masker = self._pending = None
        self.current = DENSE

    def _network(self, runner):
        return required_network(runner, NAME)

    # -- set-up ---------------------------------------------------------------------------
    def before_run(self, runner):
        network = self._network(runner)
        if self.order is None:
            configured = [h.subnets for h in runner.hooks
                          if isinstance(h, HOOKS.get('mmsparse.SparseSubnetsHook'))]
            if not configured or not configured[0]:
                raise ValueError(f'{NAME}: give subnets=[...] (SparseSubnetsHook has no '
                                 'subnet list to take them from)')
            self.order = ast_order(configured[0], NAME)
            check_ast_options(**self.options, num_subnets=len(self.order), who=NAME)
        if self.switchable_bn and self.switch is None:
            # Before the checkpoint loads, so the slot buffers load (or are filled) with it.
            self.switch = SwitchableBatchNorm(unwrap(runner.model),
                                              [s.name for s in self.order], self.bn_exclude)
            # Switch the slots whenever anything (this hook, the subnet loops, tools) sets
            # the active subnet.
            if self._on_switch not in network.switch_listeners:
                network.switch_listeners.append(self._on_switch)
        runner.logger.info(f'mmsparse: AST over {", ".join(s.name for s in self.order)}'
                           + (f'; switchable BatchNorm in {len(self.switch.norms)} layers'
                              if self.switch else ''))

    def _on_switch(self, spec):
        previous, index = self.switch.activate(spec.name)
        if self.optim_slots is not None:
            self.optim_slots.swap(previous, index)

    def before_train(self, runner):
        network = self._network(runner)
        held = [s for s in network.subnets() if s.pattern != 'dense']
        missing = [s.name for s in self.order if s.pattern != 'dense' and s not in held]
        extra = [s.name for s in held if s not in self.order]
        if missing or extra:
            raise ValueError(f'{NAME} trains exactly the sparse subnets the model holds; not '
                             f'held: {missing}, held but not trained: {extra}')
        wrapper = runner.optim_wrapper
        corrector = getattr(wrapper, 'corrector', None)
        num = len(self.order)
        if corrector is not None and corrector.group_size != num:
            raise ValueError(f'gradient_correction group_size={corrector.group_size} does not '
                             f'match the {num} alternating AST subnets: set '
                             f'optim_wrapper.gradient_correction=dict(group_size={num})')
        if corrector is not None:
            corrector.restrict(self._corrected_params(runner, network))
        else:
            runner.logger.info('mmsparse: AST without gradient correction (use '
                               'mmsparse.SparseOptimWrapper with gradient_correction)')
        if self.switch is not None and not self.switch.loaded:
            # mmengine runs before_run (where the slots were made) before it initialises the
            # weights: give every slot the initialised BN, not PyTorch's defaults.
            filled = self.switch.fill_from_live()
            runner.logger.info(f'mmsparse: every switchable-BN slot of {filled} layers set to '
                               'the initialised BatchNorm')
        if self.switch is not None and self.swap_bn_optimizer_state:
            self.optim_slots = OptimizerStateSlots(wrapper.optimizer, self.switch.parameters())
        state, self._pending = self._pending, None
        if state is not None:  # resuming: the optimizer-side state the checkpoint kept
            if self.optim_slots is not None and 'bn_optimizer_state' in state:
                self.optim_slots.load_state_dict(state['bn_optimizer_state'])
            if corrector is not None:
                wrapper.load_correction_state(state)
        self.masker = ASTMasker(network.layers, self.order, runner.max_iters, **self.options)

    def _corrected_params(self, runner, network):
        """The parameters gradient correction applies to (None: all), by ``correction_scope``."""
        if self.correction_scope == 'masked':
            return [layer.dense_weight for layer in network.layers.values()]
        if self.correction_scope == 'shared' and self.switch is not None:
            switched = {id(p) for p in self.switch.parameters()}
            return [p for p in unwrap(runner.model).parameters() if id(p) not in switched]
        return None

    # -- per iteration ---------------------------------------------------------------------
    def before_train_iter(self, runner, batch_idx, data_batch=None):
        network = self._network(runner)
        t = runner.iter
        if self.masker.prune_due(t):
            self.masker.prune_masks(t)
            broadcast_masks(network)
        self.current = self.masker.subnet_at(t)
        network.set_active(self.current)
        if self.masker.regrow_due(t):
            self.masker.capture()

    def after_train_iter(self, runner, batch_idx=None, data_batch=None, outputs=None):
        if self.masker.taps is not None:
            fraction = self.masker.fraction_at(runner.iter)
            swapped, kept = self.masker.regrow(self.current, fraction, _mean_over_ranks)
            broadcast_masks(self._network(runner))
            runner.logger.info(f'mmsparse: iteration {runner.iter}: {self.current.name} '
                               f'pruned and regrew {swapped} of its {kept} weights (fraction '
                               f'{fraction:.4f})')
        if self.switch is not None:
            self.switch.sync()  # slot buffers complete for the checkpoint saved after this
        if outputs is not None and 'loss' in outputs:
            loss, tag = outputs['loss'], self.current.name.replace('@', '_').replace(':', '_')
            runner.message_hub.update_scalar(
                f'train/loss_{tag}', float(loss.detach() if hasattr(loss, 'detach') else loss))
        if self.every_n_train_iters(runner, runner.log_processor.window_size):
            corrector = getattr(runner.optim_wrapper, 'corrector', None)
            runner.logger.info(f'mmsparse: iteration {runner.iter} trained {self.current.name}'
                               + ('' if corrector is None else
                                  f' (gradient correction fired {corrector.fired} times)'))

    def after_train(self, runner):
        self._network(runner).set_active(DENSE)

    # -- checkpoints -----------------------------------------------------------------------
    def before_save_checkpoint(self, runner, checkpoint):
        state = dict(subnets=[s.name for s in self.order])
        if self.optim_slots is not None:
            state['bn_optimizer_state'] = self.optim_slots.state_dict()
        if getattr(runner.optim_wrapper, 'corrector', None) is not None:
            state.update(runner.optim_wrapper.correction_state(runner.iter + 1))
        checkpoint[CHECKPOINT_KEY] = state

    def after_load_checkpoint(self, runner, checkpoint):
        state = checkpoint.get(CHECKPOINT_KEY)
        if state is None:
            return
        names = [s.name for s in self.order] if self.order else None
        if names is not None and state['subnets'] != names:
            raise ValueError(f'the checkpoint was trained by AST over {state["subnets"]}, the '
                             f'config alternates {names}: slots would not match')
        if getattr(runner, '_resume', False):
            self._pending = state  # the optimizer state slots exist from before_train on
