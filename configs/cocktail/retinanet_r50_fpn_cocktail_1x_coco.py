# Sparse Cocktail on COCO detection: MMDetection's RetinaNet R-50 FPN 1x (one-stage).
_base_ = ['mmdet::retinanet/retinanet_r50_fpn_1x_coco.py', '../_base_/sparsity/cocktail.py']
val_cfg = {{_base_.cocktail_val_cfg}}
