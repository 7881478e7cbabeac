# Sparse Cocktail, the paper's dense-pivot recipe (../_base_/sparsity/cocktail_paper.py), on
# COCO: MMDetection's Mask R-CNN R-50 FPN 1x.
_base_ = ['mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py',
          '../_base_/sparsity/cocktail_paper.py']
custom_hooks = [*_base_.get('custom_hooks', []), *_base_.sparse_hooks]
val_cfg = _base_.cocktail_val_cfg
