"""Test-only hook: record how many images every loss forward of the detector got."""
import json

from mmengine.hooks import Hook
from mmengine.registry import HOOKS

from mmsparse.models.detector_call import batch_of, forward_mode


@HOOKS.register_module()
class PassSizesHook(Hook):
    """Write ``work_dir/pass_sizes.json``: per iteration, ``[[subnet, images], ...]`` for
    each loss forward (the joint step's dense pass re-enters the detector's forward)."""

    priority = 'LOWEST'  # its pre-hook runs after the joint step's split

    def __init__(self):
        self.rows = []

    def before_train(self, runner):
        model = getattr(runner.model, 'module', runner.model)
        network = model._mmsparse_network

        def record(module, args, kwargs):
            if forward_mode(args, kwargs) == 'loss':
                self.rows[-1].append([network.active.name, len(batch_of(args, kwargs)[1])])

        model.register_forward_pre_hook(record, with_kwargs=True)

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        self.rows.append([])

    def after_train(self, runner):
        with open(f'{runner.work_dir}/pass_sizes.json', 'w') as f:
            json.dump(self.rows, f)
