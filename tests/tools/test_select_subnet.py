"""tools/select_subnet.py and mmsparse.evaluation.selection: the most accurate subnet that
fits each kind of budget, ties, and clear errors when nothing fits or inputs are wrong."""
import json

import pytest

from conftest import load_tool, run_tool
from mmsparse.evaluation.selection import (SelectionError, explain, latency_table,
                                           parse_quantity, select_subnet)


def _row(segm, params, flops, bbox=None):
    return {'coco/bbox_mAP': segm + 0.01 if bbox is None else bbox, 'coco/segm_mAP': segm,
            'sparsity': 0.0, 'params': params, 'flops': flops}


# unstructured@0.50 and nm@2:4 tie on segm mAP; nm@2:4 has fewer FLOPs.
RESULTS = {
    'dense': _row(0.20, 10_000_000, 40e9),
    'unstructured@0.50': _row(0.19, 5_500_000, 22e9),
    'channel@0.30': _row(0.18, 6_000_000, 25e9),
    'channel@0.50': _row(0.15, 4_000_000, 18e9),
    'nm@2:4': _row(0.19, 5_500_000, 21e9),
}
LATENCY = {'device': 'cpu', 'subnets': {
    'dense': {'latency_ms': 100.0}, 'unstructured@0.50': {'latency_ms': 101.0},
    'channel@0.30': {'latency_ms': 70.0}, 'channel@0.50': {'latency_ms': 52.0},
    'nm@2:4': {'latency_ms': 99.0}}}


def test_parse_quantity_accepts_human_units():
    assert parse_quantity('30G') == 30e9
    assert parse_quantity('5M') == 5e6
    assert parse_quantity('5m') == 5e6  # mega, never milli
    assert parse_quantity('1.5k') == 1500
    assert parse_quantity('2e9') == 2e9 and parse_quantity(12) == 12
    for bad in ('abc', '3 GB', '-3', '0', ''):
        with pytest.raises(SelectionError, match='--max-flops'):
            parse_quantity(bad, '--max-flops')


def test_no_budget_picks_the_most_accurate_by_segm_then_bbox():
    chosen = select_subnet(RESULTS)
    assert (chosen.subnet, chosen.metric, chosen.value) == ('dense', 'coco/segm_mAP', 0.20)
    assert chosen.runner_up == {'subnet': 'nm@2:4', 'value': 0.19}  # tie: fewer FLOPs
    bbox_only = {n: {k: v for k, v in r.items() if k != 'coco/segm_mAP'}
                 for n, r in RESULTS.items()}
    bbox_only['channel@0.50']['coco/bbox_mAP'] = 0.5
    assert select_subnet(bbox_only).metric == 'coco/bbox_mAP'
    assert select_subnet(bbox_only).subnet == 'channel@0.50'
    assert select_subnet(RESULTS, metric='coco/bbox_mAP').subnet == 'dense'


def test_max_flops_and_max_params():
    chosen = select_subnet(RESULTS, max_flops='30G')
    assert chosen.subnet == 'nm@2:4'  # ties with unstructured@0.50 on mAP, fewer FLOPs
    assert chosen.excluded == {'max_flops': ['dense']}
    assert chosen.fits == {'max_flops': 21e9} and chosen.fitting == 4
    assert chosen.best_overall == {'subnet': 'dense', 'value': 0.20,
                                   'excluded_by': ['max FLOPs']}
    chosen = select_subnet(RESULTS, max_params='5M')
    assert chosen.subnet == 'channel@0.50' and chosen.runner_up is None
    assert set(chosen.excluded['max_params']) == set(RESULTS) - {'channel@0.50'}
    both = select_subnet(RESULTS, max_flops='24G', max_params='5.9M')
    assert both.subnet == 'nm@2:4' and both.excluded == {
        'max_flops': ['dense', 'channel@0.30'], 'max_params': ['dense', 'channel@0.30']}


