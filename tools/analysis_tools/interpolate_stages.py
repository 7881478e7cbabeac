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
"""
import argparse
import copy
import json
import os.path as osp
import re
from pathlib import Path

import torch
from mmengine.config import Config

import mmsparse.datasets  # noqa: F401  (registers the datasets)
import mmsparse.engine  # noqa: F401  (registers hooks and loops, allow-lists checkpoints)
from mmsparse.core.methods.interpolation import DEFAULT_GRID, greedy_interpolation
from mmsparse.engine.network import unwrap
from mmsparse.engine.launch import build_runner


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('config')
    p.add_argument('work_dir', help='folder with stage_<s>.pth checkpoints')
    p.add_argument('--heldout', type=int, default=32, help='held-out training images')
    p.add_argument('--subnets', default='all', help="'all' or comma-separated names to score")
    p.add_argument('--grid', default=','.join(map(str, DEFAULT_GRID)),
                   help='comma-separated candidate p values')
    p.add_argument('--out', required=True)
    return p.parse_args()


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


def main():
    args = parse_args()
    stages = sorted(Path(args.work_dir).glob('stage_*.pth'),
                    key=lambda p: int(re.findall(r'\d+', p.stem)[0]))
    if not stages:
        raise FileNotFoundError(f'no stage_<s>.pth in {args.work_dir}; train with '
                                'SparseCocktailHook(save_stage_checkpoints=True)')
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

    states = [torch.load(p, map_location='cpu', weights_only=True)['state_dict'] for p in stages]
    grid = [float(g) for g in args.grid.split(',')]
    state, history = greedy_interpolation(states, score, grid, log=runner.logger.info)
    torch.save(dict(meta=dict(interpolation=[list(h) for h in history],
                              stages=[p.name for p in stages]), state_dict=state), args.out)
    print(f'interpolated {len(stages)} stages -> {args.out}: {history}')


if __name__ == '__main__':
    main()
