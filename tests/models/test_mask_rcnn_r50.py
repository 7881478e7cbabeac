"""The 24 Sparse Cocktail subnets on MMDetection's real Mask R-CNN R-50 FPN (random init)."""
import copy
import io

import pytest
import torch
from mmdet.registry import MODELS
from mmdet.testing import demo_mm_inputs
from mmdet.utils import register_all_modules
from mmengine.config import Config
from torch.nn.modules.batchnorm import _BatchNorm

from mmsparse.core import cocktail_subnets, generate_masks, is_mask_key, masked_layers
from mmsparse.core.layers import MaskedLayerMixin
from mmsparse.models import sparsify_detector

CONFIG = 'mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py'


@pytest.fixture(scope='module')
def r50(tmp_path_factory):
    """Sparse and original R-50 Mask R-CNN, with non-trivial BN so every branch matters."""
    register_all_modules()
    cfg_file = tmp_path_factory.mktemp('cfg') / 'r50.py'
    cfg_file.write_text(f"_base_ = ['{CONFIG}']\n")  # inherits the real MMDetection config
    cfg = Config.fromfile(str(cfg_file))
    cfg.model.backbone.init_cfg = None  # no download
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    for m in model.modules():  # MMDetection zero-inits each bottleneck's last BN
        if isinstance(m, _BatchNorm):
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    original = copy.deepcopy(model).eval()
    net = sparsify_detector(model)
    generate_masks(net, cocktail_subnets())
    model.eval()
    packed = demo_mm_inputs(batch_size=1, image_shapes=[(3, 96, 128)], num_items=[2],
                            num_classes=2, with_mask=True)
    inputs = model.data_preprocessor(packed, False)['inputs']
    return model, original, net, inputs


def _features(model, inputs):
    with torch.no_grad():
        feats = model.extract_feat(inputs)
        return feats + (model.rpn_head(feats)[0][0], )


def test_structure_defaults(r50):
    model, _, net, _ = r50
    assert len(net.subnets()) == 24
    names = set(net.layers)
    assert 'backbone.conv1' not in names  # the stem stays dense
    for head in ('rpn_head.rpn_cls', 'rpn_head.rpn_reg', 'roi_head.bbox_head.fc_cls',
                 'roi_head.bbox_head.fc_reg', 'roi_head.mask_head.conv_logits'):
        assert head not in names
    # MMDetection's R-50 config freezes the stem and layer1 (frozen_stages=1): a mask there
    # could never be recovered from, so those layers stay dense by default.
    assert not any(n.startswith('backbone.layer1.') for n in names)
    assert set(net.frozen_dense) >= {'backbone.layer1.0.conv1', 'backbone.layer1.0.conv3'}
    removable = set(net.channel_layers)
    assert {'backbone.layer2.0.conv1', 'backbone.layer3.2.conv2', 'rpn_head.rpn_conv',
            'roi_head.bbox_head.shared_fcs.0', 'roi_head.mask_head.upsample'} <= removable
    for coupled in ('backbone.layer2.0.conv3', 'backbone.layer2.0.downsample.0',
                    'neck.lateral_convs.0.conv', 'neck.fpn_convs.1.conv'):
        assert coupled in names and coupled not in removable
    # MMCV's ConvModule wraps MMCV's Conv2d subclass in the neck: still masked, same names.
    assert isinstance(model.neck.lateral_convs[0].conv, MaskedLayerMixin)


def test_dense_bitwise_and_every_subnet_differs(r50):
    model, original, net, inputs = r50
    reference = _features(original, inputs)
    net.set_active('dense')
    assert all(torch.equal(a, b) for a, b in zip(reference, _features(model, inputs)))
    for spec in net.subnets()[1:]:
        net.set_active(spec)
        diff = max((a - b).abs().max().item() for a, b in zip(reference, _features(model,
                                                                                  inputs)))
        assert diff > 0, f'{spec.name} gives the dense output'
    net.set_active('dense')


def test_stock_state_dict_loads_and_masks_round_trip(r50):
    model, original, net, _ = r50
    result = model.load_state_dict(original.state_dict(), strict=False)
    assert result.unexpected_keys == []
    assert all(is_mask_key(k) for k in result.missing_keys)

    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    sparse_size = buffer.tell()
    dense_buffer = io.BytesIO()
    torch.save(original.state_dict(), dense_buffer)
    assert sparse_size <= 1.5 * dense_buffer.tell()

    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    clone = copy.deepcopy(original)
    clone_net = sparsify_detector(clone)
    clone.load_state_dict(state, strict=False)
    assert [s.name for s in clone_net.subnets()] == [s.name for s in net.subnets()]
    layers = masked_layers(clone)
    for spec in net.subnets()[1:]:
        for name, layer in net.layers.items():
            a, b = layer.mask_for(spec), layers[name].mask_for(spec)
            assert (a is None) == (b is None) and (a is None or torch.equal(a, b)), name
