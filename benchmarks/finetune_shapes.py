"""Fine-tuning from a trained dense shapes detector: one-shot, dedicated and co-training
fine-tunes side by side (table, plot, s/iteration), read from the runs' work dirs.

The runs are made by the commands in ``docs/training.md`` ("Start from a trained
detector"); this script only collects what they wrote:

* the start: ``work_dirs/dense_t1024_3600_seed0`` (its end-of-training validation);
* (a) one-shot: ``work_dirs/ft_oneshot_t1024_from3600/results_six_{frozen,recal}.json``;
* (b) dedicated fine-tunes: ``work_dirs/ft_dedicated_<P>_t1024_<K>_seed<S>/results.json``
  and ``work_dirs/ft_dense_t1024_<K>_seed<S>/results.json``;
* (c) co-training fine-tunes: ``work_dirs/ft_cocktail_t1024_<K>_seed<S>/results_all.json``.

Seconds per iteration come from mmengine's logged ``time`` (the mean over each 20-iteration
logging window) in each run's ``vis_data/scalars.json``: ``mean`` over the whole run (mask
regenerations and stage changes included, the cost a user pays) and ``median_after_100``
(steady state). Both depend on what else ran on the machine: compare runs that ran side by
side.

The co-training may have several seeds (``--seeds 0,1``); the one-shot and dedicated
baselines have one (``--dedicated-seed``).

Usage (from the repository root)::

    python benchmarks/finetune_shapes.py --budget 600 \\
        --plot docs/images/finetune_shapes_600.png \\
        --out benchmarks/results/finetune_shapes_600.json
    python benchmarks/finetune_shapes.py --budget 1200 --seeds 0,1 \\
        --plot docs/images/finetune_shapes_1200.png \\
        --out benchmarks/results/finetune_shapes_1200.json
"""
import argparse
import glob
import json
import statistics
from pathlib import Path

WORK = Path('work_dirs')
# (listed subnet, the co-training's nearest held subnet, the dedicated run's folder part)
LISTED = [('dense', 'dense', None), ('unstructured@0.50', 'unstructured@0.49',
          'unstructured-0.50'), ('unstructured@0.80', 'unstructured@0.79', 'unstructured-0.80'),
          ('channel@0.30', 'channel@0.27', 'channel-0.30'),
          ('channel@0.50', 'channel@0.52', 'channel-0.50'), ('nm@2:4', 'nm@2:4', 'nm-2-4')]
METRICS = ('coco/bbox_mAP', 'coco/segm_mAP')


def read_json(path):
    path = Path(path)
    return json.loads(path.read_text()) if path.is_file() else None


def logged(work_dir):
    """mmengine's scalars of a run: (train lines, last validation line)."""
    files = sorted(glob.glob(str(work_dir / '*/vis_data/scalars.json')))
    lines = [json.loads(line) for f in files for line in Path(f).read_text().splitlines()]
    train = [x for x in lines if 'time' in x and 'loss' in x]
    val = [x for x in lines if 'coco/bbox_mAP' in x]
    return train, (val[-1] if val else None)


def seconds_per_iter(work_dir):
    """Logged seconds per iteration of a run: whole-run mean and steady-state median."""
    train, _ = logged(work_dir)
    if not train:
        return None
    steady = [x['time'] for x in train if x.get('step', x.get('iter', 0)) > 100]
    return dict(mean=statistics.mean(x['time'] for x in train),
                median_after_100=statistics.median(steady) if steady else None)


