"""At the end of training, store every subnet's BatchNorm statistics in the model."""
import time

import torch
from mmengine.dist import all_reduce, broadcast, is_distributed, is_main_process
from mmengine.hooks import Hook
from mmengine.utils import ProgressBar

from mmsparse.core.batchnorm.stored_stats import (PREFIX, STORED, drop_stored_bn_stats,
                                                  store_subnet_bn_stats, stored_bn_count)
from mmsparse.registry import HOOKS
from ..runner.calibration import calibration_batches, forward_batches
from ..ema import ema_models, ema_weights, share_stored_bn_stats
from ..network import required_network, unwrap


def _failed_anywhere(failed):
    """Whether any rank failed (all ranks then skip the statistics together; a rank that
    went on to the broadcast alone would wait forever)."""
    if not is_distributed():
        return failed
    flag = torch.tensor([1.0 if failed else 0.0])
    all_reduce(flag)
    return bool(flag.item() > 0)


def broadcast_stored_bn_stats(model):
    """Make every rank's stored statistics rank 0's (each rank calibrated on its own
    batches; the checkpoint and the evaluation must not depend on the rank)."""
    if not is_distributed():
        return
    for module in model.modules():
        for name in STORED:
            buffer = getattr(module, PREFIX + name, None)
            if buffer is not None:
                broadcast(buffer, 0)


@HOOKS.register_module()
class SubnetBNStatsHook(Hook):
    """Estimate every subnet's BatchNorm statistics after the last training iteration and
    keep them in the model, so the final checkpoint carries them and evaluation
    (``tools/test.py``, the validation loop, ``tools/export_subnet.py``) uses each subnet's
    own statistics without ``--recalibrate-bn``.

    Runs after the last iteration's other hooks and before the checkpoint hook saves, so the
    last checkpoint and the final validation see the statistics. Each subnet is calibrated
    as ``--recalibrate-bn`` does: exact averages (BatchNorm momentum None) over the first
    ``batches`` batches of a fresh training dataloader, run through the detector's loss
    forward, which takes whatever the training pipeline produces. Cost: ``batches`` forward
    passes per subnet (24 subnets x 20 batches for the cocktail).

    The statistics are an extra; the trained weights are not. If the pass fails, the error is
    logged with how to store the statistics later (``tools/misc/store_bn_stats.py``), nothing
    half-stored is kept, and training ends as without this hook: the final checkpoint is
    written and evaluation uses the trained statistics.

    Args:
        batches: Calibration batches per subnet (a positive int).
    """

    priority = 'LOW'  # before CheckpointHook (VERY_LOW) on the last iteration

    def __init__(self, batches=20):
        if isinstance(batches, bool) or not isinstance(batches, int) or batches < 1:
            raise ValueError('SubnetBNStatsHook: batches must be a positive int (calibration '
                             f'batches per subnet), got {batches!r}')
        self.batches = batches

    def before_train(self, runner):
        required_network(runner, 'SubnetBNStatsHook')  # a config error: fail before training

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        if not self.is_last_train_iter(runner):
            return
        network = required_network(runner, 'SubnetBNStatsHook')
        model = unwrap(runner.model)
        start = time.time()
        error, specs, batches = None, [], []
        try:
            batches = calibration_batches(runner.cfg.train_dataloader, self.batches)
            count = len(network.subnets())
            bar = ProgressBar(count) if is_main_process() and count > 1 else None
            # With EMA, validation and the checkpoint use the EMA weights: estimate on them.
            with ema_weights(runner, model):
                specs = store_subnet_bn_stats(network, forward_batches(batches),
                                              progress=bar and (lambda _: bar.update()))
        except Exception as err:  # noqa: BLE001  (any failure must not cost the checkpoint)
            error = err
        if _failed_anywhere(error is not None):
            for each in [model, *(ema.module for ema in ema_models(runner))]:
                drop_stored_bn_stats(each)  # rows of subnets not reached would be zeros
            what = (f'{type(error).__name__}: {error}' if error is not None
                    else 'it failed on another process')
            runner.logger.error(
                'mmsparse: SubnetBNStatsHook could not store the per-subnet BatchNorm '
                f'statistics ({what}). Training is complete and the final checkpoint is saved '
                'without them (evaluation uses the trained statistics). Store them later with '
                '`python tools/misc/store_bn_stats.py CONFIG CHECKPOINT --out OUT.pth` (or '
                'evaluate with tools/test.py --recalibrate-bn N).',
                exc_info=error)
            return
        if not stored_bn_count(model):  # the same on every rank: the model's frozen set
            runner.logger.info(
                'mmsparse: no per-subnet BatchNorm statistics to store: every BatchNorm is '
                'frozen (norm_eval=True or requires_grad=False) or there is none; evaluation '
                'uses the trained statistics')
            return
        broadcast_stored_bn_stats(model)
        share_stored_bn_stats(runner, model)  # the EMA copies get the same buffers
        runner.logger.info(
            f'mmsparse: stored the BatchNorm statistics of {len(specs)} subnets '
            f'({len(batches)} batches each, {time.time() - start:.0f}s); evaluation uses them '
            'unless --recalibrate-bn is given')
