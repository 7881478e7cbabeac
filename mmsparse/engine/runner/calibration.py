"""Training batches for BatchNorm calibration, and the detector forward that uses them.

One helper for everything that re-estimates BatchNorm statistics (the subnet loops'
``recalibrate_bn``, :class:`~mmsparse.engine.hooks.SubnetBNStatsHook`,
``tools/misc/store_bn_stats.py`` and ``tools/export_subnet.py``), so all of them calibrate
on the same kind of data: the first batches of a fresh training dataloader (training
pipeline, training batch size).
"""
from mmengine.runner import Runner
from torch.nn.modules.batchnorm import _BatchNorm

from mmsparse.models.detector_run import isolated_rng

# Calibration samples RoIs with its own seed: the same statistics in every run and process.
CALIBRATION_SEED = 0


def calibration_batches(dataloader_cfg, count):
    """The first ``count`` batches of a dataloader built from ``dataloader_cfg``."""
    if count < 1:
        raise ValueError(f'BatchNorm calibration needs at least 1 batch, got {count}')
    batches = []
    for batch in Runner.build_dataloader(dataloader_cfg):
        batches.append(batch)
        if len(batches) >= count:
            break
    return batches


def forward_batches(batches):
    """``fn(model)`` running the detector's loss forward on every batch (what
    :func:`mmsparse.core.batchnorm.recalibration.recalibrated_bn` calls).

    The batches come from the training pipeline, and the loss forward is what training ran
    on every such batch, so it takes whatever that pipeline produces; ``predict`` needs
    test-time meta keys (``scale_factor`` is missing when the training pipeline has no
    ``Resize``). The model runs in training mode as in training (some heads only build
    their training inputs then), except the BatchNorm layers, which keep the mode the caller
    gave them; every module's mode is restored afterwards. Losses are discarded.
    """
    def run(model):
        modes = {module: module.training for module in model.modules()}
        for module in modes:
            if not isinstance(module, _BatchNorm):
                module.training = True
        try:
            with isolated_rng(CALIBRATION_SEED):
                for batch in batches:
                    data = model.data_preprocessor(batch, True)
                    model.loss(data['inputs'], data['data_samples'])
        finally:
            for module, mode in modes.items():
                module.training = mode
    return run
