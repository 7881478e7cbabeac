# Sparse Cocktail on the CPU-sized shapes Mask R-CNN: 24 subnets, one 600-iteration run.
_base_ = ['../shapes/mask-rcnn_r18_fpn_shapes.py', '../_base_/sparsity/cocktail.py']
val_cfg = {{_base_.cocktail_val_cfg}}
