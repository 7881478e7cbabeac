# Sparse Cocktail, the paper's dense-pivot recipe (../_base_/sparsity/cocktail_paper.py), on
# the CPU-sized shapes Mask R-CNN: 24 subnets, one 600-iteration run on the demo data.
_base_ = ['../shapes/mask-rcnn_r18_fpn_shapes.py', '../_base_/sparsity/cocktail_paper.py']
custom_hooks = _base_.sparse_hooks
val_cfg = _base_.cocktail_val_cfg
