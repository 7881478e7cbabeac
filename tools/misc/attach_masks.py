"""Add subnet masks to a trained checkpoint (one-shot unified mask generation).

The masks are computed from the checkpoint's own weights (magnitude), so a dense model can be
evaluated at every sparsity without retraining: the baseline that co-training improves on.

Example::

    python tools/misc/attach_masks.py configs/shapes/mask-rcnn_r18_fpn_shapes.py \\
        work_dirs/demo/iter_600.pth --subnets cocktail --out work_dirs/demo/oneshot.pth

The checkpoint must hold every weight of the config's model with the model's shapes (a
checkpoint of another model is refused, not masked on random weights). ``--out`` may not be
an input and may not exist unless ``--force`` is given.
"""
import argparse
import time

from mmdet.registry import MODELS
from mmdet.utils import register_all_modules
from mmengine.config import Config

import mmsparse.engine  # noqa: F401  (allow-lists checkpoint globals)
from mmsparse.core import MaskSpec, cocktail_subnets, generate_masks, parse_subnets
from mmsparse.core.subnets import SubnetNameError
from mmsparse.engine.sparse_checkpoint import check_model_fits, read_checkpoint
from mmsparse.models import sparsify_detector
from mmsparse.utils.safe_write import atomic_save, check_outputs


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('config')
    p.add_argument('checkpoint')
    p.add_argument('--subnets', '--subnet', dest='subnets', default='cocktail',
                   help="'cocktail' (24 subnets) or comma-separated subnet names; --subnet is "
                   'the same option')
    p.add_argument('--include', nargs='+', default=['*'], help='layer name globs to sparsify')
    p.add_argument('--exclude', nargs='+', default=[], help='layer name globs to keep dense')
    p.add_argument('--unstructured-scope', choices=['global', 'layer'], default='global')
    p.add_argument('--out', required=True, help='output checkpoint')
    p.add_argument('--force', action='store_true',
                   help='overwrite --out if it exists (never an input)')
    return p.parse_args(argv)


def requested_subnets(text):
    """The subnets ``--subnets`` names (parsed now: a bad name fails before any work)."""
    if text.strip() == 'cocktail':
        return cocktail_subnets()
    subnets = parse_subnets([s for s in text.split(',') if s.strip()])
    if not subnets:
        raise SubnetNameError(f'--subnets {text!r} names no subnet; pass \'cocktail\' or names '
                              'such as unstructured@0.5,channel@0.3,nm@2:4')
    return subnets


def main(argv=None):
    args = parse_args(argv)
    subnets = requested_subnets(args.subnets)
    check_outputs([args.out], [args.config, args.checkpoint], args.force)
    state, meta = read_checkpoint(args.checkpoint)
    register_all_modules()
    cfg = Config.fromfile(args.config)
    model = MODELS.build(cfg.model)
    check_model_fits(model.state_dict(), state, args.checkpoint)
    model.load_state_dict(state, strict=False)  # extra keys (e.g. old masks) are dropped
    del state
    start = time.time()
    network = sparsify_detector(model, args.include, args.exclude)
    generate_masks(network, subnets, MaskSpec(unstructured_scope=args.unstructured_scope))
    meta = dict(meta, mmsparse_subnets=[s.name for s in network.subnets()])
    atomic_save(dict(meta=meta, state_dict=model.state_dict()), args.out)
    print(f'{len(network.layers)} masked layers, {len(network.subnets())} subnets '
          f'({time.time() - start:.1f}s) -> {args.out}')


if __name__ == '__main__':
    main()
