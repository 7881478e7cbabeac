"""Channel dependencies on MMDetection's grouped-conv backbones (ResNeXt, RegNet)."""
import pytest
import torch
from mmdet.registry import MODELS
from mmdet.utils import register_all_modules

from mmsparse.core import analyze_channels

BACKBONES = {
    'ResNeXt': dict(type='ResNeXt', depth=50, groups=4, base_width=4, init_cfg=None),
    'RegNet': dict(type='RegNet', arch='regnetx_400mf', out_indices=(0, 1, 2, 3),
                   init_cfg=None),
}


@pytest.mark.parametrize('name', sorted(BACKBONES))
def test_grouped_bottlenecks(name):
    register_all_modules()
    model = MODELS.build(BACKBONES[name])
    x = torch.randn(1, 3, 64, 64)
    graph = analyze_channels(model, lambda m: m(x))
    block = 'layer1.0'
    assert model.get_submodule(f'{block}.conv2').groups > 1
    # conv1 feeds the grouped conv2: removing one of its channels would unbalance the groups.
    assert not graph.channels[f'{block}.conv1'].removable
    assert 'grouped conv' in graph.channels[f'{block}.conv1'].reason
    # conv2 (grouped) feeds only conv3, but its own channels could go only group by group.
    assert not graph.channels[f'{block}.conv2'].removable
    assert 'grouped conv (groups=' in graph.channels[f'{block}.conv2'].reason
    assert graph.channels[f'{block}.conv2'].consumers == [f'{block}.conv3']
    assert graph.channels[f'{block}.conv2'].followers == [f'{block}.bn2']
    # conv3 and the downsample conv feed the residual add.
    assert not graph.channels[f'{block}.conv3'].removable
    assert not graph.channels[f'{block}.downsample.0'].removable
    assert graph.input_layers == {'conv1'}
