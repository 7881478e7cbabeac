"""The zoo checks: real MMDetection configs, random init, the 24 Sparse Cocktail subnets.

Shared by ``tests/zoo/test_zoo.py`` and ``tools/analysis_tools/zoo_table.py`` (which writes
``docs/zoo.md``), so the table says what the tests check. Per config:

* build the model from the installed MMDetection's config (random init, nothing downloaded)
  with the test-time proposal and detection counts cut (the layers are the config's own) and
  ``score_thr=0``, so random weights still give detections and the mask heads run;
* attach the 24 subnets with the defaults (:func:`mmsparse.models.sparsify_detector`,
  :func:`mmsparse.core.generate_masks`);
* ``dense`` predicts exactly what the unmodified model predicts, every subnet predicts
  finite results that differ from dense;
* the measured sparsity (:func:`mmsparse.core.subnet_stats`) matches the masks;
* a channel and an N:M subnet exported (:func:`mmsparse.core.export.slim_subnet`) predict
  what the masked model predicts in that subnet;
* one training step per pattern gives a finite loss and changes the weights.
"""
import copy
from pathlib import Path

import mmdet
import torch
from mmdet.registry import MODELS
from mmdet.testing import demo_mm_inputs
from mmdet.utils import register_all_modules
from mmengine.config import Config
from torch.nn.modules.batchnorm import _BatchNorm

from mmsparse.core import (DENSE, cocktail_subnets, generate_masks, record_positions,
                           subnet_stats)
from mmsparse.core.export.slimming import slim_subnet
from mmsparse.models import sparsify_detector
from mmsparse.models.detector_run import needs_masks

CONFIGS = Path(mmdet.__file__).parent / '.mim' / 'configs'
IMAGE = (64, 64)  # (H, W): every config's coarsest stride still gives a feature map
EXPORTED = ('channel@0.34', 'nm@2:4')
TRAINED = ('dense', 'unstructured@0.49', 'channel@0.34', 'nm@2:4')
MEASURED = ('unstructured@0.20', 'unstructured@0.89', 'channel@0.10', 'channel@0.65', 'nm@1:2',
            'nm@4:8')

# id -> (config under mmdet's configs, what it covers[, model overrides]). The ids name the
# tests. SOLOv2 predicts a mask for every grid cell scoring above the threshold: fewer cells
# keep that affordable with the threshold at 0 (its layers are the same).
ZOO = {
    'faster-rcnn_r50': ('faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py', 'two-stage'),
    'mask-rcnn_r50': ('mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py', 'two-stage, instance seg.'),
    'cascade-mask-rcnn_r50': ('cascade_rcnn/cascade-mask-rcnn_r50_fpn_1x_coco.py',
                              'cascade, instance seg.'),
    'retinanet_r50': ('retinanet/retinanet_r50_fpn_1x_coco.py', 'one-stage, anchors'),
    'fcos_r50': ('fcos/fcos_r50-caffe_fpn_gn-head_1x_coco.py', 'anchor-free, GroupNorm head'),
    'rtmdet_tiny': ('rtmdet/rtmdet_tiny_8xb32-300e_coco.py',
                    'anchor-free, CSPNeXt (depthwise convs)'),
    'rtmdet-ins_tiny': ('rtmdet/rtmdet-ins_tiny_8xb32-300e_coco.py',
                        'instance seg. (masks from the box head)'),
    'solov2_r50': ('solov2/solov2_r50_fpn_1x_coco.py', 'instance seg. (CoordConv)',
                   dict(mask_head=dict(num_grids=[8, 6, 4, 3, 2]))),
    'condinst_r50': ('condinst/condinst_r50_fpn_ms-poly-90k_coco_instance.py',
                     'instance seg. (dynamic convs)'),
    'yolact_r50': ('yolact/yolact_r50_1xb8-55e_coco.py',
                   'instance seg. (training-only branch)'),
    'mask-rcnn_regnetx-400mf': ('regnet/mask-rcnn_regnetx-400MF_fpn_ms-poly-3x_coco.py',
                                'grouped convs (RegNet)'),
    'mask-rcnn_swin-t': ('swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py',
                         'attention / Linear layers (Swin-T)'),
}

# Checked by tools/analysis_tools/zoo_table.py only (the tests would take too long with
# them): a semantic-map loss (HTC) and a 257-input MaskIoU head (MS R-CNN).
TABLE_ONLY = {
    'htc_r50': ('htc/htc_r50_fpn_1x_coco.py', 'cascade, semantic branch (table only)'),
    'ms-rcnn_r50': ('ms_rcnn/ms-rcnn_r50_fpn_1x_coco.py', 'MaskIoU head (table only)'),
}
ZOO_AND_TABLE = {**ZOO, **TABLE_ONLY}

# Settings that only size the work (how many boxes and RoIs are kept or sampled); the layers
# are the config's own. score_thr=0 makes random weights give detections, so mask heads run.
_TEST_LIMITS = dict(nms_pre=100, max_per_img=3, score_thr=0.0, filter_thr=0.0)
_RPN_TEST_LIMITS = dict(nms_pre=100, max_per_img=4)
_TRAIN_LIMITS = dict(nms_pre=100, max_per_img=50, num=16)


def _strip_downloads(node):
    """Drop every ``init_cfg`` and ``pretrained`` (random init, nothing downloaded)."""
    if isinstance(node, dict):
        for key in ('init_cfg', 'pretrained'):
            if key in node:
                node[key] = None
        for value in node.values():
            _strip_downloads(value)
    elif isinstance(node, (list, tuple)):
        for value in node:
            _strip_downloads(value)


