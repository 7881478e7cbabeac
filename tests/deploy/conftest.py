"""Session fixtures of the ONNX tests (built once per session): checkpoints of the tiny
Mask R-CNN with channel and N:M masks, and preprocessed batches of the tiny shapes images."""
import pytest
import torch

from conftest import TINY_CONFIG

from .onnx_helpers import SUBNETS, tiny_detector


@pytest.fixture(scope='session')
def sparse_tiny(tmp_path_factory, tiny_data):
    """``{'cfg', 'sparse', 'dense', 'groups'}``: the tiny config and checkpoints of one
    seeded model, with the masks of SUBNETS attached (sparse), without (dense), and with
    ``channel@0.5`` masks over channel groups (the FPN narrows too)."""
    from mmsparse.core import generate_masks
    from mmsparse.models import sparsify_detector
    root = tmp_path_factory.mktemp('onnx_ckpt')
    model = tiny_detector()
    torch.save(dict(meta={}, state_dict=model.state_dict()), root / 'dense.pth')
    generate_masks(sparsify_detector(model), SUBNETS)
    torch.save(dict(meta={}, state_dict=model.state_dict()), root / 'sparse.pth')
    model = tiny_detector()
    generate_masks(sparsify_detector(model, channel_groups=True), ['channel@0.5'])
    torch.save(dict(meta={}, state_dict=model.state_dict()), root / 'groups.pth')
    return dict(cfg=TINY_CONFIG, sparse=root / 'sparse.pth', dense=root / 'dense.pth',
                groups=root / 'groups.pth')


@pytest.fixture(scope='session')
def tiny_batches(tiny_data):
    """The 4 validation images through the test pipeline, as 2 batches (unpreprocessed)."""
    from mmengine.config import Config
    from mmengine.runner import Runner
    tiny_detector()  # registers mmdet's modules
    cfg = Config.fromfile(str(TINY_CONFIG))
    return list(Runner.build_dataloader(cfg.test_dataloader))