def plot(cocktails, oneshot, dedicated, start, path, budget):
    """mAP against sparsity: a line per pattern and co-training seed, baselines as points."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from mmsparse.core.subnets import parse_subnet
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, metric in zip(axes, METRICS):
        ax.axhline(start[metric], color='k', linestyle=':', label='start (dense checkpoint)')
        for index, (seed, cocktail) in enumerate(cocktails.items()):
            style = '.-' if index == 0 else '.--'
            lines = {}
            for name, row in cocktail.items():
                pattern = parse_subnet(name).pattern
                if pattern == 'dense':
                    ax.axhline(row[metric], color='k', linestyle='--' if index == 0 else '-.',
                               linewidth=1, label=f'(c) dense, seed {seed}')
                    continue
                lines.setdefault(pattern, []).append((row['sparsity'], row[metric]))
            for color, (pattern, points) in enumerate(sorted(lines.items())):
                points.sort()
                ax.plot([100 * x for x, _ in points], [y for _, y in points], style,
                        color=f'C{color}', label=f'(c) co-training, {pattern}, seed {seed}')
        for label, rows, marker in (('(a) one-shot', oneshot, 'x'),
                                    ('(b) dedicated', dedicated, 'o')):
            points = [(row.get('sparsity', 0.0), row[metric]) for row in (rows or {}).values()
                      if row]
            if points:
                ax.plot([100 * x for x, _ in points], [y for _, y in points], marker,
                        linestyle='none', color='0.3', label=label)
        ax.set_xlabel('measured sparsity of the masked layers (%)')
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    fig.suptitle(f'Fine-tuning the trained shapes Mask R-CNN for K = {budget} iterations')
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def fmt(row):
    """'bbox / segm' of a results row, or 'not run'."""
    return 'not run' if not row else f"{row['coco/bbox_mAP']:.3f} / {row['coco/segm_mAP']:.3f}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--budget', type=int, default=600)
    parser.add_argument('--seeds', default='0', help='co-training seeds, comma-separated')
    parser.add_argument('--dedicated-seed', default='0')
    parser.add_argument('--plot')
    parser.add_argument('--out')
    args = parser.parse_args()
    k, seeds = args.budget, args.seeds.split(',')
    _, start = logged(WORK / 'dense_t1024_3600_seed0')
    oneshot_dir = WORK / 'ft_oneshot_t1024_from3600'
    oneshot = read_json(oneshot_dir / 'results_six_frozen.json') or {}
    recal = read_json(oneshot_dir / 'results_six_recal.json') or {}
    report = dict(budget=k, start={m: start[m] for m in METRICS} if start else None,
                  rows={}, s_per_iter={}, cocktail_all={})
    for seed in seeds:
        cocktail_dir = WORK / f'ft_cocktail_t1024_{k}_seed{seed}'
        report['s_per_iter'][cocktail_dir.name] = seconds_per_iter(cocktail_dir)
        report['cocktail_all'][seed] = read_json(cocktail_dir / 'results_all.json') or {}
    for listed, held, part in LISTED:
        run = WORK / (f'ft_dense_t1024_{k}_seed{args.dedicated_seed}' if part is None else
                      f'ft_dedicated_{part}_t1024_{k}_seed{args.dedicated_seed}')
        ded = read_json(run / 'results.json')
        report['s_per_iter'][run.name] = seconds_per_iter(run)
        report['rows'][listed] = dict(
            held=held, oneshot=oneshot.get(held), oneshot_recal_bn=recal.get(held),
            dedicated=next(iter(ded.values())) if ded else None,
            cocktail={seed: report['cocktail_all'][seed].get(held) for seed in seeds})
    print(f'start: {fmt(report["start"])}')
    print('| subnet (held) | (a) one-shot | (a) + recalibrated BN | (b) dedicated | '
          + ' | '.join(f'(c) seed {s} | (c) - (b), bbox points' for s in seeds) + ' |')
    print('|---|---|---|---|' + '---|---|' * len(seeds))
    for listed, row in report['rows'].items():
        cells = []
        for seed in seeds:
            got, ded = row['cocktail'][seed], row['dedicated']
            gap = (f"{100 * (got['coco/bbox_mAP'] - ded['coco/bbox_mAP']):+.1f}"
                   if got and ded else '')
            cells += [fmt(got), gap]
        print(f"| {listed} ({row['held']}) | {fmt(row['oneshot'])} "
              f"| {fmt(row['oneshot_recal_bn'])} | {fmt(row['dedicated'])} | "
              + ' | '.join(cells) + ' |')
    names = list(next(iter(report['cocktail_all'].values())))
    print('\n| subnet | ' + ' | '.join(f'seed {s}' for s in seeds) + ' |')
    print('|---|' + '---|' * len(seeds))
    for name in names:
        print(f'| {name} | ' + ' | '.join(fmt(report['cocktail_all'][s].get(name))
                                         for s in seeds) + ' |')
    print('s/iteration:', json.dumps(report['s_per_iter'], indent=1))
    if args.plot and any(report['cocktail_all'].values()):
        dedicated = {listed: row['dedicated'] for listed, row in report['rows'].items()}
        plot({s: c for s, c in report['cocktail_all'].items() if c}, oneshot, dedicated,
             report['start'], args.plot, k)
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1))


if __name__ == '__main__':
    main()
