"""Test-only hook: each rank records which subnet every iteration trained, and its masks."""
import torch
from mmengine.dist import get_rank
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS

from mmsparse.core import is_mask_key


@HOOKS.register_module()
class SubnetTraceHook(Hook):
    """Write ``work_dir/trace_rank{r}.pth``: [(iter, subnet)], the final mask buffers and
    the stored per-subnet BatchNorm statistics (empty without SubnetBNStatsHook)."""

    priority = 'LOW'  # after SparseCocktailHook chose the subnet

    def __init__(self):
        self.trace = []

    def _model(self, runner):
        return runner.model.module if is_model_wrapper(runner.model) else runner.model

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        network = self._model(runner)._mmsparse_network
        self.trace.append([runner.iter, network.active.name])

    def after_train(self, runner):
        state = self._model(runner).state_dict()
        masks = {k: v.clone() for k, v in state.items() if is_mask_key(k)}
        bn_stats = {k: v.clone() for k, v in state.items() if '.subnet_running_' in k}
        torch.save(dict(trace=self.trace, masks=masks, bn_stats=bn_stats),
                   f'{runner.work_dir}/trace_rank{get_rank()}.pth')
