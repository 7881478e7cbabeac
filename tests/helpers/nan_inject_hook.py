"""Test-only hook: make one parameter NaN before a chosen iteration, so its loss is NaN."""
import torch
from mmengine.hooks import Hook
from mmengine.registry import HOOKS


@HOOKS.register_module()
class NaNInjectHook(Hook):
    """Fill parameter ``param`` of the (unwrapped) model with NaN before iteration ``at``."""

    priority = 'LOWEST'

    def __init__(self, at, param='roi_head.bbox_head.fc_cls.weight'):
        self.at, self.param = at, param

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        if runner.iter == self.at:
            model = getattr(runner.model, 'module', runner.model)
            with torch.no_grad():
                dict(model.named_parameters())[self.param].fill_(float('nan'))
