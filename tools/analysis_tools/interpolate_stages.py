"""Network interpolation: greedily average a co-training run's per-stage weights.

The stage checkpoints come from ``SparseCocktailHook(save_stage_checkpoints=True)``. Each
candidate average is scored by the summed COCO mAP (bbox, and segm if evaluated) of the
chosen subnets on a held-out split of the *training* annotations (the last ``--heldout``
images), never the val set. For a strict hold-out, train with those images excluded
(``train_dataloader.dataset.indices``). Cost: len(grid) x (stages - 1) evaluations of
every chosen subnet on the held-out images.

Example::

    python tools/analysis_tools/interpolate_stages.py CONFIG work_dirs/run \\
        --heldout 32 --subnets dense,unstructured@0.49,channel@0.27,nm@2:4 --out interp.pth

``--out`` may not be an input (a stage checkpoint, the config) and may not exist unless
``--force`` is given; this is checked before anything is evaluated.
"""
import argparse
import copy
import json
import os.path as osp
import re
from pathlib import Path

from mmengine.config import Config

import mmsparse.datasets  # noqa: F401  (registers the datasets)
import mmsparse.engine  # noqa: F401  (registers hooks and loops, allow-lists checkpoints)
from mmsparse.core.methods.interpolation import DEFAULT_GRID, greedy_interpolation
from mmsparse.core.subnets import SubnetNameError
from mmsparse.engine.launch import build_runner
from mmsparse.engine.network import unwrap
from mmsparse.engine.sparse_checkpoint import load_checkpoint_file
from mmsparse.utils.safe_write import atomic_save, check_outputs


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('config')
    p.add_argument('work_dir', help='folder with stage_<s>.pth checkpoints')
    p.add_argument('--heldout', type=int, default=32, help='held-out training images')
    p.add_argument('--subnets', '--subnet', dest='subnets', default='all',
                   help="'all' or comma-separated names to score; --subnet is the same option")
    p.add_argument('--grid', default=','.join(map(str, DEFAULT_GRID)),
                   help='comma-separated candidate p values')
    p.add_argument('--out', required=True, help='the interpolated checkpoint (.pth)')
    p.add_argument('--force', action='store_true',
                   help='overwrite --out if it exists (never an input)')
    return p.parse_args(argv)


def heldout_split(cfg, count, out_dir):
    """Write the last ``count`` images of the training annotations as a COCO file."""
    train = cfg.train_dataloader.dataset
    source = osp.join(train.get('data_root', ''), train.ann_file)
    coco = json.loads(Path(source).read_text())
    images = coco['images'][-count:]
    ids = {im['id'] for im in images}
    subset = dict(coco, images=images,
                  annotations=[a for a in coco['annotations'] if a['image_id'] in ids])
    path = Path(out_dir, 'heldout_train_split.json').resolve()
    path.write_text(json.dumps(subset))
    return str(path)


def main(argv=None):
    args = parse_args(argv)
    if not [s for s in args.subnets.split(',') if s.strip()]:
        raise SubnetNameError(f'--subnets {args.subnets!r} names no subnet; pass \'all\' or '
                              'comma-separated names the checkpoints hold')
    stages = sorted(Path(args.work_dir).glob('stage_*.pth'),
                    key=lambda p: int(re.findall(r'\d+', p.stem)[0]))
    if not stages:
        raise FileNotFoundError(f'no stage_<s>.pth in {args.work_dir}; train with '
                                'SparseCocktailHook(save_stage_checkpoints=True)')
    check_outputs([args.out], [args.config, *stages], args.force)
    cfg = Config.fromfile(args.config)
    cfg.work_dir = osp.join(args.work_dir, 'interpolation')
    Path(cfg.work_dir).mkdir(parents=True, exist_ok=True)
    ann = heldout_split(cfg, args.heldout, cfg.work_dir)
    heldout = copy.deepcopy(cfg.train_dataloader.dataset)
    heldout.update(ann_file=ann, test_mode=True, pipeline=cfg.test_dataloader.dataset.pipeline)
    heldout.pop('filter_cfg', None)
    cfg.test_dataloader.dataset = heldout
    cfg.test_evaluator.ann_file = ann
    cfg.custom_hooks = [dict(type='mmsparse.SparseSubnetsHook')]  # masks from the checkpoint
    cfg.test_cfg = dict(type='mmsparse.SubnetTestLoop', subnets=args.subnets)
    cfg.load_from = str(stages[-1])
    runner = build_runner(cfg)
    runner.test()  # builds everything once and attaches the masked layers
    model = unwrap(runner.model)

    def score(state):
        model.load_state_dict(state, strict=False)
        metrics = runner.test_loop.run()
        return sum(v for k, v in metrics.items()
                   if k.endswith(('/coco/bbox_mAP', '/coco/segm_mAP')))

    states = [load_checkpoint_file(p, mmap=False)['state_dict'] for p in stages]
    grid = [float(g) for g in args.grid.split(',')]
    state, history = greedy_interpolation(states, score, grid, log=runner.logger.info)
    atomic_save(dict(meta=dict(interpolation=[list(h) for h in history],
                               stages=[p.name for p in stages]), state_dict=state), args.out)
    print(f'interpolated {len(stages)} stages -> {args.out}: {history}')


if __name__ == '__main__':
    main()
