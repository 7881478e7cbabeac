"""Refuse to start a fine-tuning run without the checkpoint it fine-tunes."""
import os.path as osp

from mmengine.hooks import Hook
from mmengine.runner import BaseLoop, find_latest_checkpoint

from mmsparse.registry import HOOKS


@HOOKS.register_module()
class RequireLoadFromHook(Hook):
    """Fail at ``before_run`` when a training run has no checkpoint to start from.

    A fine-tune config's schedule (a short budget, a reduced learning rate, frozen stages)
    is meant for trained weights, and its start (``load_from``) is given on the command
    line: without it mmengine would silently train the random init. The run fails before
    anything is trained, naming the option to set.

    Resuming (``--resume``) needs no ``load_from`` when the work dir holds a checkpoint to
    resume from. A local ``load_from`` must exist (a URL is left to mmengine's loader).
    Evaluation (``tools/test.py``, which sets ``load_from`` to its checkpoint) and other runs
    without a training loop are not checked.
    """

    priority = 'HIGHEST'  # before SparseSubnetsHook's model analysis, whatever the list order

    def before_run(self, runner):
        if not isinstance(getattr(runner, '_train_loop', None), BaseLoop):
            return
        load_from = getattr(runner, '_load_from', None)
        if load_from:
            if '://' not in str(load_from) and not osp.isfile(str(load_from)):
                raise FileNotFoundError(f'mmsparse: load_from={str(load_from)!r} does not '
                                        'exist: pass the checkpoint to fine-tune with '
                                        '--cfg-options load_from=CKPT')
            return
        if getattr(runner, '_resume', False):
            if find_latest_checkpoint(runner.work_dir):
                return
            raise ValueError(
                f'mmsparse: --resume found no checkpoint in the work dir {runner.work_dir!r}, '
                'and this fine-tune config has no load_from: it would train the random init. '
                'Pass the checkpoint to resume from (--resume PATH) or start the run with '
                '--cfg-options load_from=CKPT')
        raise ValueError(
            'mmsparse: this fine-tune config has no load_from, so it would train the random '
            'init with a fine-tuning schedule: pass the trained checkpoint to start from with '
            '--cfg-options load_from=CKPT (a local file or a URL)')
