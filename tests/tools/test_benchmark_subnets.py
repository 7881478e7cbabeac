"""tools/analysis_tools/benchmark_subnets.py on the tiny Mask R-CNN: counts and latency of each
subnet's exported model, the JSON that select_subnet reads, and clear errors."""
import json

import pytest
import torch
from mmdet.registry import MODELS
from mmdet.utils import register_all_modules
from mmengine.config import Config

from conftest import TINY_CONFIG, assert_ok, load_tool, run_tool
from mmsparse.core import generate_masks
from mmsparse.core.subnets import SubnetNameError
from mmsparse.evaluation.selection import select_subnet
from mmsparse.models import sparsify_detector

SUBNETS = ['dense', 'unstructured@0.50', 'channel@0.50', 'nm@2:4']


def _tiny_model():
    register_all_modules()
    torch.manual_seed(0)
    return MODELS.build(Config.fromfile(str(TINY_CONFIG)).model)


@pytest.fixture(scope='module')
def checkpoints(tmp_path_factory):
    """A random-init tiny checkpoint with four subnets' masks, and a stock (mask-free) one."""
    root = tmp_path_factory.mktemp('bench')
    model = _tiny_model()
    torch.save(dict(meta={}, state_dict=model.state_dict()), root / 'stock.pth')
    generate_masks(sparsify_detector(model), SUBNETS)
    torch.save(dict(meta={}, state_dict=model.state_dict()), root / 'sparse.pth')
    return root


def _tool():
    return load_tool('tools/analysis_tools/benchmark_subnets.py')


@pytest.fixture(scope='module')
def report(checkpoints, tiny_data):
    out = checkpoints / 'out'
    result = run_tool(['tools/analysis_tools/benchmark_subnets.py', TINY_CONFIG,
                       checkpoints / 'sparse.pth', '--subnets', 'all', '--repeat', '2',
                       '--warmup', '1', '--interleave', '--out-dir', out])
    assert_ok(result)
    return json.loads((out / 'benchmark.json').read_text()), (out / 'benchmark.md').read_text()


def test_every_subnet_has_counts_and_latency(report):
    data, table = report
    assert list(data['subnets']) == SUBNETS
    assert data['device'] == 'cpu' and data['repeat'] == 2
    assert data['input'].startswith('test image ') and data['input'].endswith('.png')
    for name, row in data['subnets'].items():
        for key in ('sparsity', 'params', 'flops', 'params_exported', 'flops_exported',
                    'latency_ms', 'latency_iqr_ms', 'detections'):
            assert key in row, (name, key)
        assert len(row['latency_runs_ms']) == 2 and all(t > 0 for t in row['latency_runs_ms'])
        assert row['latency_q1_ms'] <= row['latency_ms'] <= row['latency_q3_ms']
        assert f'| {name} | {row["sparsity"]:.3f} |' in table
    dense = data['subnets']['dense']
    assert dense['speedup'] == 1.0 and dense['ideal_speedup'] == 1.0
    assert dense['params'] == dense['params_exported']


def test_exported_counts_per_pattern(report):
    rows = report[0]['subnets']
    dense = rows['dense']
    channel = rows['channel@0.50']
    # Slimmed: the removed channels are gone from the exported tensors. The exported model
    # also drops the removed channels' inputs of the dense prediction layers (which the
    # masked counts do not see), so it can only be smaller than those counts.
    assert channel['params_exported'] < 0.6 * dense['params_exported']
    assert channel['params_exported'] <= channel['params'] < dense['params']
    assert channel['flops'] < dense['flops']  # nonzero MACs of the masked layers
    # mmengine's FlopAnalyzer over the whole exported model, RoI head on the same proposals
    assert channel['flops_exported'] < 0.6 * dense['flops_exported']
    assert dense['flops_exported'] > dense['flops']  # every operator, not only masked layers
    assert channel['ideal_speedup'] == pytest.approx(
        dense['flops_exported'] / channel['flops_exported'])
    # Unstructured and N:M zeros stay in dense tensors: same exported size as dense.
    for name in ('unstructured@0.50', 'nm@2:4'):
        assert rows[name]['params_exported'] == dense['params_exported']
        assert rows[name]['flops_exported'] == dense['flops_exported']
        assert rows[name]['params'] < dense['params'] and rows[name]['flops'] < dense['flops']
        assert rows[name]['sparsity'] == pytest.approx(0.5, abs=1e-3)


def test_select_subnet_reads_the_latency(report):
    rows = report[0]['subnets']
    results = {n: dict(r, **{'coco/bbox_mAP': 0.1 * i})
               for i, (n, r) in enumerate(rows.items())}  # made-up accuracies
    fastest = min(rows, key=lambda n: rows[n]['latency_ms'])
    limit = rows[fastest]['latency_ms']
    chosen = select_subnet(results, max_latency_ms=limit, latency=report[0])
    assert chosen.subnet == max((n for n in rows if rows[n]['latency_ms'] <= limit),
                                key=lambda n: results[n]['coco/bbox_mAP'])


def test_stock_checkpoint_synthetic_input_and_unknown_subnet(checkpoints, capsys):
    tool = _tool()
    out = checkpoints / 'stock_out'
    tool.main([str(TINY_CONFIG), str(checkpoints / 'stock.pth'), '--repeat', '1',
               '--warmup', '0', '--shape', '48', '64', '--out-dir', str(out)])
    data = json.loads((out / 'benchmark.json').read_text())
    assert list(data['subnets']) == ['dense'] and data['input'] == 'synthetic 48x64'
    row = data['subnets']['dense']
    assert row['params'] == row['params_exported'] == sum(
        p.numel() for p in _tiny_model().parameters())
    with pytest.raises(SubnetNameError, match="unknown subnet 'channel@0.99'; the checkpoint "
                                              'holds: dense, unstructured@0.50, channel@0.50'):
        tool.main([str(TINY_CONFIG), str(checkpoints / 'sparse.pth'), '--subnets',
                   'channel@0.99', '--shape', '48', '64', '--out-dir', str(out), '--force'])
    state = torch.load(checkpoints / 'stock.pth', weights_only=True)['state_dict']
    del state['roi_head.bbox_head.fc_cls.weight']
    torch.save(dict(state_dict=state), checkpoints / 'other.pth')
    with pytest.raises(ValueError, match="does not fit the config's model: 1 of 162 weights "
                                       r'missing \(e.g. roi_head.bbox_head.fc_cls.weight\)'):
        tool.main([str(TINY_CONFIG), str(checkpoints / 'other.pth'), '--shape', '48', '64',
                   '--out-dir', str(out), '--force'])
