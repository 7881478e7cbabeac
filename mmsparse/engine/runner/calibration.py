"""Training batches for BatchNorm calibration, and the detector forward that uses them.

One helper for everything that re-estimates BatchNorm statistics (the subnet loops'
``recalibrate_bn``, :class:`~mmsparse.engine.hooks.SubnetBNStatsHook`,
``tools/misc/store_bn_stats.py`` and ``tools/export_subnet.py``), so all of them calibrate
on the same kind of data: the first batches of a fresh training dataloader (training
pipeline, training batch size).
"""
from mmengine.runner import Runner

from mmsparse.models import detector_predict_run


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
    """``fn(model)`` running the detector's predict forward on every batch (what
    :func:`mmsparse.core.batchnorm.recalibration.recalibrated_bn` calls)."""
    return lambda model: [detector_predict_run(batch)(model) for batch in batches]
