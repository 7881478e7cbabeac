"""Pick the most accurate subnet that fits a deployment budget (``tools/select_subnet.py``).

Inputs are the per-subnet results of ``tools/test.py --out results.json`` (metrics, measured
``params`` and ``flops``) and, for a latency budget, the JSON of
``tools/analysis_tools/benchmark_subnets.py`` (latency of each exported subnet on the target
device). Budgets: max FLOPs, max params, max latency, and the sparsity patterns the target
runs fast (e.g. only ``nm@2:4`` on an accelerator with 2:4 kernels). The choice is the fitting
subnet with the highest metric; ties go to the cheaper subnet (fewer FLOPs, then lower
latency, then fewer params), so the answer never depends on the JSON's key order.
"""
import math
import re
from dataclasses import asdict, dataclass, field

from mmsparse.core.subnets import PATTERNS, SubnetNameError, parse_subnet

from .selection_inputs import (DEFAULT_METRICS, SelectionError, is_number, is_usable,
                               canonical_results, latency_table, unscored_subnets)

__all__ = ['DEFAULT_METRICS', 'SelectionError', 'Selection', 'canonical_results', 'explain',
           'human', 'latency_table', 'parse_patterns', 'parse_quantity', 'select_subnet']

_QUANTITY_RE = re.compile(r'^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([kKmMgGtT]?)\s*$')
_SUFFIX = {'': 1, 'k': 1e3, 'm': 1e6, 'g': 1e9, 't': 1e12}
# Budget key -> (label in messages, the key of the value it bounds)
BUDGETS = {
    'max_flops': ('max FLOPs', 'flops'),
    'max_params': ('max params', 'params'),
    'max_latency_ms': ('max latency', 'latency_ms'),
    'pattern': ('pattern', None),
}


def parse_quantity(text, what='value'):
    """``'30G'`` -> 30e9, ``'5M'`` -> 5e6, ``'1.5k'`` -> 1500, ``'2e9'`` / ``12`` as is.

    Suffixes are decimal (k, M, G, T; case-insensitive, so ``m`` is mega, never milli).

    Raises:
        SelectionError: naming ``what`` and the text that does not parse.
    """
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value = float(text)
    else:
        match = _QUANTITY_RE.match(str(text))
        if match is None:
            raise SelectionError(f'{what}: cannot read {text!r}; expected a number with an '
                                 'optional k/M/G/T suffix, e.g. 30G or 5M')
        value = float(match.group(1)) * _SUFFIX[match.group(2).lower()]
    if not value > 0 or math.isinf(value):
        raise SelectionError(f'{what} must be a positive number, got {text!r}')
    return value


def human(value):
    """12463854 -> '12.46M' (for messages and tables)."""
    for suffix, scale in (('T', 1e12), ('G', 1e9), ('M', 1e6), ('k', 1e3)):
        if abs(value) >= scale:
            return f'{value / scale:.2f}{suffix}'
    return f'{value:g}'


def parse_patterns(text):
    """``'nm'``, ``'nm@2:4'``, ``'dense,nm@2:4'`` -> a tuple of accepted patterns/names.

    A bare pattern accepts every subnet of that pattern; a full subnet name accepts that
    subnet only (in canonical form, so ``channel@0.3`` equals ``channel@0.30``).

    Raises:
        SelectionError: for an unknown pattern or a name that does not parse.
    """
    accepted = []
    for item in (t.strip() for t in str(text).split(',')):
        if not item:
            continue
        if '@' in item:
            try:
                accepted.append(parse_subnet(item).name)
            except SubnetNameError as err:
                raise SelectionError(f'--pattern {item!r}: {err}') from None
        elif item in PATTERNS:
            accepted.append(item)
        else:
            raise SelectionError(f'unknown pattern {item!r}; expected one of '
                                 f'{", ".join(PATTERNS)}, or a subnet name such as nm@2:4')
    if not accepted:
        raise SelectionError('--pattern is empty')
    return tuple(accepted)


def _pattern_fits(name, accepted):
    spec = parse_subnet(name)
    return spec.pattern in accepted or spec.name in accepted


def default_metric(results):
    """segm mAP when every subnet with a COCO mAP has it, else bbox mAP. A subnet without
    either (mmdet reports no metric when a subnet detects nothing) does not decide.

    Raises:
        SelectionError: when no subnet has either, naming the metrics present.
    """
    scored = [r for r in results.values() if any(is_usable(r.get(m)) for m in DEFAULT_METRICS)]
    for metric in DEFAULT_METRICS:
        if scored and all(is_usable(r.get(metric)) for r in scored):
            return metric
    present = sorted({k for r in results.values() for k in r})
    raise SelectionError(f'no subnet has a value of {" or ".join(DEFAULT_METRICS)} (no '
                         'detections?); pick a metric with --metric (present: '
                         f'{", ".join(present) or "none"})')


