"""Fine-tuning from a trained dense shapes detector: one-shot, dedicated and co-training
fine-tunes side by side (table, plot, s/iteration), read from the runs' work dirs.

The runs are made by the commands in ``docs/training.md`` ("Start from a trained
detector"); this script only collects what they wrote:

* the start: ``work_dirs/dense_t1024_3600_seed0`` (its end-of-training validation);
* (a) one-shot: ``work_dirs/ft_oneshot_t1024_from3600/results_six_{frozen,recal}.json``;
* (b) dedicated fine-tunes: ``work_dirs/ft_dedicated_<P>_t1024_<K>_seed<S>/results.json``
  and ``work_dirs/ft_dense_t1024_<K>_seed<S>/results.json``;
* (c) co-training fine-tunes: ``work_dirs/ft_cocktail_t1024_<K>_seed<S>/results_all.json``.

Seconds per iteration are the median of mmengine's logged ``time`` (every 20 iterations,
the first 100 iterations left out) in each run's ``vis_data/scalars.json``.

Usage (from the repository root)::

    python benchmarks/finetune_shapes.py --budget 600 \\
        --plot docs/images/finetune_shapes_600.png \\
        --out benchmarks/results/finetune_shapes_600.json
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
    train, _ = logged(work_dir)
    times = [x['time'] for x in train if x.get('step', x.get('iter', 0)) > 100]
    return statistics.median(times) if times else None


def plot(cocktail, oneshot, dedicated, start, path, budget):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from mmsparse.core.subnets import parse_subnet
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, metric in zip(axes, METRICS):
        ax.axhline(start[metric], color='k', linestyle=':', label='start (dense checkpoint)')
        lines = {}
        for name, row in (cocktail or {}).items():
            pattern = parse_subnet(name).pattern
            if pattern == 'dense':
                ax.axhline(row[metric], color='k', linestyle='--', label='(c) dense')
                continue
            lines.setdefault(pattern, []).append((row['sparsity'], row[metric]))
        for pattern, points in sorted(lines.items()):
            points.sort()
            ax.plot([100 * x for x, _ in points], [y for _, y in points], '.-',
                    label=f'(c) co-training, {pattern}')
        for label, rows, marker in (('(a) one-shot', oneshot, 'x'),
                                    ('(b) dedicated', dedicated, 'o')):
            points = [(row['sparsity'], row[metric]) for row in (rows or {}).values() if row]
            if points:
                ax.plot([100 * x for x, _ in points], [y for _, y in points], marker,
                        linestyle='none', color='0.3', label=label)
        ax.set_xlabel('measured sparsity of the masked layers (%)')
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f'Fine-tuning the trained shapes Mask R-CNN for K = {budget} iterations')
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--budget', type=int, default=600)
    parser.add_argument('--seeds', default='0')
    parser.add_argument('--plot')
    parser.add_argument('--out')
    args = parser.parse_args()
    k = args.budget
    _, start = logged(WORK / 'dense_t1024_3600_seed0')
    oneshot_dir = WORK / 'ft_oneshot_t1024_from3600'
    oneshot = read_json(oneshot_dir / 'results_six_frozen.json') or {}
    recal = read_json(oneshot_dir / 'results_six_recal.json') or {}
    report = dict(budget=k, start={m: start[m] for m in METRICS} if start else None,
                  rows={}, s_per_iter={})
    dedicated_rows = {}
    for seed in args.seeds.split(','):
        cocktail_dir = WORK / f'ft_cocktail_t1024_{k}_seed{seed}'
        cocktail = read_json(cocktail_dir / 'results_all.json')
        report['s_per_iter'][f'cocktail_seed{seed}'] = seconds_per_iter(cocktail_dir)
        report[f'cocktail_seed{seed}_all'] = cocktail
        for listed, held, part in LISTED:
            run = (WORK / (f'ft_dense_t1024_{k}_seed{seed}' if part is None
                           else f'ft_dedicated_{part}_t1024_{k}_seed{seed}'))
            ded = read_json(run / 'results.json')
            ded_row = next(iter(ded.values())) if ded else None
            dedicated_rows[listed] = ded_row
            report['s_per_iter'][run.name] = seconds_per_iter(run)
            row = dict(held=held, oneshot=oneshot.get(held), oneshot_recal_bn=recal.get(held),
                       dedicated=ded_row, cocktail=(cocktail or {}).get(held))
            report['rows'][f'{listed}/seed{seed}'] = row
    fmt = lambda r: ('not run' if not r else  # noqa: E731
                     f"{r['coco/bbox_mAP']:.3f} / {r['coco/segm_mAP']:.3f}")
    print(f'start: {fmt(report["start"])}')
    print('| subnet (held) | (a) one-shot | (a) + recalibrated BN | (b) dedicated | (c) co-training '
          '| (c) - (b) bbox |')
    print('|---|---|---|---|---|---|')
    for key, row in report['rows'].items():
        gap = (f"{row['cocktail']['coco/bbox_mAP'] - row['dedicated']['coco/bbox_mAP']:+.3f}"
               if row['cocktail'] and row['dedicated'] else '')
        print(f"| {key} ({row['held']}) | {fmt(row['oneshot'])} | {fmt(row['oneshot_recal_bn'])} "
              f"| {fmt(row['dedicated'])} | {fmt(row['cocktail'])} | {gap} |")
    print('s/iteration:', json.dumps(report['s_per_iter'], indent=1))
    if args.plot and report.get(f'cocktail_seed{args.seeds.split(",")[0]}_all'):
        plot(report[f'cocktail_seed{args.seeds.split(",")[0]}_all'], oneshot, dedicated_rows,
             report['start'], args.plot, k)
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1))


if __name__ == '__main__':
    main()
