"""Reading the inputs of subnet selection: results and latency files, checked key by key.

Every error names the source (a file path when the tool passes one) and the key, so a
malformed file is never a raw ``TypeError`` and two spellings of one subnet never collapse.
"""
import math

from mmsparse.core.subnets import SubnetNameError, parse_subnet

DEFAULT_METRICS = ('coco/segm_mAP', 'coco/bbox_mAP')


class SelectionError(ValueError):
    """No subnet fits the budget, or the inputs cannot answer the question asked."""


def is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _canonical_names(mapping, source):
    """``{canonical subnet name: value}``; raises on keys that are not subnet names and on
    two keys naming one subnet (``@0.5`` and ``@0.50``), which would silently collapse."""
    out, origin = {}, {}
    for key, value in mapping.items():
        try:
            name = parse_subnet(key).name
        except SubnetNameError as err:
            raise SelectionError(f'{source}: key {key!r} is not a subnet name ({err})') from None
        if name in out:
            raise SelectionError(f'{source}: keys {origin[name]!r} and {key!r} both name '
                                 f'subnet {name}; keep one of them')
        out[name], origin[name] = value, key
    return out


def latency_table(benchmark, source='latency data'):
    """``{subnet: latency in ms}`` from benchmark_subnets' JSON (the whole file, or its
    ``subnets`` mapping), or from a plain ``{subnet: ms}`` mapping.

    Raises:
        SelectionError: naming ``source`` and the entry, when an entry has no number
            ``latency_ms`` or the data is not such a mapping.
    """
    entries = benchmark.get('subnets', benchmark) if isinstance(benchmark, dict) else None
    if not isinstance(entries, dict) or not entries:
        raise SelectionError(f'{source} holds no subnets (expected the JSON written by '
                             'tools/analysis_tools/benchmark_subnets.py)')
    table = {}
    for name, entry in _canonical_names(entries, source).items():
        value = entry.get('latency_ms') if isinstance(entry, dict) else entry
        if isinstance(entry, dict) and 'latency_ms' not in entry:
            raise SelectionError(f'{source}: subnet {name!r} has no latency_ms')
        if not is_number(value) or not math.isfinite(value):
            raise SelectionError(f'{source}: the latency of subnet {name!r} is {value!r}, not '
                                 'a number of milliseconds')
        table[name] = float(value)
    return table


def canonical_results(results, source='results'):
    """``{canonical subnet name: {metric: value}}``, checking the shape of ``results``.

    Raises:
        SelectionError: naming ``source`` and the key, for anything but an object of subnet
            names mapping to objects of metrics (a list, bare numbers, null, strings), and
            for two keys that name one subnet.
    """
    if not isinstance(results, dict):
        raise SelectionError(f'{source}: expected a JSON object {{subnet name: {{metric: '
                             f'value}}}} as written by tools/test.py --out, got '
                             f'{_json_type(results)}')
    results = _canonical_names(results, source)
    for name, row in results.items():
        if not isinstance(row, dict):
            shown = '' if row is None else f' {row!r:.40}'
            raise SelectionError(f'{source}: subnet {name!r} holds {_json_type(row)}{shown}, '
                                 'expected an object of metrics such as '
                                 '{"coco/bbox_mAP": 0.3, "params": ..., "flops": ...}')
        for key, value in row.items():
            if value is not None and not is_number(value) and key in (*DEFAULT_METRICS,
                                                                     'params', 'flops'):
                raise SelectionError(f'{source}: subnet {name!r}: {key} is {value!r}, not a '
                                     'number')
    return results


def _json_type(value):
    return {dict: 'an object', list: 'a list', str: 'a string', type(None): 'null',
            bool: 'a boolean'}.get(type(value), 'a number')


def is_usable(value):
    return is_number(value) and not math.isnan(value)


def unscored_subnets(results, metric):
    """``{name: why}`` for subnets without a usable value of ``metric``."""
    why = {}
    for name, row in results.items():
        value = row.get(metric)
        if metric not in row:
            why[name] = f'no {metric} (no detections?)'
        elif value is None:
            why[name] = f'{metric} is null'
        elif not is_number(value):
            raise SelectionError(f'results: subnet {name!r}: {metric} is {value!r}, not a '
                                 'number')
        elif math.isnan(value):
            why[name] = f'{metric} is NaN'
    return why
