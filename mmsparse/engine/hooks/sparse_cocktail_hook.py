"""Sparse Cocktail co-training inside MMDetection's own training loop."""
from mmengine.hooks import Hook

from mmsparse.core import DENSE
from mmsparse.core.methods.schedules import (SPARSE_PATTERNS, CocktailSchedule,
                                             check_cocktail_options)
from mmsparse.models.distill import DenseDistiller
from mmsparse.models.joint_dense import JointDenseLoss, dense_part
from mmsparse.registry import HOOKS
from ..mask_sources import CocktailMaskSources
from ..network import broadcast_masks, required_network, unwrap
from ..stability import check_finite_loss, prepare_joint_step


@HOOKS.register_module()
class SparseCocktailHook(Hook):
    """Dense-pivot co-training of every subnet with gradual ratio increase (Sparse Cocktail).

    Needs :class:`SparseSubnetsHook` (which attaches the masked layers and the subnets).
    Each iteration trains one network: even iterations the dense one, odd iterations one
    sparse subnet, cycling through the patterns (D, U, D, C, D, NM, ...). Ratios unlock in
    ``num_stages`` stages on a polynomial schedule inside the one training schedule, and at
    every stage boundary all masks are regenerated from the current weights by unified
    mask generation (or, per pattern, by Chase or Spartan: ``mask_sources``). Everything
    is a function of the iteration counter, so all ranks agree and ``--resume`` continues
    exactly. A non-finite loss stops the run at once (:mod:`mmsparse.engine.stability`).

    Args:
        patterns: Sparse patterns in cycle order; default: those the model holds, in the
            order unstructured, channel, nm, block. A pattern named twice, e.g.
            ``('unstructured', 'channel', 'nm', 'nm')``, gets twice the share of the sparse
            steps.
        num_stages, stage_start, stage_end, stage_power, ratio_mode, seed, dense_pivot,
            fixed_stage: the stage and step plan, see
            :class:`mmsparse.core.methods.schedules.CocktailSchedule` (``fixed_stage``: one
            stage of the paper's multi-stage recipe, ``tools/cocktail_multistage.py``).
        regenerate_masks: Regenerate masks at stage boundaries (default True).
        distill: e.g. ``dict(weight=0.5, temperature=1.0)``: on sparse steps, distil the
            dense network's classification outputs into the subnet (an extra no-grad dense
            forward; see :class:`mmsparse.models.distill.DenseDistiller`). None: off.
        save_stage_checkpoints: Save ``stage_<s>.pth`` (weights and masks) in the work dir
            at the end of every stage, for network interpolation
            (``tools/analysis_tools/interpolate_stages.py``).
        mask_sources: Which method makes each pattern's masks, e.g.
            ``dict(channel='chase', unstructured='spartan')`` or with options
            ``dict(channel=dict(type='chase', beta=0.3))``; unnamed patterns (and None, the
            default) use UMG. See ``docs/mask_sources.md``.
        joint_dense: True or e.g. ``dict(weight=1.0, split_batch=False)``: every iteration
            trains one sparse subnet *and* the dense network (the sandwich rule) instead of
            dense steps every other iteration; implies ``dense_pivot=False``, not combinable
            with ``distill``; clips gradients at norm 10 if the config clips none (its
            ``clip_grad`` option). See :class:`mmsparse.models.joint_dense.JointDenseLoss`.
            None: off (the paper).
        straight_through: Sparse steps pass their gradient straight through the mask to the
            weights the subnet removes too (forward unchanged, same cost; see
            :func:`mmsparse.core.layers.straight_through_mask`), so the dense network
            learns on every step. False (default, the paper): removed weights get none.
    """

    priority = 'ABOVE_NORMAL'  # after SparseSubnetsHook (VERY_HIGH) has generated masks

    def __init__(self, patterns=None, num_stages=None, stage_start=0.0, stage_end=0.8,
                 stage_power=3, ratio_mode='current', regenerate_masks=True, seed=0,
                 dense_pivot=True, distill=None, save_stage_checkpoints=False,
                 fixed_stage=None, mask_sources=None, joint_dense=None,
                 straight_through=False):
        check_cocktail_options(patterns, num_stages, stage_start, stage_end, stage_power,
                               ratio_mode, fixed_stage)
        if distill:
            if not isinstance(distill, dict):
                raise ValueError('SparseCocktailHook distill must be a dict like '
                                 f'dict(weight=0.5, temperature=1.0) or None, got {distill!r}')
            DenseDistiller.check_options(**distill)  # a typo fails here, not later
        if joint_dense and distill:
            raise ValueError('SparseCocktailHook: joint_dense and distill cannot be combined '
                             '(both add a dense pass to sparse steps); choose one')
        self.joint_dense = (dict(joint_dense) if isinstance(joint_dense, dict)
                            else {} if joint_dense else None)
        self.joint = None
        if self.joint_dense is not None:
            JointDenseLoss.check_options(**self.joint_dense)  # a typo fails here, not later
            dense_pivot = False  # the dense network trains inside every iteration
        self.patterns = None if patterns is None else tuple(patterns)
        self.options = dict(num_stages=num_stages, start=stage_start, end=stage_end,
                            power=stage_power, mode=ratio_mode, seed=seed,
                            dense_pivot=dense_pivot, fixed_stage=fixed_stage)
        self.regenerate_masks = regenerate_masks
        self.distill = distill
        self.distiller = None
        self.save_stage_checkpoints = save_stage_checkpoints
        self.sources = CocktailMaskSources(mask_sources)
        self.straight_through = bool(straight_through)
        self.current = DENSE

    def _network(self, runner):
        return required_network(runner, 'SparseCocktailHook', 'the masked layers and the subnets')

    def before_train(self, runner):
        network = self._network(runner)
        by_pattern = {}
        for spec in network.subnets():
            if spec.pattern != 'dense':
                by_pattern.setdefault(spec.pattern, []).append(spec)
        if not by_pattern:
            raise ValueError('SparseCocktailHook co-trains sparse subnets, but the model holds '
                             f'only {[s.name for s in network.subnets()]}: give '
                             'SparseSubnetsHook sparse subnets (e.g. subnets=\'cocktail\')')
        patterns = self.patterns or tuple(p for p in SPARSE_PATTERNS if p in by_pattern)
        missing = [p for p in patterns if p not in by_pattern]
        if missing:
            raise ValueError(f'SparseCocktailHook: the model holds no {missing} subnets; it '
                             f'holds {sorted(by_pattern)}')
        self.by_pattern = {p: sorted(by_pattern[p], key=lambda s: s.sort_key) for p in patterns}
        self.plan = CocktailSchedule({p: len(v) for p, v in self.by_pattern.items()}, patterns,
                                     runner.max_iters, **self.options)
        self.stages = self.plan.num_stages
        self._set_straight_through(network, self.straight_through)
        if self.distill and self.distiller is None:
            self.distiller = DenseDistiller(unwrap(runner.model), network, **self.distill)
        if self.joint_dense is not None and self.joint is None:
            self.joint = JointDenseLoss(unwrap(runner.model), network, **self.joint_dense)
        if self.joint is not None:  # batch size; clipping if the config has none
            prepare_joint_step(runner, self.joint)
        # The stage of the last completed iteration: a resumed run regenerates at the next
        # boundary exactly where an uninterrupted run would.
        self.stage = self.plan.stage_at(max(runner.iter - 1, 0))
        if not self.sources.default:
            self.sources.setup(runner, network, set(by_pattern), self.options['end'])
            if runner.iter == 0:  # a fresh run: its first masks from the chosen sources too
                self.sources.apply(network)
                broadcast_masks(network)
            runner.logger.info(f'mmsparse: mask sources: {self.sources.describe()}')

    @staticmethod
    def _set_straight_through(network, value):
        for layer in network.layers.values():
            layer.straight_through = value

    def step_at(self, iteration):
        """The subnet iteration ``iteration`` trains."""
        step = self.plan.step_at(iteration)
        return DENSE if step.pattern == 'dense' else self.by_pattern[step.pattern][step.index]

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        network = self._network(runner)
        stage = self.plan.stage_at(runner.iter)
        if stage != self.stage:
            self._save_stage(runner)
            if self.regenerate_masks:
                self.sources.regenerate(network)
                broadcast_masks(network)
            runner.logger.info(f'mmsparse: iteration {runner.iter}: stage {stage}/'
                               f'{self.stages}' + (', masks regenerated'
                                                   if self.regenerate_masks else ''))
            self.stage = stage
        self.current = self.step_at(runner.iter)
        network.set_active(self.current)
        self.sources.before_step(runner, network, self.current)
        for extra in (self.distiller, self.joint):
            if extra is not None:
                extra.step(self.current)

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        check_finite_loss(runner, outputs)  # before anything else uses the NaN weights
        self.sources.after_step(self._network(runner))
        hub = runner.message_hub
        hub.update_scalar('train/stage', self.stage)
        joint = self.joint is not None and self.current != DENSE
        if outputs is not None and 'loss' in outputs:
            loss = outputs['loss']
            loss = float(loss.detach()) if hasattr(loss, 'detach') else float(loss)
            if joint:
                dense = dense_part(outputs)
                hub.update_scalar('train/loss_dense', dense)
                loss -= dense
            hub.update_scalar(f'train/loss_{self.current.pattern}', loss)
        if self.every_n_train_iters(runner, runner.log_processor.window_size):
            also = ''
            if joint:
                notes = self.joint.describe()
                also = ' and dense' + (f' ({notes})' if notes else '')
            runner.logger.info(f'mmsparse: iteration {runner.iter} trained {self.current.name}'
                               f'{also} (stage {self.stage}/{self.stages})')

    def _save_stage(self, runner):
        """The weights (and masks) at the end of the current stage."""
        if self.save_stage_checkpoints:
            self._network(runner).set_active(DENSE)
            runner.save_checkpoint(runner.work_dir, f'stage_{self.stage}.pth',
                                   save_optimizer=False, save_param_scheduler=False,
                                   by_epoch=False)

    def after_train(self, runner):
        self.sources.after_step(self._network(runner))
        self._save_stage(runner)
        network = self._network(runner)
        network.set_active(DENSE)
        self._set_straight_through(network, False)  # a training-time choice only
