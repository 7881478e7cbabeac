"""Test-only hook: record a BatchNorm's running mean at every test (or validation) iteration
and at the end."""
import json

from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS


@HOOKS.register_module()
class BNProbeHook(Hook):
    """Append ``[when, active subnet, sum of a BN's running mean]`` per test iteration
    (``'iter'``) and validation iteration (``'val_iter'``); written after each test or
    validation.

    The BN is ``backbone.layer1.0.bn1``, which follows a masked conv (the stem's BN would
    see the same input under every subnet).
    """

    priority = 'LOWEST'

    def __init__(self, out):
        self.out = out
        self.records = []

    def _model(self, runner):
        return runner.model.module if is_model_wrapper(runner.model) else runner.model

    def _record(self, runner, when):
        model = self._model(runner)
        network = getattr(model, '_mmsparse_network', None)
        active = network.active.name if network is not None else 'dense'
        bn = model.backbone.layer1[0].bn1
        self.records.append([when, active, float(bn.running_mean.sum())])

    def before_run(self, runner):
        self._record(runner, 'before_run')  # before the checkpoint loads: not compared

    def before_test(self, runner):
        self._record(runner, 'before_test')

    def before_test_iter(self, runner, batch_idx, data_batch=None):
        self._record(runner, 'iter')

    def after_test(self, runner):
        self._record(runner, 'after_test')
        self._dump()

    def before_val_iter(self, runner, batch_idx, data_batch=None):
        self._record(runner, 'val_iter')

    def after_val(self, runner):
        self._dump()

    def _dump(self):
        with open(self.out, 'w') as f:
            json.dump(self.records, f)
