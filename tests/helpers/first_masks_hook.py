"""Test-only hook: records what a run starts from, for the fine-tuning tests."""
import torch
from mmengine.hooks import Hook
from mmengine.registry import HOOKS

from mmsparse.core import is_mask_key


def _state(runner):
    model = runner.model.module if hasattr(runner.model, 'module') else runner.model
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@HOOKS.register_module()
class FirstMasksHook(Hook):
    """Write ``work_dir/first_masks.pth``: ``init`` (the weights at ``before_run``, i.e. the
    random init, before any checkpoint loads), ``start`` (the weights and ``masks`` the
    first iteration trains with, after every hook's ``before_train``)."""

    priority = 'LOWEST'

    def before_run(self, runner):
        self.init = {k: v for k, v in _state(runner).items() if not is_mask_key(k)}

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        if runner.iter != 0:
            return
        state = _state(runner)
        torch.save(dict(init=self.init,
                        start={k: v for k, v in state.items() if not is_mask_key(k)},
                        masks={k: v for k, v in state.items() if is_mask_key(k)}),
                   f'{runner.work_dir}/first_masks.pth')
