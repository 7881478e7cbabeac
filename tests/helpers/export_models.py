"""Models the export tests slim and rebuild: a composite net with every slicing kind and the
tests' tiny Mask R-CNN, both with masks generated, and the detector outputs they compare."""
import torch
from torch import nn

from mmsparse.core import MaskSpec, SparseNetwork, generate_masks
from tiny_models import Residual, build, randomize_bn

SUBNETS = ['unstructured@0.50', 'channel@0.50', 'nm@2:4']


class Composite(nn.Module):
    """Residual block, a conv with bias + BN, a deconv and a two-FC head in one network, so
    every producer/follower/consumer kind (Conv2d, BatchNorm2d, ConvTranspose2d, Linear)
    is sliced at once."""

    def __init__(self):
        super().__init__()
        self.res = Residual(c=8)
        self.conv = nn.Conv2d(4, 8, 3, padding=1, bias=True)
        self.bn = nn.BatchNorm2d(8)
        self.up = nn.ConvTranspose2d(8, 8, 2, stride=2)
        self.down = nn.Conv2d(8, 2, 4, stride=4)
        self.fc1 = nn.Linear(32, 16)
        self.fc2 = nn.Linear(16, 16)
        self.cls = nn.Linear(16, 5)

    def forward(self, x):
        y = self.down(torch.relu(self.up(torch.relu(self.bn(self.conv(self.res(x)))))))
        return self.cls(torch.relu(self.fc2(torch.relu(self.fc1(y.flatten(1))))))


def composite_network(cls=None):
    """A :class:`SparseNetwork` over :class:`Composite` (or a tiny model class) with the
    masks of :data:`SUBNETS`, and its input."""
    torch.manual_seed(0)
    if cls is None:
        model, x = Composite(), torch.randn(2, 3, 8, 8)
        randomize_bn(model)
        run = lambda m: m(x)  # noqa: E731
    else:
        model, run, x = build(cls)
    # The tiny models are mostly stem and prediction layers: mask those too (and skip N:M,
    # which the 3-channel stems cannot take).
    network = SparseNetwork(model, run, sparsify_input_layers=cls is not None,
                            sparsify_output_layers=True)
    generate_masks(network, SUBNETS if cls is None else SUBNETS[:2], MaskSpec())
    return network, x


def tiny_mask_rcnn_network(channel_groups=False):
    """The tests' tiny Mask R-CNN (real MMDetection modules), masks from UMG, random init
    with non-trivial BatchNorms, and one preprocessed synthetic image."""
    from mmdet.registry import MODELS
    from mmdet.testing import demo_mm_inputs
    from mmdet.utils import register_all_modules
    from mmengine.config import Config

    from conftest import TINY_CONFIG
    from mmsparse.models import sparsify_detector
    register_all_modules()
    torch.manual_seed(0)
    model = MODELS.build(Config.fromfile(str(TINY_CONFIG)).model)
    model.init_weights()
    randomize_bn(model)
    network = sparsify_detector(model, channel_groups=channel_groups)
    generate_masks(network, SUBNETS, MaskSpec())
    model.eval()
    packed = demo_mm_inputs(batch_size=1, image_shapes=[(3, 64, 64)], num_items=[2],
                            num_classes=2, with_mask=True)
    data = model.data_preprocessor(packed, False)
    return network, data['inputs'], data['data_samples']


def detector_outputs(model, inputs, samples):
    """Features, RPN maps, box head and mask head outputs on fixed RoIs: every layer, and
    no NMS or top-k whose order float rounding could flip."""
    from mmdet.structures.bbox import bbox2roi
    with torch.no_grad():
        feats = model.extract_feat(inputs)
        rpn_cls, rpn_reg = model.rpn_head(feats)
        rois = bbox2roi([torch.tensor([[4., 4., 40., 40.], [10., 20., 60., 50.]])])
        box = model.roi_head._bbox_forward(feats, rois)
        mask = model.roi_head._mask_forward(feats, rois)
    return [*feats, *rpn_cls, *rpn_reg, box['cls_score'], box['bbox_pred'],
            mask['mask_preds']]
