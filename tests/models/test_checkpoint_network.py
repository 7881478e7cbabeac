"""Rebuilding the masked layers a checkpoint holds, with or without channel groups."""
import pytest
import torch
from mmdet.registry import MODELS
from mmdet.utils import register_all_modules
from mmengine.config import Config

from conftest import TINY_CONFIG
from mmsparse.core import MaskSpec, generate_masks
from mmsparse.engine.sparse_checkpoint import checkpoint_network
from mmsparse.models import sparsify_detector


def _model():
    register_all_modules()
    torch.manual_seed(0)
    return MODELS.build(Config.fromfile(str(TINY_CONFIG)).model)


def _save(tmp_path, channel_groups):
    network = sparsify_detector(_model(), channel_groups=channel_groups)
    generate_masks(network, ['channel@0.50', 'unstructured@0.50'], MaskSpec())
    path = tmp_path / f'groups_{channel_groups}.pth'
    torch.save({'state_dict': network.model.state_dict()}, path)
    return network, path


@pytest.mark.parametrize('channel_groups', [False, True])
def test_checkpoint_network_finds_the_channel_groups_its_masks_need(tmp_path, channel_groups):
    saved, path = _save(tmp_path, channel_groups)
    network = checkpoint_network(_model(), path)
    assert network.graph.coupled == channel_groups
    # every layer that holds channel masks removes them again (stem and heads are masked
    # too here, so the rebuilt set can only be larger)
    assert set(saved.channel_layers) <= set(network.channel_layers)
    assert ('neck.fpn_convs.0.conv' in network.channel_layers) == channel_groups


def test_channel_masks_on_a_layer_that_cannot_lose_channels_are_an_error(tmp_path):
    _, path = _save(tmp_path, False)
    state = torch.load(path, weights_only=True)['state_dict']
    head = 'roi_head.bbox_head.fc_cls'  # a prediction layer: its outputs are the model's
    # (the two keys checkpoint_network reads: the layer is masked, and holds channel masks)
    state[f'{head}.mask_unstructured_ratios'] = torch.tensor([0.5])
    state[f'{head}.mask_channel_ratios'] = torch.tensor([0.5])
    torch.save({'state_dict': state}, path)
    with pytest.raises(ValueError, match=f'channel masks for {head}, whose output channels '
                       'cannot be removed'):
        checkpoint_network(_model(), path)
