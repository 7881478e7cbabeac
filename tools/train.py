"""Train a detector, dense or sparse, with MMDetection's loop and arguments.

Same arguments as MMDetection's ``tools/train.py``; ``--amp`` keeps mmsparse's optimizer
wrappers (it maps each to its AMP variant), and ``--launcher pytorch`` also works on
CPU-only machines (gloo).
"""
import argparse

from mmdet.utils import setup_cache_size_limit_of_dynamo
from mmengine.config import Config, DictAction

import mmsparse.datasets  # noqa: F401  (registers the datasets)
import mmsparse.engine  # noqa: F401  (registers hooks, allow-lists checkpoint globals)
from mmsparse.datasets import check_dataset_paths
from mmsparse.engine.config_options import merge_cfg_options
from mmsparse.engine.launch import (apply_common_args, apply_resume, build_runner, enable_amp,
                                    set_local_rank, shutdown_distributed)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Train a detector')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--work-dir', help='the dir to save logs and models')
    parser.add_argument('--amp', action='store_true', default=False,
                        help='enable automatic-mixed-precision training (needs a CUDA GPU)')
    parser.add_argument('--auto-scale-lr', action='store_true',
                        help='enable automatically scaling LR')
    parser.add_argument('--resume', nargs='?', type=str, const='auto',
                        help='resume from the given checkpoint, or from the latest one in '
                        'the work dir if no path is given')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, e.g. train_cfg.max_iters=100')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'],
                        default='none', help='job launcher')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args(argv)
    set_local_rank(args.local_rank)
    return args


def main(argv=None):
    args = parse_args(argv)
    setup_cache_size_limit_of_dynamo()
    cfg = Config.fromfile(args.config)
    if args.cfg_options is not None:
        merge_cfg_options(cfg, args.cfg_options)  # named hook options reach custom_hooks
    check_dataset_paths(cfg, ('train_dataloader', 'val_dataloader'))
    apply_common_args(cfg, args)
    if args.amp:
        enable_amp(cfg)
    if args.auto_scale_lr:
        if 'auto_scale_lr' not in cfg or 'base_batch_size' not in cfg.auto_scale_lr:
            raise RuntimeError('--auto-scale-lr needs "auto_scale_lr.base_batch_size" in the '
                               'config')
        cfg.auto_scale_lr.enable = True
    apply_resume(cfg, args.resume)
    runner = build_runner(cfg)
    runner.train()
    shutdown_distributed()


if __name__ == '__main__':
    main()
