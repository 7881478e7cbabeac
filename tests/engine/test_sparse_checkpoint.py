"""mmsparse.engine.sparse_checkpoint.load_sparse_detector: the tools' one way to load a
checkpoint outside a Runner (weights, masks and the network, once, or a clear error)."""
import pytest
import torch
from mmdet.registry import MODELS
from mmdet.utils import register_all_modules
from mmengine.config import Config

from conftest import TINY_CONFIG
from mmsparse.core import generate_masks
from mmsparse.engine.sparse_checkpoint import checkpoint_network
from mmsparse.engine.sparse_checkpoint import load_sparse_detector
from mmsparse.models import attached_network, sparsify_detector

SUBNETS = ['dense', 'unstructured@0.50', 'nm@2:4']


@pytest.fixture(scope='module')
def saved(tmp_path_factory):
    """A tiny detector with masks, saved as mmengine does and as a DDP-wrapped model's
    ``state_dict()`` would be (every key prefixed ``module.``)."""
    register_all_modules()
    cfg = Config.fromfile(str(TINY_CONFIG))
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    generate_masks(sparsify_detector(model), SUBNETS)
    state = model.state_dict()
    root = tmp_path_factory.mktemp('ckpt')
    torch.save(dict(meta=dict(iter=7), state_dict=state), root / 'plain.pth')
    torch.save(dict(state_dict={f'module.{k}': v for k, v in state.items()}),
               root / 'ddp.pth')
    return cfg, state, root


@pytest.mark.parametrize('name', ['plain.pth', 'ddp.pth'])
def test_weights_masks_and_network_load(saved, name):
    cfg, state, root = saved
    model, network, meta = load_sparse_detector(cfg, str(root / name))
    assert not model.training and attached_network(model) is network
    assert [s.name for s in network.subnets()] == SUBNETS
    assert meta == (dict(iter=7) if name == 'plain.pth' else {})
    loaded = model.state_dict()
    assert loaded.keys() == state.keys()
    for key, value in state.items():
        assert torch.equal(loaded[key], value), key


def test_another_models_checkpoint_is_refused(saved):
    cfg, state, root = saved
    other = {k: v for k, v in state.items() if k != 'roi_head.bbox_head.fc_cls.weight'}
    torch.save(dict(state_dict=other), root / 'other.pth')
    with pytest.raises(ValueError, match=r"other.pth' does not fit the config's model: 1 of "
                                         r'\d+ weights missing \(e.g. '
                                         r'roi_head.bbox_head.fc_cls.weight\)'):
        load_sparse_detector(cfg, str(root / 'other.pth'))


@pytest.mark.parametrize('name', ['plain.pth', 'ddp.pth'])
def test_test_tool_path_finds_masks_of_either_checkpoint(saved, name):
    """SparseSubnetsHook(subnets=None), as in ``tools/test.py``, reads the masked layers
    from the checkpoint's path: a DDP-prefixed one must not look mask-free."""
    cfg, state, root = saved
    network = checkpoint_network(MODELS.build(cfg.model), str(root / name))
    assert network is not None
    saved_layers = {k[:-len('.mask_unstructured_ratios')] for k in state
                    if k.endswith('.mask_unstructured_ratios')}
    assert set(network.layers) == saved_layers


def test_a_checkpoint_masking_other_layers_than_the_config_is_refused(saved):
    """A training config that selects other layers than the checkpoint was trained with
    (tools/test.py with that config): mmengine would drop the extra layers' masks silently."""
    cfg, state, _ = saved
    from mmsparse.core import parse_subnets
    from mmsparse.engine.sparse_checkpoint import check_checkpoint_layers
    model = MODELS.build(cfg.model)
    same = sparsify_detector(model)
    check_checkpoint_layers(state, same, parse_subnets(SUBNETS))  # same selection: fine
    fewer = sparsify_detector(MODELS.build(cfg.model), exclude=['backbone.layer1.*'])
    with pytest.raises(ValueError, match=r'masks other layers than the config selects: \d+ '
                                         r'only in the checkpoint \(e.g. backbone.layer1'):
        check_checkpoint_layers(state, fewer, parse_subnets(SUBNETS))
    # Other subnets: a new run from the weights (load_from); its masks are not loaded.
    check_checkpoint_layers(state, fewer, parse_subnets(['dense', 'channel@0.30']))
