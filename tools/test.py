"""Evaluate a checkpoint with the config's evaluator (COCO bbox/segm for the shapes configs).

Same arguments as MMDetection's ``tools/test.py``. ``--out`` ending in ``.pkl`` dumps the raw
predictions as MMDetection does; ``--out results.json`` writes the metrics as
``{"<subnet>": {"coco/bbox_mAP": ..., ...}}`` (mmsparse's results contract).
"""
import argparse
import json
import os.path as osp

from mmdet.utils import setup_cache_size_limit_of_dynamo
from mmengine.config import Config, DictAction
from mmengine.dist import is_main_process

import mmsparse.datasets  # noqa: F401  (registers the datasets)
import mmsparse.engine  # noqa: F401  (registers hooks, allow-lists checkpoint globals)
from mmsparse.datasets import check_dataset_paths
from mmsparse.engine.launch import apply_common_args, build_runner, set_local_rank


def parse_args():
    parser = argparse.ArgumentParser(description='Test (and evaluate) a detector')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--work-dir', help='the dir to save the evaluation metrics')
    parser.add_argument('--out', help='results.json (metrics per subnet) or a .pkl file of '
                        'raw predictions')
    parser.add_argument('--show', action='store_true', help='show prediction results')
    parser.add_argument('--show-dir', help='directory to save painted images')
    parser.add_argument('--wait-time', type=float, default=2, help='the interval of show (s)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'],
                        default='none', help='job launcher')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args()
    set_local_rank(args.local_rank)
    return args


def trigger_visualization_hook(cfg, args):
    """Turn on MMDetection's visualization hook for --show / --show-dir."""
    if 'visualization' not in cfg.default_hooks:
        raise RuntimeError('--show/--show-dir need a "visualization" entry in '
                           'default_hooks (e.g. DetVisualizationHook)')
    hook = cfg.default_hooks['visualization']
    hook['draw'] = True
    if args.show:
        hook['show'] = True
        hook['wait_time'] = args.wait_time
    if args.show_dir:
        hook['test_out_dir'] = args.show_dir


def main():
    args = parse_args()
    setup_cache_size_limit_of_dynamo()
    cfg = Config.fromfile(args.config)
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    if not osp.isfile(args.checkpoint):
        raise FileNotFoundError(f'checkpoint {args.checkpoint!r} does not exist')
    check_dataset_paths(cfg, ('test_dataloader',))
    apply_common_args(cfg, args)
    cfg.load_from = args.checkpoint
    if args.show or args.show_dir:
        trigger_visualization_hook(cfg, args)
    dump_predictions = args.out is not None and args.out.endswith(('.pkl', '.pickle'))
    if args.out is not None and not dump_predictions and not args.out.endswith('.json'):
        raise ValueError(f'--out must end with .json (metrics) or .pkl (predictions), '
                         f'got {args.out!r}')
    if dump_predictions:
        cfg.test_evaluator = [cfg.test_evaluator] if isinstance(cfg.test_evaluator, dict) \
            else list(cfg.test_evaluator)
        cfg.test_evaluator.append(dict(type='DumpDetResults', out_file_path=args.out))
    runner = build_runner(cfg)
    metrics = runner.test()
    if args.out is not None and not dump_predictions and is_main_process():
        with open(args.out, 'w') as f:
            json.dump({'dense': metrics}, f, indent=2)
        print(f'metrics written to {args.out}')


if __name__ == '__main__':
    main()
