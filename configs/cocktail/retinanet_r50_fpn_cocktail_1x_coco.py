# Sparse Cocktail, the recommended recipe (../_base_/sparsity/cocktail.py), on COCO:
# MMDetection's RetinaNet R-50 FPN 1x (one-stage, anchor-based).
_base_ = ['mmdet::retinanet/retinanet_r50_fpn_1x_coco.py', '../_base_/sparsity/cocktail.py']
custom_hooks = [*_base_.get('custom_hooks', []), *_base_.sparse_hooks]
val_cfg = _base_.cocktail_val_cfg
