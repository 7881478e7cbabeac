"""Add subnet masks to a trained checkpoint (one-shot unified mask generation).

The masks are computed from the checkpoint's own weights (magnitude), so a dense model can be
evaluated at every sparsity without retraining: the baseline that co-training improves on.

Example::

    python tools/misc/attach_masks.py configs/shapes/mask-rcnn_r18_fpn_shapes.py \\
        work_dirs/demo/iter_600.pth --subnets cocktail --out work_dirs/demo/oneshot.pth
"""
import argparse
import time

import torch
from mmdet.registry import MODELS
from mmdet.utils import register_all_modules
from mmengine.config import Config
from mmengine.runner import load_checkpoint

import mmsparse.engine  # noqa: F401  (allow-lists checkpoint globals)
from mmsparse.core import MaskSpec, cocktail_subnets, generate_masks
from mmsparse.models import sparsify_detector


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('config')
    p.add_argument('checkpoint')
    p.add_argument('--subnets', default='cocktail',
                   help="'cocktail' (24 subnets) or comma-separated subnet names")
    p.add_argument('--include', nargs='+', default=['*'], help='layer name globs to sparsify')
    p.add_argument('--exclude', nargs='+', default=[], help='layer name globs to keep dense')
    p.add_argument('--unstructured-scope', choices=['global', 'layer'], default='global')
    p.add_argument('--out', required=True, help='output checkpoint')
    return p.parse_args()


def main():
    args = parse_args()
    register_all_modules()
    cfg = Config.fromfile(args.config)
    model = MODELS.build(cfg.model)
    checkpoint = load_checkpoint(model, args.checkpoint, map_location='cpu')
    start = time.time()
    network = sparsify_detector(model, args.include, args.exclude)
    subnets = (cocktail_subnets() if args.subnets == 'cocktail'
               else [s for s in args.subnets.split(',') if s])
    generate_masks(network, subnets, MaskSpec(unstructured_scope=args.unstructured_scope))
    meta = dict(checkpoint.get('meta', {}), mmsparse_subnets=[s.name for s in network.subnets()])
    torch.save(dict(meta=meta, state_dict=model.state_dict()), args.out)
    print(f'{len(network.layers)} masked layers, {len(network.subnets())} subnets '
          f'({time.time() - start:.1f}s) -> {args.out}')


if __name__ == '__main__':
    main()
