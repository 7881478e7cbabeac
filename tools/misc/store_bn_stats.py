"""Store every subnet's BatchNorm statistics in a trained mmsparse checkpoint.

What ``SubnetBNStatsHook`` does at the end of training, for a checkpoint trained without it:
each subnet's BatchNorm statistics are re-estimated on the first N training batches (as
``tools/test.py --recalibrate-bn N`` does) and written into the output checkpoint, which
``tools/test.py`` and ``tools/export_subnet.py`` then use without flags.

Example::

    python tools/misc/store_bn_stats.py \\
        configs/cocktail/mask-rcnn_r18_fpn_cocktail-paper_600it_shapes.py \\
        work_dirs/cocktail/iter_600.pth --batches 20 --out work_dirs/cocktail/iter_600_bn.pth

``--out`` may not be an input and may not exist unless ``--force`` is given.
"""
import argparse
import time

from mmdet.utils import register_all_modules
from mmengine.config import DictAction
from mmengine.utils import ProgressBar

import mmsparse.datasets  # noqa: F401  (registers the datasets)
import mmsparse.engine  # noqa: F401  (allow-lists mmengine checkpoint globals)
from mmsparse.core.batchnorm.stored_stats import store_subnet_bn_stats
from mmsparse.core.subnets import SubnetNameError
from mmsparse.datasets import check_dataset_paths
from mmsparse.engine.runner.calibration import calibration_batches, forward_batches
from mmsparse.engine.sparse_checkpoint import load_sparse_detector, tool_config
from mmsparse.utils.safe_write import atomic_save, check_outputs


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('config', help='the config the checkpoint was trained with')
    p.add_argument('checkpoint', help="an mmsparse checkpoint holding the subnets' masks")
    p.add_argument('--batches', type=int, default=20,
                   help='training batches per subnet (default 20)')
    p.add_argument('--out', required=True, help='output checkpoint (.pth)')
    p.add_argument('--force', action='store_true',
                   help='overwrite --out if it exists (never an input)')
    p.add_argument('--cfg-options', nargs='+', action=DictAction, help='override config settings')
    args = p.parse_args(argv)
    if args.batches < 1:
        p.error('--batches must be >= 1')
    return args


def main(argv=None):
    args = parse_args(argv)
    check_outputs([args.out], [args.config, args.checkpoint], args.force)
    register_all_modules()
    cfg = tool_config(args)
    check_dataset_paths(cfg, ('train_dataloader', ))
    model, network, meta = load_sparse_detector(cfg, args.checkpoint)
    if network is None:
        raise SubnetNameError(f'{args.checkpoint} holds no sparse subnets (no mask buffers): '
                              'there are no per-subnet statistics to store')
    start = time.time()
    batches = calibration_batches(cfg.train_dataloader, args.batches)
    bar = ProgressBar(len(network.subnets()))
    specs = store_subnet_bn_stats(network, forward_batches(batches),
                                  progress=lambda _: bar.update())
    atomic_save(dict(meta=dict(meta, mmsparse_bn_stats_batches=len(batches)),
                     state_dict=model.state_dict()), args.out)
    print(f'\nstored the BatchNorm statistics of {len(specs)} subnets ({len(batches)} batches '
          f'each, {time.time() - start:.0f}s) -> {args.out}')


if __name__ == '__main__':
    main()
