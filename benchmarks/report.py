"""Shared output of the benchmark scripts: a markdown table, and the figures as JSON."""
import json
from pathlib import Path


def report_figures(figures, out=None):
    """Print ``figures`` as a two-column markdown table; write them to ``out`` as JSON."""
    print('| measure | value |\n|---|---|')
    for key, value in figures.items():
        print(f'| {key} | {value:.4g} |' if isinstance(value, float) else f'| {key} | {value} |')
    if out:
        Path(out).write_text(json.dumps(figures, indent=2))
