# Sparse Cocktail, the recommended recipe (../_base_/sparsity/cocktail.py), on COCO:
# MMDetection's Mask R-CNN R-50 FPN 1x (instance segmentation).
_base_ = ['mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py', '../_base_/sparsity/cocktail.py']
custom_hooks = [*_base_.get('custom_hooks', []), *_base_.sparse_hooks]
val_cfg = _base_.cocktail_val_cfg
