"""Evaluate many subnets in one run: the model and the data are built once, masks switch.

Like MMDetection's ``TeacherStudentValLoop`` and mmrazor's slimmable loops, each subnet is a
full pass over the dataloader with the config's evaluator, and the metric keys are prefixed
with the subnet name (``nm@2:4/coco/bbox_mAP``). Each subnet's measured sparsity, parameters
and FLOPs are added (``nm@2:4/sparsity`` ...); FLOPs are per image: the first test image,
with the dense network's RoIs.

Subnet names are checked when the loop is built (for a validation loop: before training
starts); :class:`~mmsparse.engine.hooks.SparseSubnetsHook` checks that the model holds them
before the first training iteration.
"""
import contextlib
import os.path as osp

from mmengine.dist import is_main_process
from mmengine.runner import TestLoop, ValLoop
from mmengine.utils import ProgressBar

from mmsparse.core import DENSE, parse_subnets, record_positions, subnet_stats
from mmsparse.core.batchnorm.recalibration import recalibrated_bn
from mmsparse.core.batchnorm.stored_stats import check_stored_bn_stats, stored_bn_stats
from mmsparse.core.subnets import SubnetNameError
from mmsparse.models import attached_network, detector_predict_run
from mmsparse.registry import LOOPS
from ..network import unwrap
from .calibration import calibration_batches, forward_batches


def subnet_list(subnets):
    """``subnets`` as a list: ``['all']`` or names (a comma-separated string is split).

    Raises:
        SubnetNameError: for an empty list, a name that does not parse, a name listed twice
            (their metric keys would collide) or ``'all'`` mixed with names.
    """
    if isinstance(subnets, str):
        subnets = [s.strip() for s in subnets.split(',') if s.strip()]
    if not isinstance(subnets, (list, tuple)) or not all(isinstance(s, str) for s in subnets):
        raise SubnetNameError(f"subnets must be 'all', a name, a comma-separated string or a "
                              f'list of names, got {subnets!r}')
    subnets = list(subnets)
    if not subnets:
        raise SubnetNameError("no subnet to evaluate (empty list); give 'all' or names, e.g. "
                              "'dense,nm@2:4'")
    if subnets == ['all']:
        return subnets
    if 'all' in subnets:
        raise SubnetNameError(f"'all' cannot be combined with names, got {subnets!r}")
    parse_subnets(subnets)
    return subnets


def resolve_subnets(network, subnets):
    """Subnet specs to evaluate: ``'all'``, a name, or a list/comma-separated names.

    Raises:
        SubnetNameError: for names the model does not hold, listing the valid ones; for any
            sparse name when the model holds no masks.
    """
    subnets = subnet_list(subnets)
    held = network.subnets() if network is not None else [DENSE]
    if subnets == ['all']:
        return held
    specs = parse_subnets(subnets)
    for spec in specs:
        if spec not in held:
            if held == [DENSE]:  # no masked layers, or masked layers with empty masks
                raise SubnetNameError(
                    f'subnet {spec.name!r} requested, but the checkpoint holds no sparse '
                    "subnets (no mask buffers): only 'dense' can be evaluated")
            raise SubnetNameError(f'unknown subnet {spec.name!r}; the checkpoint holds: '
                                  f'{", ".join(s.name for s in held)}')
    return specs


