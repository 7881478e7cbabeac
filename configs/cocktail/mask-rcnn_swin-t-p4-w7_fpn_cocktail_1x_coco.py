# Sparse Cocktail, the recommended recipe (../_base_/sparsity/cocktail.py), on COCO:
# MMDetection's Mask R-CNN Swin-T FPN 1x (attention backbone, Linear layers).
_base_ = ['mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py', '../_base_/sparsity/cocktail.py']
custom_hooks = [*_base_.get('custom_hooks', []), *_base_.sparse_hooks]
val_cfg = _base_.cocktail_val_cfg
