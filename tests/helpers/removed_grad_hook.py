"""Test-only hook: record, per iteration, the gradient on the weights the subnet removes."""
import json

from mmengine.hooks import Hook
from mmengine.registry import HOOKS


@HOOKS.register_module()
class RemovedGradHook(Hook):
    """Write ``work_dir/removed_grad.json``.

    It holds ``rows``, one ``[subnet, max |grad| on the weights it removes]`` per backward
    of the first masked layer of ``backbone.layer2`` (None on dense steps), and
    ``straight_through_after_train``, that layer's flag once training ended.
    """

    priority = 'LOWEST'

    def __init__(self):
        self.rows = []

    def before_train(self, runner):
        model = getattr(runner.model, 'module', runner.model)
        network = model._mmsparse_network
        self.layer = next(m for n, m in network.layers.items() if 'backbone.layer2' in n)

        def record(grad):
            spec = network.active
            if spec.pattern == 'dense':
                self.rows.append([spec.name, None])
            else:
                removed = self.layer.mask_for(spec) == 0
                self.rows.append([spec.name, float(grad[removed].abs().max())])

        self.layer.dense_weight.register_hook(record)

    def after_train(self, runner):
        with open(f'{runner.work_dir}/removed_grad.json', 'w') as f:
            json.dump(dict(rows=self.rows,
                           straight_through_after_train=self.layer.straight_through), f)
