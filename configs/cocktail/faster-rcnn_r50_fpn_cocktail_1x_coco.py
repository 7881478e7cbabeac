# Sparse Cocktail on COCO detection: MMDetection's Faster R-CNN R-50 FPN 1x.
_base_ = ['mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py', '../_base_/sparsity/cocktail.py']
val_cfg = {{_base_.cocktail_val_cfg}}
