"""Test-only hook: during validation, record which weights and masks each subnet ran with."""
import torch
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS


@HOOKS.register_module()
class EMAProbeHook(Hook):
    """Write ``work_dir/ema_probe.pth``: {subnet: (the first masked layer's name, its dense
    weight and active mask at the subnet's first validation batch)}."""

    priority = 'LOW'  # after EMAHook swapped the EMA weights in

    def __init__(self):
        self.seen = {}

    def after_val_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        network = model._mmsparse_network
        name, layer = next(iter(network.layers.items()))
        mask = layer.active_mask()
        self.seen.setdefault(network.active.name, (name, layer.dense_weight.detach().clone(),
                                                   None if mask is None else mask.clone()))

    def after_val_epoch(self, runner, metrics=None):
        torch.save(self.seen, f'{runner.work_dir}/ema_probe.pth')
