"""Time per training iteration: Sparse Cocktail co-training (the paper's recipe plain, with
distillation, with the joint dense loss on the same or on split batches, with
straight-through sparse steps; the recommended recipe) vs plain MMDetection training.

Same model, data, batch and iterations; both through ``tools/train.py``. Per-iteration times
come from mmengine's own log (``time``, logged every iteration), medians after a warm-up.
The stage-boundary mask regenerations (9 over a whole run) are reported separately: the
benchmark runs few iterations, so their share here would overstate a real run's.

Usage::

    python benchmarks/cocktail_overhead.py [--iters 60] [--out results.json]
        [--configs cocktail cocktail_joint_split]   # a subset (dense always runs)
"""
import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from report import report_figures  # benchmarks/report.py (scripts run from here)

REPO = Path(__file__).resolve().parents[1]
PAPER = REPO / 'configs/cocktail/mask-rcnn_r18_fpn_cocktail-paper_600it_shapes.py'
SPLIT = ['sparse_cocktail.joint_dense.split_batch=True']
# name: (config, --cfg-options). 'dense' is the reference every other entry's ratio is taken
# against; the variants are the paper's recipe with one option changed by name.
CONFIGS = {
    'dense': (REPO / 'configs/shapes/mask-rcnn_r18_fpn_shapes.py', []),
    'cocktail': (PAPER, []),
    'cocktail_kd': (PAPER, ['sparse_cocktail.distill.weight=0.5']),
    'cocktail_joint': (PAPER, ['sparse_cocktail.joint_dense=True']),
    'cocktail_joint_split': (PAPER, SPLIT),
    'cocktail_ste': (PAPER, ['sparse_cocktail.straight_through=True']),
    'cocktail_joint_split_ste': (PAPER, SPLIT + ['sparse_cocktail.straight_through=True']),
    # The recommended recipe; its per-subnet BatchNorm statistics (after the last iteration,
    # outside the timed iterations) on one batch, to keep the benchmark short.
    'recipe': (REPO / 'configs/cocktail/mask-rcnn_r18_fpn_cocktail_600it_shapes.py',
               ['subnet_bn_stats.batches=1']),
}


def run(config, options, iters, work_dir):
    """Train ``iters`` iterations; return per-iteration times and the tool's log."""
    args = [sys.executable, str(REPO / 'tools/train.py'), str(config), '--work-dir', str(work_dir),
            '--cfg-options', f'train_cfg.max_iters={iters}', 'train_cfg.val_interval=100000',
            'default_hooks.logger.interval=1', 'log_processor.window_size=1',
            'default_hooks.checkpoint.interval=100000', *options]
    result = subprocess.run(args, cwd=REPO, capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(result.stderr[-3000:])
    scalars = next(Path(work_dir).rglob('scalars.json')).read_text().splitlines()
    times = [json.loads(line)['time'] for line in scalars if '"time"' in line]
    return times, result.stdout + result.stderr


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--iters', type=int, default=60)
    parser.add_argument('--warmup', type=int, default=10)
    parser.add_argument('--out')
    parser.add_argument('--configs', nargs='+', choices=[n for n in CONFIGS if n != 'dense'],
                        help='time only these against dense (default: all)')
    args = parser.parse_args()
    chosen = {n: c for n, c in CONFIGS.items() if n == 'dense' or args.configs is None
              or n in args.configs}
    figures = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (config, options) in chosen.items():
            times, log = run(config, options, args.iters, Path(tmp, name))
            steady = times[args.warmup:]
            figures[f'{name}_median_s'] = statistics.median(steady)
            figures[f'{name}_mean_s'] = statistics.mean(steady)
            if name == 'cocktail':
                figures['cocktail_regenerations'] = len(re.findall('masks regenerated', log))
    for name in (n for n in chosen if n != 'dense'):
        for stat in ('median', 'mean'):
            figures[f'{name}_{stat}_ratio'] = (figures[f'{name}_{stat}_s']
                                               / figures[f'dense_{stat}_s'])
    report_figures(figures, args.out)


if __name__ == '__main__':
    main()