class _SubnetEvaluation:
    """What the test and val loops share: one evaluation pass per subnet (mixed in before
    mmengine's TestLoop / ValLoop, whose constructors take the first four arguments)."""

    def __init__(self, runner, dataloader, evaluator, fp16=False, subnets='all',
                 recalibrate_bn=0, stored_bn=True):
        # Option errors surface here, when the Runner builds the loop (for a validation
        # loop: before training starts), not at the first evaluation.
        where = f'{type(self).__name__}(subnets={subnets!r})'
        try:
            self.subnets = subnet_list(subnets)
        except SubnetNameError as err:
            raise SubnetNameError(f'{where}: {err}') from None
        if isinstance(recalibrate_bn, bool) or not isinstance(recalibrate_bn, int) \
                or recalibrate_bn < 0:
            raise ValueError(f'{type(self).__name__}: recalibrate_bn must be an int >= 0 '
                             f'(calibration batches per subnet, 0: off), got {recalibrate_bn!r}')
        if not isinstance(stored_bn, bool):
            raise ValueError(f'{type(self).__name__}: stored_bn must be True or False, got '
                             f'{stored_bn!r}')
        sparse = self.subnets != ['all'] and any(s != DENSE for s in parse_subnets(self.subnets))
        if sparse and not any(hasattr(hook, 'check_val_subnets') for hook in runner.hooks):
            raise SubnetNameError(f'{where}: sparse subnets need mmsparse.SparseSubnetsHook in '
                                  'custom_hooks (it attaches the masked layers); without it '
                                  "only 'dense' can be evaluated")
        super().__init__(runner, dataloader, evaluator, fp16)
        self.recalibrate_bn = recalibrate_bn
        self.stored_bn = stored_bn
        self._positions = None
        self._calibration_batches = None
        self._visualization_dirs = {}

    def check_subnets(self, network):
        """Raise :class:`SubnetNameError` unless ``network`` (None: no masked layers) holds
        every subnet this loop evaluates; :class:`SparseSubnetsHook` calls it before the
        first training iteration."""
        try:
            resolve_subnets(network, self.subnets)
        except SubnetNameError as err:
            raise SubnetNameError(f'{type(self).__name__}(subnets={self.subnets!r}): {err}. '
                                  'Fix val_cfg.subnets (or use \'all\').') from None

    def _bn_source(self, model, network):
        """Which BatchNorm statistics each subnet is evaluated with: ``'recalibrated'``
        (``recalibrate_bn`` > 0), ``'stored'`` (the model stores per-subnet statistics,
        see :class:`~mmsparse.engine.hooks.SubnetBNStatsHook`) or ``'trained'``."""
        if self.recalibrate_bn:
            return 'recalibrated'
        if self.stored_bn and network is not None and check_stored_bn_stats(model, network):
            return 'stored'
        return 'trained'

    def _calibration(self, model, network, spec, source):
        """Context giving ``spec`` its BatchNorm statistics from ``source``.

        Recalibration batches are read once and reused for every subnet, so subnets are
        calibrated on the same data.
        """
        if source == 'stored':
            return stored_bn_stats(network, spec)
        if source == 'trained':
            return contextlib.nullcontext()
        if self._calibration_batches is None:
            self._calibration_batches = calibration_batches(self.runner.cfg.train_dataloader,
                                                            self.recalibrate_bn)
        return recalibrated_bn(model, forward_batches(self._calibration_batches))

    def _stats(self, network, model, spec):
        if network is None:
            return {}
        if self._positions is None:
            # FLOPs per image, on the first test image alone: every rank and every process
            # count the same input, whatever the sharding and batch size.
            # Positions are recorded with the dense network active, so a head's RoI count
            # (and hence the FLOPs) does not depend on which subnet came first.
            sample = self.dataloader.collate_fn([self.dataloader.dataset[0]])
            network.set_active(DENSE)
            self._positions = record_positions(model, detector_predict_run(sample))
            network.set_active(spec)
        stats = subnet_stats(network, spec, self._positions)
        return dict(sparsity=stats.sparsity, params=stats.params, flops=stats.flops)

    def _visualize_into(self, spec):
        """With several subnets, paint each subnet's predictions into its own subfolder of
        ``--show-dir`` (MMDetection's hook joins it under work_dir/timestamp each iteration)."""
        for hook in self.runner.hooks:
            if getattr(hook, 'test_out_dir', None) is not None:
                base = self._visualization_dirs.setdefault(id(hook), hook.test_out_dir)
                hook.test_out_dir = osp.join(base, spec.name)

    def _one_pass(self):
        """One pass of the loop's dataloader and evaluator (the loop's own ``run_iter``)."""
        self.runner.model.eval()
        for idx, data_batch in enumerate(self.dataloader):
            self.run_iter(idx, data_batch)
        return self.evaluator.evaluate(len(self.dataloader.dataset))

    def _run_phase(self, phase):
        """The hook calls of mmengine's test/val loop around one pass per subnet."""
        self.runner.call_hook(f'before_{phase}')
        self.runner.call_hook(f'before_{phase}_epoch')
        metrics = self._evaluate_subnets()
        self.runner.call_hook(f'after_{phase}_epoch', metrics=metrics)
        self.runner.call_hook(f'after_{phase}')
        return metrics

    def _evaluate_subnets(self):
        """One pass per subnet; return the prefixed metrics of all subnets."""
        model = unwrap(self.runner.model)
        network = attached_network(model)
        specs = resolve_subnets(network, self.subnets)
        source = self._bn_source(model, network)
        self.runner.logger.info('mmsparse: BatchNorm statistics: ' + dict(
            recalibrated=f'recalibrated per subnet on {self.recalibrate_bn} training batches',
            stored='each subnet\'s own, stored in the checkpoint',
            trained='as trained (shared by all subnets)')[source])
        results = {}
        bar = ProgressBar(len(specs)) if is_main_process() and len(specs) > 1 else None
        try:
            for spec in specs:
                if network is not None:
                    network.set_active(spec)
                if len(specs) > 1:
                    self._visualize_into(spec)
                with self._calibration(model, network, spec, source):
                    metrics = self._one_pass()
                metrics.update(self._stats(network, model, spec))
                self.runner.logger.info(f'mmsparse: {spec.name}: ' + ', '.join(
                    f'{k}={v:.4f}' if isinstance(v, float) else f'{k}={v}'
                    for k, v in metrics.items()))
                results.update({f'{spec.name}/{k}': v for k, v in metrics.items()})
                if bar is not None:
                    bar.update()
        finally:
            if network is not None:
                network.set_active(DENSE)
        return results


@LOOPS.register_module()
class SubnetTestLoop(_SubnetEvaluation, TestLoop):
    """Test loop over subnets.

    Args:
        subnets: ``'all'`` (every subnet the checkpoint holds), a name, a comma-separated
            string or a list of names.
        recalibrate_bn: Re-estimate BatchNorm statistics on this many training batches
            per subnet before evaluating it (restored afterwards); 0 to disable.
        stored_bn: Evaluate each subnet with its own BatchNorm statistics when the model
            stores them (:class:`~mmsparse.engine.hooks.SubnetBNStatsHook`,
            ``tools/misc/store_bn_stats.py``) and ``recalibrate_bn`` is 0. False: use the
            statistics training left, shared by all subnets.
    """

    def run(self):
        return self._run_phase('test')


@LOOPS.register_module()
class SubnetValLoop(_SubnetEvaluation, ValLoop):
    """Validation loop over a chosen set of subnets (same arguments as
    :class:`SubnetTestLoop`), so validation during training tracks several subnets."""

    def run(self):
        return self._run_phase('val')
