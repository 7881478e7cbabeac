# Sparse Cocktail, the recommended recipe (../_base_/sparsity/cocktail.py), on the CPU-sized
# shapes Mask R-CNN: 24 subnets in one 600-iteration run on the demo data (256 training
# images); `make demo` trains it. docs/results.md measures it at 3600 iterations on 1024
# images with --cfg-options.
_base_ = ['../shapes/mask-rcnn_r18_fpn_shapes.py', '../_base_/sparsity/cocktail.py']
custom_hooks = _base_.sparse_hooks
val_cfg = _base_.cocktail_val_cfg
