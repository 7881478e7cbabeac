"""At the end of training, store every subnet's BatchNorm statistics in the model."""
import time

from mmengine.dist import broadcast, is_distributed, is_main_process
from mmengine.hooks import Hook
from mmengine.utils import ProgressBar

from mmsparse.core.batchnorm.stored_stats import PREFIX, STORED, store_subnet_bn_stats
from mmsparse.registry import HOOKS
from ..runner.calibration import calibration_batches, forward_batches
from ..network import required_network, unwrap


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
    as ``--recalibrate-bn`` does: model in eval mode, BatchNorm layers in training mode,
    exact averages over the first ``batches`` batches of a fresh training dataloader. Cost:
    ``batches`` forward passes per subnet (24 subnets x 20 batches for the cocktail).

    Args:
        batches: Calibration batches per subnet.
    """

    priority = 'LOW'  # before CheckpointHook (VERY_LOW) on the last iteration

    def __init__(self, batches=20):
        if int(batches) < 1:
            raise ValueError(f'SubnetBNStatsHook needs batches >= 1, got {batches}')
        self.batches = int(batches)

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        if not self.is_last_train_iter(runner):
            return
        network = required_network(runner, 'SubnetBNStatsHook')
        model = unwrap(runner.model)
        start = time.time()
        batches = calibration_batches(runner.cfg.train_dataloader, self.batches)
        count = len(network.subnets())
        bar = ProgressBar(count) if is_main_process() and count > 1 else None
        model.eval()  # as in evaluation: only the BatchNorm layers run in training mode
        try:
            specs = store_subnet_bn_stats(network, forward_batches(batches),
                                          progress=bar and (lambda _: bar.update()))
        finally:
            model.train()
        broadcast_stored_bn_stats(model)
        runner.logger.info(
            f'mmsparse: stored the BatchNorm statistics of {len(specs)} subnets '
            f'({len(batches)} batches each, {time.time() - start:.0f}s); evaluation uses them '
            'unless --recalibrate-bn is given')