@dataclass
class Selection:
    """What :func:`select_subnet` chose and why.

    Attributes:
        subnet: The chosen subnet's name.
        metric: The metric maximised; ``value`` the chosen subnet's.
        budgets: budget key -> its limit (numbers, or the accepted patterns).
        fits: budget key -> the chosen subnet's own value under that budget.
        runner_up: ``{'subnet', 'value'}`` of the second-best fitting subnet, or None.
        best_overall: ``{'subnet', 'value', 'excluded_by'}`` when the most accurate subnet
            overall did not fit, else None.
        excluded: budget key -> names it excluded (a subnet can fail several budgets).
        candidates: How many subnets were considered; ``fitting`` how many fit.
        unscored: name -> why it has no usable value of the metric (missing, e.g. no
            detections; null; NaN). Such subnets are never chosen.
    """
    subnet: str
    metric: str
    value: float
    budgets: dict
    fits: dict
    runner_up: dict = None
    best_overall: dict = None
    excluded: dict = field(default_factory=dict)
    candidates: int = 0
    fitting: int = 0
    unscored: dict = field(default_factory=dict)

    def as_dict(self):
        return asdict(self)


def _own_value(name, key, results, latency):
    """The subnet's value under budget ``key`` (its pattern, latency, FLOPs or params)."""
    if key == 'pattern':
        return parse_subnet(name).pattern
    if key == 'max_latency_ms':
        return latency[name]
    return results[name][BUDGETS[key][1]]


def _fails(name, row, budgets, latency):
    """Budget keys that ``name`` fails."""
    failed = []
    for key, limit in budgets.items():
        if key == 'pattern':
            if not _pattern_fits(name, limit):
                failed.append(key)
        elif key == 'max_latency_ms':
            if latency[name] > limit:
                failed.append(key)
        elif row[BUDGETS[key][1]] > limit:
            failed.append(key)
    return failed


def _check_inputs(results, metric, budgets, latency, unscored, source='results'):
    if not results:
        raise SelectionError(f'{source} hold no subnets')
    if len(unscored) == len(results):
        if not any(metric in row for row in results.values()):
            name, row = next(iter(results.items()))
            raise SelectionError(f'subnet {name!r} has no {metric!r}, nor has any other; '
                                 f'metrics present: {", ".join(sorted(row))}')
        raise SelectionError(f'no subnet has a usable {metric}: ' + '; '.join(
            f'{n}: {why}' for n, why in unscored.items()))
    for name, row in results.items():
        for key in ('max_flops', 'max_params'):
            if key not in budgets:
                continue
            if BUDGETS[key][1] not in row:
                raise SelectionError(f'{BUDGETS[key][0]} budget given, but subnet {name!r} '
                                     f'has no {BUDGETS[key][1]!r} in the {source}')
            value = row[BUDGETS[key][1]]
            if not is_number(value) or not math.isfinite(value):
                raise SelectionError(f'{source}: subnet {name!r}: {BUDGETS[key][1]} is '
                                     f'{value!r}, not a finite number')
    if 'max_latency_ms' in budgets:
        if latency is None:
            raise SelectionError('a latency budget needs latency data: pass the JSON of '
                                 'tools/analysis_tools/benchmark_subnets.py (--latency)')
        missing = [n for n in results if n not in latency]
        if missing:
            raise SelectionError(
                f'the latency data does not match the results: no latency for '
                f'{", ".join(missing)} (measured: {", ".join(latency) or "none"}); benchmark '
                'the same subnets (--subnets all) on the target device')


