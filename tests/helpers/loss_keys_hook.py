"""Test-only hook: record which loss keys every training iteration produced."""
import json

from mmengine.hooks import Hook
from mmengine.registry import HOOKS


@HOOKS.register_module()
class LossKeysHook(Hook):
    """Write ``work_dir/loss_keys.json``: [[iter, subnet, sorted keys holding 'loss', loss_kd]]."""

    priority = 'LOWEST'

    def __init__(self):
        self.rows = []

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        model = getattr(runner.model, 'module', runner.model)
        keys = sorted(k for k in outputs if 'loss' in k)
        self.rows.append([runner.iter, model._mmsparse_network.active.name, keys,
                          float(outputs.get('loss_kd', 0.0))])

    def after_train(self, runner):
        with open(f'{runner.work_dir}/loss_keys.json', 'w') as f:
            json.dump(self.rows, f)
