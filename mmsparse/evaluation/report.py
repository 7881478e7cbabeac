"""Per-subnet results: nest the loop's prefixed metrics, print a table, write a report.

``tools/test.py --subnets ... --out results.json --report DIR`` uses these. The table is
sorted by pattern, then sparsity; the plot shows mAP against measured sparsity, one line per
pattern, with the dense network as a reference line.
"""
import csv
import io
from pathlib import Path

from mmsparse.core import parse_subnet
from mmsparse.utils.safe_write import atomic_path, atomic_write_text

MAIN_METRICS = ('coco/bbox_mAP', 'coco/bbox_mAP_50', 'coco/segm_mAP', 'coco/segm_mAP_50')
REPORT_FILES = ('results.md', 'results.csv', 'results.png')  # what write_report writes
PATTERN_STYLE = {'unstructured': 'o-', 'channel': 's-', 'nm': '^-', 'block': 'D-'}


def split_subnet_metrics(metrics):
    """``{'nm@2:4/coco/bbox_mAP': v}`` -> ``{'nm@2:4': {'coco/bbox_mAP': v}}``, sorted by
    pattern and sparsity (subnet names contain no ``/``)."""
    nested = {}
    for key, value in metrics.items():
        subnet, _, metric = key.partition('/')
        nested.setdefault(subnet, {})[metric] = value
    return dict(sorted(nested.items(), key=lambda kv: parse_subnet(kv[0]).sort_key))


def _columns(results):
    present = {m for r in results.values() for m in r}
    return [m for m in MAIN_METRICS if m in present]


def _cell(metric, value):
    if value is None:
        return '-'
    if metric == 'params':
        return f'{value / 1e6:.2f}M'
    if metric == 'flops':
        return f'{value / 1e9:.2f}G'
    if metric == 'sparsity':
        return f'{value:.3f}'
    return f'{value:.3f}' if isinstance(value, float) else str(value)


def format_table(results):
    """A markdown table: subnet, measured sparsity, params, FLOPs, main COCO metrics."""
    columns = ['sparsity', 'params', 'flops'] + _columns(results)
    lines = ['| subnet | ' + ' | '.join(columns) + ' |',
             '|---' * (len(columns) + 1) + '|']
    for subnet, metrics in results.items():
        cells = [_cell(c, metrics.get(c)) for c in columns]
        lines.append(f'| {subnet} | ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def write_csv(results, path):
    keys = sorted({m for r in results.values() for m in r})
    text = io.StringIO(newline='')
    writer = csv.writer(text)
    writer.writerow(['subnet', *keys])
    for subnet, metrics in results.items():
        writer.writerow([subnet, *(metrics.get(k, '') for k in keys)])
    atomic_write_text(path, text.getvalue())


def plot_results(results, path, title='mAP against sparsity'):
    """One panel per main mAP metric; a line per pattern; dense as a dashed reference.

    Returns:
        dict: metric -> legend labels of its panel (what was drawn).
    """
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    metrics = [m for m in ('coco/bbox_mAP', 'coco/segm_mAP') if m in _columns(results)]
    fig, axes = plt.subplots(1, len(metrics), figsize=(6 * len(metrics), 4.5), squeeze=False)
    drawn = {}
    for ax, metric in zip(axes[0], metrics):
        by_pattern = {}
        for subnet, values in results.items():
            pattern = parse_subnet(subnet).pattern
            if pattern == 'dense':
                ax.axhline(values[metric], color='k', linestyle='--', label='dense')
                continue
            by_pattern.setdefault(pattern, []).append((values['sparsity'], values[metric],
                                                       subnet))
        for pattern, points in by_pattern.items():
            points.sort()
            ax.plot([100 * p[0] for p in points], [p[1] for p in points],
                    PATTERN_STYLE.get(pattern, 'x-'), label=pattern)
            if pattern == 'nm':
                for x, y, name in points:
                    ax.annotate(name.split('@')[1], (100 * x, y), textcoords='offset points',
                                xytext=(4, 4), fontsize=8)
        ax.set_xlabel('measured sparsity of the masked layers (%)')
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend()
        drawn[metric] = [text.get_text() for text in ax.get_legend().get_texts()]
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format='png')
    plt.close(fig)
    return drawn


def write_report(results, out_dir, title='mAP against sparsity'):
    """Write ``results.md``, ``results.csv`` and ``results.png`` under ``out_dir``, each
    through a temporary file renamed into place (check them first with
    ``mmsparse.utils.safe_write.check_outputs``: they are replaced)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / 'results.md', f'# {title}\n\n{format_table(results)}\n')
    write_csv(results, out / 'results.csv')
    plot_results(results, out / 'results.png', title)
    return out
