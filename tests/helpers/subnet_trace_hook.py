"""Test-only hook: each rank records which subnet every iteration trained, and its masks."""
import torch
from mmengine.dist import get_rank
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS

from mmsparse.core import is_mask_key


@HOOKS.register_module()
class SubnetTraceHook(Hook):
    """Write ``work_dir/trace_rank{r}.pth``: [(iter, subnet)] and the final mask buffers."""

    priority = 'LOW'  # after SparseCocktailHook chose the subnet

    def __init__(self):
        self.trace = []

    def _model(self, runner):
        return runner.model.module if is_model_wrapper(runner.model) else runner.model

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        network = self._model(runner)._mmsparse_network
        self.trace.append([runner.iter, network.active.name])

    def after_train(self, runner):
        masks = {k: v.clone() for k, v in self._model(runner).state_dict().items()
                 if is_mask_key(k)}
        torch.save(dict(trace=self.trace, masks=masks),
                   f'{runner.work_dir}/trace_rank{get_rank()}.pth')