def test_ties_go_to_the_cheaper_subnet_whatever_the_order():
    reordered = dict(reversed(list(RESULTS.items())))
    for results in (RESULTS, reordered):
        assert select_subnet(results, max_flops='30G').subnet == 'nm@2:4'
    same_flops = {n: dict(r) for n, r in RESULTS.items()}
    same_flops['nm@2:4']['flops'] = same_flops['unstructured@0.50']['flops']
    # equal mAP and FLOPs: the lower latency decides (nm@2:4 99 ms < 101 ms)
    assert select_subnet(same_flops, max_flops='30G', latency=LATENCY).subnet == 'nm@2:4'
    slower = json.loads(json.dumps(LATENCY))
    slower['subnets']['nm@2:4']['latency_ms'] = 150.0
    assert select_subnet(same_flops, max_flops='30G', latency=slower).subnet == \
        'unstructured@0.50'


def test_pattern_budget():
    assert select_subnet(RESULTS, pattern='channel').subnet == 'channel@0.30'
    assert select_subnet(RESULTS, pattern='nm@2:4').subnet == 'nm@2:4'
    assert select_subnet(RESULTS, pattern='channel@0.5').subnet == 'channel@0.50'  # canonical
    chosen = select_subnet(RESULTS, pattern='nm,channel', max_params='5M')
    assert chosen.subnet == 'channel@0.50'
    assert chosen.excluded['pattern'] == ['dense', 'unstructured@0.50']
    assert select_subnet(RESULTS, pattern=['dense', 'nm']).subnet == 'dense'


def test_latency_budget():
    chosen = select_subnet(RESULTS, max_latency_ms=80, latency=LATENCY)
    assert chosen.subnet == 'channel@0.30' and chosen.fits == {'max_latency_ms': 70.0}
    assert chosen.runner_up == {'subnet': 'channel@0.50', 'value': 0.15}
    assert latency_table(LATENCY) == latency_table(LATENCY['subnets'])
    assert select_subnet(RESULTS, max_latency_ms='60', latency=latency_table(LATENCY)) \
        .subnet == 'channel@0.50'


def test_latency_budget_needs_matching_latency_data():
    with pytest.raises(SelectionError, match='latency budget needs latency data'):
        select_subnet(RESULTS, max_latency_ms=80)
    partial = {'subnets': {n: v for n, v in LATENCY['subnets'].items() if n != 'nm@2:4'}}
    with pytest.raises(SelectionError, match=r'does not match the results: no latency for '
                                             r'nm@2:4'):
        select_subnet(RESULTS, max_latency_ms=80, latency=partial)
    with pytest.raises(SelectionError, match="'dense' has no latency_ms"):
        select_subnet(RESULTS, max_latency_ms=80, latency={'subnets': {'dense': {'ms': 1}}})


def test_nothing_fits_names_each_budget():
    with pytest.raises(SelectionError) as err:
        select_subnet(RESULTS, max_flops='10G', pattern='channel')
    message = str(err.value)
    assert message.startswith('no subnet fits the budget')
    assert 'max FLOPs 10.00G excludes 5 of 5 (lowest: channel@0.50 at 18.00G)' in message
    assert 'pattern channel excludes 3 of 5' in message
    with pytest.raises(SelectionError, match=r'max latency 10 ms excludes 5 of 5 \(lowest: '
                                             r'channel@0.50 at 52.0 ms\)'):
        select_subnet(RESULTS, max_latency_ms=10, latency=LATENCY)


def test_bad_inputs_are_named():
    with pytest.raises(SelectionError, match="unknown pattern 'sparse'; expected one of dense"):
        select_subnet(RESULTS, pattern='sparse')
    with pytest.raises(SelectionError, match="--pattern 'nm@4:2'"):
        select_subnet(RESULTS, pattern='nm@4:2')
    with pytest.raises(SelectionError, match="subnet 'dense' has no 'coco/AR'"):
        select_subnet(RESULTS, metric='coco/AR')
    no_flops = {n: {k: v for k, v in r.items() if k != 'flops'} for n, r in RESULTS.items()}
    with pytest.raises(SelectionError, match="max FLOPs budget given, but subnet 'dense'"):
        select_subnet(no_flops, max_flops='1G')
    assert select_subnet(no_flops).subnet == 'dense'  # counts are only needed for budgets


