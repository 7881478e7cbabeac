"""Evaluate a checkpoint's subnets with the config's evaluator (COCO bbox/segm for detectors).

Same arguments as MMDetection's ``tools/test.py``, plus:

* ``--subnets all|NAME[,NAME...]`` (or ``--subnet``; default ``dense``): each chosen subnet is
  evaluated by switching masks; the model is built and the data loaded once. A checkpoint's
  masked layers are attached automatically; a checkpoint without masks is evaluated as
  ``dense``.
* ``--recalibrate-bn N``: re-estimate BatchNorm statistics on N training batches per subnet.
  Without it, a checkpoint that stores per-subnet BatchNorm statistics (``SubnetBNStatsHook``,
  ``tools/misc/store_bn_stats.py``) is evaluated with them; ``--trained-bn`` ignores them.
* ``--out results.json``: ``{"<subnet>": {"coco/bbox_mAP": ..., "sparsity": ..., "params":
  ..., "flops": ...}}``; ``--out x.pkl`` dumps raw predictions as MMDetection does (one
  subnet only).
* ``--report DIR``: results.md, results.csv and results.png (mAP against sparsity).
* ``--force``: overwrite existing ``--out`` / ``--report`` files (never the inputs).

Before anything is evaluated the checkpoint is checked against the config's model: missing
or mismatched weights (a checkpoint of another model) are an error, not a run on random
weights.
"""
import argparse
import os
import os.path as osp

from mmdet.utils import setup_cache_size_limit_of_dynamo
from mmengine.config import DictAction
from mmengine.dist import is_main_process

import mmsparse.datasets  # noqa: F401  (registers the datasets)
import mmsparse.engine  # noqa: F401  (registers hooks, allow-lists checkpoint globals)
from mmsparse.core.subnets import SubnetNameError
from mmsparse.datasets import check_dataset_paths
from mmsparse.engine.launch import (apply_common_args, build_runner, set_local_rank,
                                    shutdown_distributed)
from mmsparse.engine.network import unwrap
from mmsparse.engine.sparse_checkpoint import (check_model_fits, checkpoint_subnet_names,
                                               read_checkpoint, tool_config)
from mmsparse.evaluation import format_table, split_subnet_metrics, write_report
from mmsparse.evaluation.report import REPORT_FILES
from mmsparse.utils.safe_write import atomic_write_json, check_outputs, partial_path


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Test (and evaluate) a detector')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--work-dir', help='the dir to save the evaluation metrics')
    parser.add_argument('--out', help='results.json (metrics per subnet) or a .pkl file of '
                        'raw predictions')
    parser.add_argument('--subnets', '--subnet', dest='subnets', default='dense',
                        help="'all', or comma-separated subnet names (default: dense); "
                        '--subnet is the same option')
    parser.add_argument('--recalibrate-bn', type=int, default=0, metavar='N',
                        help='re-estimate BatchNorm statistics on N training batches per subnet')
    parser.add_argument('--trained-bn', action='store_true',
                        help='ignore the per-subnet BatchNorm statistics a checkpoint stores: '
                        'evaluate with the statistics training left')
    parser.add_argument('--report', metavar='DIR',
                        help='write results.md, results.csv and results.png to DIR')
    parser.add_argument('--force', action='store_true',
                        help='overwrite existing --out / --report files (never an input)')
    parser.add_argument('--show', action='store_true', help='show prediction results')
    parser.add_argument('--show-dir', help='directory to save painted images')
    parser.add_argument('--wait-time', type=float, default=2, help='the interval of show (s)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'],
                        default='none', help='job launcher')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args(argv)
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


def setup_subnet_evaluation(cfg, args):
    """Attach the checkpoint's masks (unless the config does) and loop over the subnets."""
    hooks = cfg.get('custom_hooks', None) or []
    if not any('SparseSubnetsHook' in str(h.get('type', '')) for h in hooks):
        cfg.custom_hooks = [*hooks, dict(type='mmsparse.SparseSubnetsHook')]
    fp16 = (cfg.get('test_cfg') or {}).get('fp16', False)
    cfg.test_cfg = dict(type='mmsparse.SubnetTestLoop', subnets=args.subnets,
                        recalibrate_bn=args.recalibrate_bn, stored_bn=not args.trained_bn,
                        fp16=fp16)


def check_request(args, state):
    """Fail before building anything on an empty subnet list or outputs that would
    overwrite a file."""
    if not [s for s in args.subnets.split(',') if s.strip()]:
        raise SubnetNameError(f'--subnets {args.subnets!r} names no subnet; pass \'all\' or '
                              'names the checkpoint holds: '
                              f'{", ".join(checkpoint_subnet_names(state))}')
    inputs = [args.config, args.checkpoint]
    if args.out:
        check_outputs([args.out], inputs, args.force, '--out')
    if args.report:
        check_outputs([osp.join(args.report, name) for name in REPORT_FILES], inputs,
                      args.force, '--report')


def main(argv=None):
    args = parse_args(argv)
    setup_cache_size_limit_of_dynamo()
    cfg = tool_config(args)
    state, _ = read_checkpoint(args.checkpoint)  # memory-mapped: cheap; names a torn file
    check_request(args, state)
    check_dataset_paths(cfg, ('test_dataloader',))
    apply_common_args(cfg, args)
    cfg.load_from = args.checkpoint
    if args.show or args.show_dir:
        trigger_visualization_hook(cfg, args)
    dump_predictions = args.out is not None and args.out.endswith(('.pkl', '.pickle'))
    if args.out is not None and not dump_predictions and not args.out.endswith('.json'):
        raise ValueError(f'--out must end with .json (metrics) or .pkl (predictions), '
                         f'got {args.out!r}')
    if dump_predictions and (args.subnets == 'all' or ',' in args.subnets):
        raise ValueError('--out .pkl dumps the predictions of one subnet; pass a single '
                         '--subnets name')
    setup_subnet_evaluation(cfg, args)
    if dump_predictions:
        cfg.test_evaluator = [cfg.test_evaluator] if isinstance(cfg.test_evaluator, dict) \
            else list(cfg.test_evaluator)
        # Written beside --out under a hidden name, renamed into place when complete.
        cfg.test_evaluator.append(dict(type='DumpDetResults',
                                       out_file_path=partial_path(args.out)))
    runner = build_runner(cfg)
    # mmengine's load_from is not strict: another model's checkpoint would only warn.
    check_model_fits(unwrap(runner.model).state_dict(), state, args.checkpoint)
    del state
    results = split_subnet_metrics(runner.test())
    main_process = is_main_process()
    shutdown_distributed()
    if not main_process:
        return
    if dump_predictions:
        os.replace(partial_path(args.out), args.out)
    print(format_table(results))
    if args.out is not None and not dump_predictions:
        atomic_write_json(args.out, results)
        print(f'results written to {args.out}')
    if args.report:
        print(f'report written to {write_report(results, args.report)}')


if __name__ == '__main__':
    main()