def select_subnet(results, metric=None, max_flops=None, max_params=None, max_latency_ms=None,
                  pattern=None, latency=None, sources=('results', 'latency data')):
    """The most accurate subnet of ``results`` that fits every given budget.

    Args:
        results: ``{subnet: {metric: value, 'params': n, 'flops': n, ...}}`` as written by
            ``tools/test.py --out``.
        metric: Metric to maximise; default :func:`default_metric`.
        max_flops / max_params: Upper bounds (numbers or strings such as ``'30G'``).
        max_latency_ms: Upper bound on latency; needs ``latency``.
        pattern: Accepted patterns / subnet names (string for :func:`parse_patterns`, or a
            sequence of them).
        latency: ``{subnet: ms}`` (see :func:`latency_table`) or benchmark_subnets' JSON.
        sources: How messages name the results and the latency data (e.g. file paths).

    Returns:
        :class:`Selection`.

    Raises:
        SelectionError: when nothing fits (naming each budget and how many it excluded), or
            the inputs are malformed or lack what a budget needs (naming the source and key).
    """
    results_source = sources[0] or 'results'
    latency_source = (sources[1] if len(sources) > 1 else None) or 'latency data'
    results = canonical_results(results, results_source)
    metric = metric or default_metric(results)
    budgets = {}
    if max_flops is not None:
        budgets['max_flops'] = parse_quantity(max_flops, '--max-flops')
    if max_params is not None:
        budgets['max_params'] = parse_quantity(max_params, '--max-params')
    if max_latency_ms is not None:
        budgets['max_latency_ms'] = parse_quantity(max_latency_ms, '--max-latency-ms')
    if pattern is not None:
        budgets['pattern'] = parse_patterns(pattern if isinstance(pattern, str)
                                            else ','.join(pattern))
    if latency is not None:
        latency = latency_table(latency, latency_source)
    unscored = unscored_subnets(results, metric)
    _check_inputs(results, metric, budgets, latency, unscored, results_source)
    all_results = results
    results = {n: r for n, r in results.items() if n not in unscored}

    def cost(name):  # higher metric first; then fewer FLOPs, lower latency, fewer params
        row = results[name]
        return (-float(row[metric]), row.get('flops', math.inf),
                latency.get(name, math.inf) if latency else math.inf,
                row.get('params', math.inf), parse_subnet(name).sort_key)

    ranked = sorted(results, key=cost)
    failures = {name: _fails(name, results[name], budgets, latency) for name in ranked}
    fitting = [n for n in ranked if not failures[n]]
    excluded = {key: [n for n in ranked if key in failures[n]] for key in budgets}
    if not fitting:
        raise SelectionError(_nothing_fits(results, budgets, excluded, latency)
                             + _unscored_text(unscored))
    chosen = fitting[0]
    fits = {key: _own_value(chosen, key, results, latency) for key in budgets}
    best = ranked[0]
    return Selection(
        subnet=chosen, metric=metric, value=float(results[chosen][metric]),
        budgets={k: list(v) if k == 'pattern' else v for k, v in budgets.items()}, fits=fits,
        runner_up=(dict(subnet=fitting[1], value=float(results[fitting[1]][metric]))
                   if len(fitting) > 1 else None),
        best_overall=(dict(subnet=best, value=float(results[best][metric]),
                           excluded_by=[BUDGETS[k][0] for k in failures[best]])
                      if best != chosen else None),
        excluded=excluded, candidates=len(all_results), fitting=len(fitting),
        unscored=unscored)


def _unscored_text(unscored):
    if not unscored:
        return ''
    return ('; not considered (no usable metric): '
            + ', '.join(f'{n} ({why})' for n, why in unscored.items()))


def _limit_text(key, limit):
    if key == 'pattern':
        return ', '.join(limit)
    if key == 'max_latency_ms':
        return f'{limit:g} ms'
    return human(limit)


def _nothing_fits(results, budgets, excluded, latency):
    parts = []
    for key, names in excluded.items():
        label = BUDGETS[key][0]
        text = f'{label} {_limit_text(key, budgets[key])} excludes {len(names)} of {len(results)}'
        if key != 'pattern' and names:
            values = {n: latency[n] if key == 'max_latency_ms' else results[n][BUDGETS[key][1]]
                      for n in results}
            low = min(values, key=values.get)
            shown = f'{values[low]:.1f} ms' if key == 'max_latency_ms' else human(values[low])
            text += f' (lowest: {low} at {shown})'
        parts.append(text)
    return 'no subnet fits the budget: ' + '; '.join(parts)


def explain(selection):
    """Human-readable lines saying what was chosen and why."""
    s = selection
    lines = [f'chosen: {s.subnet} ({s.metric} = {s.value:.4f}), the best of {s.fitting} '
             f'fitting subnet(s) out of {s.candidates}']
    for key, limit in s.budgets.items():
        label = BUDGETS[key][0]
        if key == 'pattern':
            lines.append(f'  {label}: {s.subnet} is allowed by {_limit_text(key, limit)}')
        elif key == 'max_latency_ms':
            lines.append(f'  {label}: {s.fits[key]:.1f} ms <= {limit:g} ms')
        else:
            lines.append(f'  {label}: {human(s.fits[key])} <= {human(limit)}')
    if not s.budgets:
        lines.append('  no budget given: the most accurate subnet overall')
    if s.runner_up:
        lines.append(f'runner-up: {s.runner_up["subnet"]} ({s.metric} = '
                     f'{s.runner_up["value"]:.4f})')
    if s.best_overall:
        lines.append(f'most accurate overall: {s.best_overall["subnet"]} ({s.metric} = '
                     f'{s.best_overall["value"]:.4f}), excluded by '
                     f'{", ".join(s.best_overall["excluded_by"])}')
    for key, names in s.excluded.items():
        lines.append(f'excluded by {BUDGETS[key][0]} ({_limit_text(key, s.budgets[key])}): '
                     f'{len(names)}' + (f' ({", ".join(names)})' if names else ''))
    if s.unscored:
        lines.append(f'not considered, no usable {s.metric}: {len(s.unscored)} ('
                     + ', '.join(f'{n}: {why}' for n, why in s.unscored.items()) + ')')
    return lines