def test_explain_says_why():
    lines = explain(select_subnet(RESULTS, max_flops='24G', max_params='5.9M'))
    text = '\n'.join(lines)
    assert lines[0] == ('chosen: nm@2:4 (coco/segm_mAP = 0.1900), the best of 3 fitting '
                        'subnet(s) out of 5')
    assert '  max FLOPs: 21.00G <= 24.00G' in lines and '  max params: 5.50M <= 5.90M' in lines
    assert 'runner-up: unstructured@0.50 (coco/segm_mAP = 0.1900)' in lines
    assert 'most accurate overall: dense (coco/segm_mAP = 0.2000), excluded by max FLOPs, ' \
           'max params' in text
    assert 'excluded by max FLOPs (24.00G): 2 (dense, channel@0.30)' in lines


def _tool():
    return load_tool('tools/select_subnet.py')


def test_tool_prints_and_writes_json(tmp_path, capsys):
    results, latency = tmp_path / 'results.json', tmp_path / 'bench.json'
    results.write_text(json.dumps(RESULTS))
    latency.write_text(json.dumps(LATENCY))
    out = tmp_path / 'choice.json'
    code = _tool().main([str(results), '--latency', str(latency), '--max-latency-ms', '80',
                         '--pattern', 'channel,nm', '--json', str(out)])
    assert code == 0
    assert capsys.readouterr().out.startswith('chosen: channel@0.30 (coco/segm_mAP = 0.1800)')
    choice = json.loads(out.read_text())
    assert choice['subnet'] == 'channel@0.30' and choice['budgets'] == {
        'max_latency_ms': 80.0, 'pattern': ['channel', 'nm']}


def test_tool_exits_non_zero_with_the_reason(tmp_path, capsys):
    results = tmp_path / 'results.json'
    results.write_text(json.dumps(RESULTS))
    result = run_tool(['tools/select_subnet.py', results, '--max-params', '1M'])
    assert result.returncode == 1 and result.stdout == ''
    assert 'select_subnet: no subnet fits the budget: max params 1.00M excludes 5 of 5' \
        in result.stderr
    assert _tool().main([str(tmp_path / 'missing.json')]) == 1
    assert 'cannot read results' in capsys.readouterr().err


def test_unusable_metrics_are_never_chosen_and_are_reported():
    nan = dict(RESULTS, dense=_row(float('nan'), 10_000_000, 40e9))
    chosen = select_subnet(nan)
    assert chosen.subnet == 'nm@2:4' and chosen.unscored == {'dense': 'coco/segm_mAP is NaN'}
    assert chosen.candidates == 5 and chosen.fitting == 4
    silent = {n: dict(r) for n, r in RESULTS.items()}
    for key in ('coco/segm_mAP', 'coco/bbox_mAP'):  # mmdet: no detections, no metric
        del silent['dense'][key]
    assert select_subnet(silent).unscored == {'dense': 'no coco/segm_mAP (no detections?)'}
    with pytest.raises(SelectionError, match=r'no subnet has a usable coco/segm_mAP: dense: '
                                             r'coco/segm_mAP is NaN; nm@2:4: coco/segm_mAP is '
                                             'null'):
        select_subnet({'dense': _row(float('nan'), 1, 1), 'nm@2:4': dict(
            _row(0.1, 1, 1), **{'coco/segm_mAP': None})}, metric='coco/segm_mAP')
    with pytest.raises(SelectionError, match=r'no subnet fits the budget: .*; not considered '
                                             r'\(no usable metric\): dense \(coco/segm_mAP is '
                                             r'NaN\)'):
        select_subnet(nan, max_flops='1G')


def test_budget_values_and_latency_keys_are_checked():
    bad = dict(RESULTS, dense=dict(RESULTS['dense'], flops=float('nan')))
    with pytest.raises(SelectionError, match="results: subnet 'dense': flops is nan, not a "
                                             'finite number'):
        select_subnet(bad, max_flops='30G')
    twice = {'subnets': dict(LATENCY['subnets'], **{'channel@0.3': {'latency_ms': 1.0}})}
    with pytest.raises(SelectionError, match="bench.json: keys 'channel@0.30' and "
                                             "'channel@0.3' both name subnet channel@0.30"):
        select_subnet(RESULTS, max_latency_ms=80, latency=twice,
                      sources=('results.json', 'bench.json'))
    with pytest.raises(SelectionError, match="latency of subnet 'dense' is 'fast'"):
        select_subnet(RESULTS, max_latency_ms=80, latency={'dense': 'fast'})
