"""AST (Alternating Sparse Training) inside MMDetection's own training loop."""
import math

import torch
from mmengine.dist import all_reduce, is_distributed
from mmengine.hooks import Hook

from mmsparse.core import DENSE, parse_subnets
from mmsparse.core.methods.ast import (ast_subnet_index, gradual_sparsity, nm_magnitude,
                                       regrow_fraction, regrow_level, regrow_nm, scheduled_levels,
                                       update_due)
from mmsparse.core.batchnorm.switchable import OptimizerStateSlots, SwitchableBatchNorm
from mmsparse.registry import HOOKS
from ..network import broadcast_masks, required_network, unwrap
from .sparse_subnets_hook import SparseSubnetsHook

AST_PATTERNS = ('unstructured', 'nm', 'dense')
CORRECTION_SCOPES = ('masked', 'shared', 'all')
CHECKPOINT_KEY = 'mmsparse_ast'


def loss_tag(spec):
    """``unstructured@0.50`` -> ``unstructured_0.50`` (a log-friendly scalar name)."""
    return spec.name.replace('@', '_').replace(':', '_')


@HOOKS.register_module()
class SparseASTHook(Hook):
    """Alternating sparse training of K subnets of one set of shared weights (AST).

    Needs :class:`SparseSubnetsHook` (which attaches the masked layers). Iteration t trains
    subnet ``t mod K`` (the same on every rank, exact on resume). Masks follow a cubic
    gradual-pruning schedule (every subnet's masks re-derived from |W| every
    ``update_interval`` iterations until ``prune_end``), then prune-and-regrow until
    ``regrow_end``: each subnet, at its first own iteration of every interval, drops its
    smallest |w| and regrows the pruned weights with the largest gradient of its effective
    weight, a fraction cosine-decaying from ``regrow_initial`` to ``regrow_final``.
    Unstructured masks stay nested (see :mod:`mmsparse.core.methods.ast`). Masks are broadcast from
    rank 0 after every update. Pair with ``optim_wrapper=dict(type='mmsparse.SparseOptimWrapper',
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
        update_interval: Iterations between mask updates (>= K).
        prune_start, prune_end, prune_power: the gradual-pruning schedule (fractions of
            training); densities fall from 1 to each subnet's target.
        regrow_end: prune-and-regrow runs from ``prune_end`` to here; masks are frozen after.
        regrow_initial, regrow_final: the cosine-decaying regrow fraction.
        scope: ``'global'`` (one magnitude threshold over all layers while pruning) or
            ``'layer'``. Prune-and-regrow keeps each layer's count.
        correction_scope: which parameters the optimizer wrapper's gradient correction
            projects: ``'masked'`` (default: the masked weight tensors, those holding the
            subnets, as the specification's "per weight tensor" of the masked gradient),
            ``'shared'`` (every parameter but the switchable BatchNorm ones) or ``'all'``
            (every parameter; with switchable BN this projects one subnet's BN gradient
            against another subnet's BN gradient, which is meaningless).
    """

    priority = 'ABOVE_NORMAL'  # after SparseSubnetsHook (VERY_HIGH) attached the layers

    def __init__(self, subnets=None, switchable_bn=True, swap_bn_optimizer_state=True,
                 bn_exclude=(), update_interval=100, prune_start=0.0, prune_end=0.5,
                 prune_power=3, regrow_end=0.8, regrow_initial=0.5, regrow_final=0.005,
                 scope='global', correction_scope='masked'):
        if correction_scope not in CORRECTION_SCOPES:
            raise ValueError(f'correction_scope must be one of {CORRECTION_SCOPES}, got '
                             f'{correction_scope!r}')
        if not 0.0 <= prune_start <= prune_end <= regrow_end <= 1.0:
            raise ValueError('need 0 <= prune_start <= prune_end <= regrow_end <= 1, got '
                             f'{prune_start}, {prune_end}, {regrow_end}')
        if scope not in ('global', 'layer'):
            raise ValueError(f"scope must be 'global' or 'layer', got {scope!r}")
        self.order = None if subnets is None else self._check_specs(parse_subnets(subnets))
        self.switchable_bn = switchable_bn
        self.swap_bn_optimizer_state = swap_bn_optimizer_state
        self.bn_exclude = tuple(bn_exclude)
        self.update_interval = int(update_interval)
        self.prune = dict(start=prune_start, end=prune_end, power=prune_power)
        self.regrow = dict(end=regrow_end, initial=regrow_initial, final=regrow_final)
        self.scope = scope
        self.correction_scope = correction_scope
        self.switch = None
        self.optim_slots = None
        self.current = DENSE
        self._taps = None
        self._pending = None

    @staticmethod
    def _check_specs(specs):
        bad = [s.name for s in specs if s.pattern not in AST_PATTERNS]
        if bad:
            raise ValueError(f'SparseASTHook: AST alternates unstructured or N:M subnets; '
                             f'cannot train {bad}')
        if not [s for s in specs if s.pattern != 'dense']:
            raise ValueError('SparseASTHook needs at least one sparse subnet')
        return specs

    def _network(self, runner):
        return required_network(runner, 'SparseASTHook')

    # -- set-up ---------------------------------------------------------------------------
    def before_run(self, runner):
        network = self._network(runner)
        if self.order is None:
            subnets_hooks = [h for h in runner.hooks if isinstance(h, SparseSubnetsHook)]
            specs = subnets_hooks[0].subnets if subnets_hooks else None
            if not specs:
                raise ValueError('SparseASTHook: give subnets=[...] (SparseSubnetsHook has '
                                 'no subnet list to take them from)')
            self.order = self._check_specs(sorted((s for s in specs if s.pattern != 'dense'),
                                                  key=lambda s: s.sort_key))
        self.num = len(self.order)
        if self.update_interval < self.num:
            raise ValueError(f'SparseASTHook: update_interval ({self.update_interval}) must '
                             f'be >= the number of subnets ({self.num})')
        if self.switchable_bn and self.switch is None:
            # Before the checkpoint loads, so the slot buffers load (or are filled) with it.
            self.switch = SwitchableBatchNorm(unwrap(runner.model),
                                              [s.name for s in self.order], self.bn_exclude)
            self._follow_set_active(network)
        runner.logger.info(f'mmsparse: AST over {", ".join(s.name for s in self.order)}'
                           + (f'; switchable BatchNorm in {len(self.switch.norms)} layers'
                              if self.switch else ''))

    def _follow_set_active(self, network):
        """Switch BatchNorm slots whenever anything (this hook, the subnet val/test loops,
        tools) sets the active subnet."""
        if self._on_switch not in network.switch_listeners:
            network.switch_listeners.append(self._on_switch)

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
            raise ValueError(f'SparseASTHook trains exactly the sparse subnets the model '
                             f'holds; not held: {missing}, held but not trained: {extra}')
        corrector = getattr(runner.optim_wrapper, 'corrector', None)
        if corrector is not None and corrector.group_size != self.num:
            raise ValueError(f'gradient_correction group_size={corrector.group_size} does not '
                             f'match the {self.num} alternating AST subnets: set '
                             f'optim_wrapper.gradient_correction=dict(group_size={self.num})')
        if getattr(runner.optim_wrapper, 'mask_momentum', False):
            # It would multiply momentum by the grad-requiring masks of update iterations.
            raise ValueError('SparseASTHook does not support optim_wrapper.mask_momentum')
        if corrector is None:
            runner.logger.info('mmsparse: AST without gradient correction (use '
                               'mmsparse.SparseOptimWrapper with gradient_correction)')
        if self.switch is not None and not self.switch.loaded:
            # mmengine runs before_run (where the slots were made) before it initialises the
            # weights: give every slot the initialised BN, not PyTorch's defaults.
            filled = self.switch.fill_from_live()
            runner.logger.info(f'mmsparse: every switchable-BN slot of {filled} layers set to '
                               'the initialised BatchNorm')
        if corrector is not None:
            corrector.restrict(self._corrected_params(runner, network))
        if self.switch is not None and self.swap_bn_optimizer_state:
            self.optim_slots = OptimizerStateSlots(runner.optim_wrapper.optimizer,
                                                   self.switch.parameters())
        self._restore(runner)
        self.max_iters = runner.max_iters
        self.prune_end_iter = math.ceil(self.prune['end'] * self.max_iters - 1e-9)

    def _corrected_params(self, runner, network):
        """The parameters gradient correction applies to (None: all), by ``correction_scope``."""
        if self.correction_scope == 'masked':
            return [layer.dense_weight for layer in network.layers.values()]
        if self.correction_scope == 'shared' and self.switch is not None:
            switched = {id(p) for p in self.switch.parameters()}
            return [p for p in unwrap(runner.model).parameters() if id(p) not in switched]
        return None

    # -- per iteration ---------------------------------------------------------------------
    def subnet_at(self, iteration):
        return self.order[ast_subnet_index(iteration, self.num)]

    def prune_due(self, iteration):
        return iteration <= self.prune_end_iter and (
            iteration % self.update_interval == 0 or iteration == self.prune_end_iter)

    def regrow_due(self, iteration):
        if not self.prune_end_iter < iteration <= self.regrow['end'] * self.max_iters:
            return False
        index = ast_subnet_index(iteration, self.num)
        return (self.order[index].pattern != 'dense'
                and update_due(iteration, index, self.num, self.update_interval))

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        network = self._network(runner)
        t = runner.iter
        if self.prune_due(t):
            self._prune(network, t)
        self.current = self.subnet_at(t)
        network.set_active(self.current)
        if self.regrow_due(t):
            self._taps = self._capture(network)

    def after_train_iter(self, runner, batch_idx=None, data_batch=None, outputs=None):
        network = self._network(runner)
        if self._taps is not None:
            fraction = regrow_fraction(runner.iter, self.max_iters, self.prune['end'],
                                       self.regrow['end'], self.regrow['initial'],
                                       self.regrow['final'])
            swapped, kept = self._regrow(network, self.current, fraction)
            runner.logger.info(f'mmsparse: iteration {runner.iter}: {self.current.name} '
                               f'pruned and regrew {swapped} of its {kept} weights (fraction '
                               f'{fraction:.4f})')
        if self.switch is not None:
            self.switch.sync()  # slot buffers complete for the checkpoint saved after this
        if outputs is not None and 'loss' in outputs:
            loss = outputs['loss']
            runner.message_hub.update_scalar(
                f'train/loss_{loss_tag(self.current)}',
                float(loss.detach()) if hasattr(loss, 'detach') else float(loss))
        if self.every_n_train_iters(runner, runner.log_processor.window_size):
            corrector = getattr(runner.optim_wrapper, 'corrector', None)
            runner.logger.info(f'mmsparse: iteration {runner.iter} trained {self.current.name}'
                               + ('' if corrector is None else
                                  f' (gradient correction fired {corrector.fired} times)'))

    def after_train(self, runner):
        self._network(runner).set_active(DENSE)

    # -- masks -----------------------------------------------------------------------------
    def _specs(self, pattern):
        return sorted((s for s in self.order if s.pattern == pattern), key=lambda s: s.sort_key)

    @torch.no_grad()
    def _prune(self, network, t):
        """Gradual pruning: every subnet's mask from |W| at its scheduled density."""
        unstructured, nm = self._specs('unstructured'), self._specs('nm')
        scores = {n: layer.dense_weight.detach().abs().float()
                  for n, layer in network.layers.items()}
        levels = None
        if unstructured:
            sparsities = [gradual_sparsity(t, self.max_iters, s.ratio, **self.prune)
                          for s in unstructured]
            levels = scheduled_levels(scores, sparsities, self.scope)
        for name, layer in network.layers.items():
            layer.set_masks(
                unstructured=([s.ratio for s in unstructured], levels[name]) if levels else None,
                nm=[((s.n, s.m), nm_magnitude(scores[name], s.n, s.m, layer.in_axis, name))
                    for s in nm] if nm else None)
        broadcast_masks(network)

    def _capture(self, network):
        """Make the active subnet's cached masks leaves that require grad: the backward then
        gives dL/dM = dL/dW_eff * W (W_eff = W * M), from which the dense gradient of the
        effective weight, which pruned weights need for regrowth, is recovered."""
        taps = {}
        for name, layer in network.layers.items():
            tap = layer.tap_active_mask()
            if tap is not None:
                taps[name] = (tap, layer.dense_weight.detach().clone())
        return taps

    @torch.no_grad()
    def _regrow(self, network, spec, fraction):
        """Prune-and-regrow the active subnet; returns (weights swapped, weights kept)."""
        taps, self._taps = self._taps, None
        swapped = kept = 0
        for name, (tap, weight) in taps.items():
            layer = network.layers[name]
            layer.release_tap()
            grad = tap.grad if tap.grad is not None else torch.zeros_like(tap)
            grad = torch.where(weight != 0, grad / weight, torch.zeros_like(grad))
            if is_distributed():
                all_reduce(grad, op='mean')
            if not bool(grad.any()):  # the layer had no gradient: nothing to rank by
                continue
            magnitude = layer.dense_weight.detach().abs()
            old = layer.mask_for(spec)
            if spec.pattern == 'unstructured':
                ratios = [round(r, 6) for r in layer.mask_unstructured_ratios.tolist()]
                index = sorted(ratios).index(round(spec.ratio, 6))
                level = regrow_level(layer.mask_unstructured_level, index, magnitude, grad,
                                     fraction)
                layer.set_masks(unstructured=(layer.mask_unstructured_ratios.tolist(), level))
            else:
                nm = [((n, m), layer.mask_for(f'nm@{n}:{m}'))
                      for n, m in layer.mask_nm_nm.tolist()]
                nm = [(pair, regrow_nm(mask, magnitude, grad, fraction, spec.m, layer.in_axis)
                       if pair == (spec.n, spec.m) else mask) for pair, mask in nm]
                layer.set_masks(nm=nm)
            swapped += int((layer.mask_for(spec) & ~old).sum())
            kept += int(old.sum())
        broadcast_masks(network)
        return swapped, kept

    # -- checkpoints -----------------------------------------------------------------------
    def before_save_checkpoint(self, runner, checkpoint):
        state = dict(subnets=[s.name for s in self.order])
        if self.optim_slots is not None:
            state['bn_optimizer_state'] = self.optim_slots.state_dict()
        corrector = getattr(runner.optim_wrapper, 'corrector', None)
        if corrector is not None:
            state['correction_fired'] = corrector.fired
            if (runner.iter + 1) % corrector.group_size:
                # The next iteration is inside a correction group: keep its "previous"
                # gradients, so a resumed run corrects it as an uninterrupted one does.
                state['correction_previous'] = dict(corrector.previous)
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

    def _restore(self, runner):
        state, self._pending = self._pending, None
        if state is None:
            return
        if self.optim_slots is not None and 'bn_optimizer_state' in state:
            self.optim_slots.load_state_dict(state['bn_optimizer_state'])
        corrector = getattr(runner.optim_wrapper, 'corrector', None)
        if corrector is not None:
            corrector.previous = dict(state.get('correction_previous', {}))
            corrector.fired = int(state.get('correction_fired', 0))