def _limit(node, limits):
    if isinstance(node, dict):
        for key, value in node.items():
            if key == 'rpn' and limits is _TEST_LIMITS:
                _limit(value, _RPN_TEST_LIMITS)
            elif key in limits and isinstance(value, (int, float)) and not isinstance(
                    value, bool):
                node[key] = min(value, limits[key])
            else:
                _limit(value, limits)
    elif isinstance(node, (list, tuple)):
        for value in node:
            _limit(value, limits)


def model_config(zoo_id):
    """The config's ``model`` dict, random init, with the work-sizing limits applied."""
    entry = ZOO_AND_TABLE[zoo_id]
    cfg = Config.fromfile(str(CONFIGS / entry[0]))
    if len(entry) > 2:
        cfg.merge_from_dict(dict(model=entry[2]))
    model = cfg.model
    _strip_downloads(model)
    for key in ('test_cfg', 'train_cfg'):
        for node in [model] + [v for v in model.values() if isinstance(v, dict)]:
            if isinstance(node.get(key), dict):
                _limit(node[key], _TEST_LIMITS if key == 'test_cfg' else _TRAIN_LIMITS)
    return model


def build(zoo_id, seed=0):
    """The detector of ``zoo_id`` with random weights and non-trivial BatchNorms."""
    register_all_modules()
    torch.manual_seed(seed)
    model = MODELS.build(model_config(zoo_id))
    model.init_weights()
    for name, m in model.named_modules():
        if isinstance(m, _BatchNorm) and m.weight is not None:
            # MMDetection zero-inits some BNs: make every branch count
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
        if '.rtm_reg.' in name and isinstance(m, torch.nn.Conv2d):
            # RTMDet regresses box side distances around 0 at random init, i.e. empty boxes
            # that post-processing drops; positive distances give detections to compare.
            m.bias.data.fill_(1.0)
    return model.eval()


def batch(model, training, seed=1, size=IMAGE):
    """A preprocessed synthetic batch of one image with 3 boxes (and masks when needed)."""
    packed = demo_mm_inputs(batch_size=1, image_shapes=[(3, *size)], num_items=[3],
                            num_classes=2, with_mask=needs_masks(model),
                            with_semantic=bool(getattr(model, 'with_semantic', False)))
    for sample in packed['data_samples']:
        sample.gt_instances.labels.zero_()
    torch.manual_seed(seed)
    return model.data_preprocessor(packed, training)


def _tensors(obj):
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, (list, tuple)):
        return [t for item in obj for t in _tensors(item)]
    return []


def predict(model, data):
    """``{field: tensor}``: the first image's predictions (boxes, scores, labels, masks) and
    the heads' raw outputs (``raw.<i>``, from the detector's tensor mode), which show every
    change, also where post-processing keeps the same boxes."""
    samples = data['data_samples']
    with torch.no_grad():
        pred = model.predict(data['inputs'], copy.deepcopy(samples))[0].pred_instances
        raw = _tensors(model._forward(data['inputs'], copy.deepcopy(samples)))
    out = {k: pred.get(k).detach().float() for k in ('bboxes', 'scores', 'labels', 'masks')
           if k in pred}
    out.update({f'raw.{i}': t.detach().float() for i, t in enumerate(raw)})
    return out


def same(a, b, exact=True, tol=1e-4):
    """Whether two :func:`predict` results agree (bitwise, or within ``tol``)."""
    if a.keys() != b.keys():
        return False
    for key in a:
        if a[key].shape != b[key].shape:
            return False
        if exact or key == 'labels':
            if not torch.equal(a[key], b[key]):
                return False
        elif key == 'masks':  # a pixel at the threshold may flip
            if (a[key] != b[key]).float().mean() > 1e-3:
                return False
        elif not torch.allclose(a[key], b[key], rtol=tol, atol=tol):
            return False
    return True


class Attached:
    """One zoo model with the 24 subnets attached, and its unmodified copy."""

    def __init__(self, zoo_id):
        self.zoo_id = zoo_id
        self.model = build(zoo_id)
        self.original = copy.deepcopy(self.model)
        self.network = sparsify_detector(self.model, image_size=IMAGE)
        generate_masks(self.network, cocktail_subnets())
        self.model.eval()
        self.data = batch(self.model, False)

    def predict(self, subnet):
        self.network.set_active(subnet)
        try:
            return predict(self.model, self.data)
        finally:
            self.network.set_active('dense')

    def stats(self, names=MEASURED):
        """``{name: SubnetStats}`` of subnets ``names``, FLOPs counted on the test image."""
        positions = record_positions(self.model, lambda m: predict(m, self.data))
        return {name: subnet_stats(self.network, name, positions) for name in names}

    def export(self, subnet):
        """(exported model's predictions, masked model's predictions in ``subnet``)."""
        exported = slim_subnet(self.network, subnet).eval()
        return predict(exported, self.data), self.predict(subnet)

    def train_step(self, subnet, lr=1e-4):
        """One SGD step in ``subnet``: (loss, largest weight change of a masked layer)."""
        self.network.set_active(subnet)
        self.model.train()
        data = batch(self.model, True, seed=2)
        before = {n: layer.dense_weight.detach().clone()
                  for n, layer in self.network.layers.items()}
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = torch.optim.SGD(params, lr=lr)
        try:
            losses = self.model.loss(data['inputs'], data['data_samples'])
            loss, _ = self.model.parse_losses(losses)
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 10.0)
            optimizer.step()
        finally:
            self.model.eval()
            self.network.set_active('dense')
        change = max((layer.dense_weight.detach() - before[n]).abs().max().item()
                     for n, layer in self.network.layers.items())
        return loss.item(), change


def subnet_names():
    return [s.name for s in cocktail_subnets() if s != DENSE]
