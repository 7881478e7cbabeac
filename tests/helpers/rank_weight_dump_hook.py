"""Test-only hook: every rank saves its parameters at the end of training."""
import torch
from mmengine.dist import get_rank
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS


@HOOKS.register_module()
class RankWeightDumpHook(Hook):
    """Write ``work_dir/rank{r}_params.pth`` with this rank's parameters after training."""

    def after_train(self, runner):
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        params = {k: v.detach().clone() for k, v in model.named_parameters()}
        torch.save(dict(params=params, iter=runner.iter, wrapper=type(runner.model).__name__),
                   f'{runner.work_dir}/rank{get_rank()}_params.pth')
