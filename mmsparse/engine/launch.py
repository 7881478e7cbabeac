"""Helpers shared by ``tools/train.py`` and ``tools/test.py``.

They adapt a loaded mmengine ``Config`` to the command line the way MMDetection's tools do,
plus what MMDetection's tools get wrong for mmsparse:

* ``--launcher pytorch`` on a CPU-only machine. mmengine 0.10.7's ``init_dist`` calls
  ``torch.cuda.set_device`` and its ``wrap_model`` passes ``device_ids=[LOCAL_RANK]``, which
  DDP rejects for CPU modules. We initialise a gloo process group ourselves before the Runner
  (mmengine then skips ``init_dist``) and select a DDP wrapper with ``device_ids=None``.
* Nothing destroys the process group at the end. With gloo, a process that exits with its
  group alive can abort during interpreter shutdown ("terminate called without an active
  exception", pytorch/pytorch#190489), after the work is done and saved;
  :func:`shutdown_distributed` ends it cleanly.
* ``--amp`` replaces any optimizer wrapper type with ``AmpOptimWrapper`` in MMDetection's
  train.py, silently dropping mmsparse's own wrapper. We map each wrapper to its AMP variant.
"""
import os
import os.path as osp

import torch
import torch.distributed as dist
from mmengine.registry import RUNNERS
from mmengine.runner import Runner

from mmsparse.utils.checkpoint import PortableCheckpointHook

from .sparse_checkpoint import load_checkpoint_file

# Optimizer wrapper type -> its AMP variant. mmsparse's sparse wrappers add themselves here.
AMP_VARIANTS = {'OptimWrapper': 'AmpOptimWrapper', 'AmpOptimWrapper': 'AmpOptimWrapper'}


def setup_distributed(cfg, launcher):
    """Prepare ``cfg`` (in place) for the given launcher; start gloo on CPU-only machines.

    On machines with CUDA nothing changes: mmengine initialises NCCL as usual.
    """
    cfg.launcher = launcher
    if launcher == 'none' or torch.cuda.is_available():
        return
    if launcher != 'pytorch':
        raise ValueError(f'CPU-only distributed runs support --launcher pytorch (torchrun), '
                         f'got --launcher {launcher}')
    env_cfg = cfg.setdefault('env_cfg', {})
    env_cfg['dist_cfg'] = dict(backend='gloo')
    if not dist.is_initialized():
        dist.init_process_group(backend='gloo')  # env:// from torchrun's variables
    wrapper = dict(cfg.get('model_wrapper_cfg') or {})
    wrapper.setdefault('type', 'MMDistributedDataParallel')
    wrapper.setdefault('broadcast_buffers', False)
    wrapper.setdefault('find_unused_parameters', cfg.get('find_unused_parameters', False))
    wrapper['device_ids'] = None  # CPU modules: DDP must not be given device ids
    cfg.model_wrapper_cfg = wrapper


def shutdown_distributed():
    """Wait for every rank, then destroy the default process group; a no-op when there is none.

    The barrier keeps a rank that finishes early (rank 0 alone writes results) from closing
    its connections while the others still talk to it.
    """
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def enable_amp(cfg):
    """Switch ``cfg.optim_wrapper`` to its automatic-mixed-precision variant (in place).

    Raises:
        RuntimeError: on a machine where torch sees no CUDA device (mmengine's AMP wrapper
            would fail later with a message about its dtype).
    """
    if not torch.cuda.is_available():
        raise RuntimeError('--amp: automatic mixed precision needs a CUDA GPU, and torch sees '
                           'none on this machine; train without --amp here')
    wrapper_type = cfg.optim_wrapper.get('type', 'OptimWrapper')
    scope, _, name = wrapper_type.rpartition('.')
    if name not in AMP_VARIANTS:
        raise ValueError(f'--amp: optimizer wrapper {wrapper_type!r} has no AMP variant; '
                         f'known: {sorted(AMP_VARIANTS)}')
    amp_type = AMP_VARIANTS[name]
    cfg.optim_wrapper.type = f'{scope}.{amp_type}' if scope else amp_type
    cfg.optim_wrapper.setdefault('loss_scale', 'dynamic')


def apply_common_args(cfg, args):
    """Apply ``--work-dir`` (or the default ``work_dirs/<config name>``) and the launcher."""
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir', None) is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(args.config))[0])
    setup_distributed(cfg, args.launcher)


def apply_resume(cfg, resume):
    """``--resume`` (latest checkpoint in the work dir) or ``--resume PATH``.

    The checkpoint to resume from is checked now, before the Runner is built: an empty or
    stale ``last_checkpoint`` file and a truncated checkpoint are named with what to do.
    Without ``last_checkpoint`` mmengine starts from scratch, as in MMDetection.
    """
    if resume == 'auto':
        cfg.resume = True
        cfg.load_from = None
        pointer = osp.join(cfg.work_dir, 'last_checkpoint')
        if osp.isfile(pointer):
            with open(pointer) as f:
                target = f.read().strip()
            if not target:
                raise RuntimeError(f'--resume: {pointer!r} is empty (an interrupted run?); '
                                   'pass the checkpoint to resume from (--resume PATH) or '
                                   'delete that file to start from scratch')
            if not osp.isfile(target):
                raise FileNotFoundError(f'--resume: {pointer!r} points at {target!r}, which '
                                        'does not exist; pass --resume PATH')
            load_checkpoint_file(target)
    elif resume is not None:
        if not osp.isfile(resume):
            raise FileNotFoundError(f'--resume: checkpoint {resume!r} does not exist')
        load_checkpoint_file(resume)  # a clear error for a truncated file
        cfg.resume = True
        cfg.load_from = resume


def set_local_rank(local_rank):
    """Accept both ``--local-rank`` and ``--local_rank`` (older launchers pass the latter)."""
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(local_rank)


def build_runner(cfg):
    """Build the Runner the way MMDetection's tools do (honouring ``runner_type``), with
    :class:`~mmsparse.utils.checkpoint.PortableCheckpointHook`, so the checkpoints it saves
    resume under ``torch.load(weights_only=True)``."""
    runner = Runner.from_cfg(cfg) if 'runner_type' not in cfg else RUNNERS.build(cfg)
    runner.register_hook(PortableCheckpointHook())
    return runner
