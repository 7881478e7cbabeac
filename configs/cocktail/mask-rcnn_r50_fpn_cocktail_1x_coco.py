# Sparse Cocktail on COCO instance segmentation: MMDetection's Mask R-CNN R-50 FPN 1x.
_base_ = ['mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py', '../_base_/sparsity/cocktail.py']
val_cfg = {{_base_.cocktail_val_cfg}}
