# Spartan at 80% global unstructured sparsity on the shapes task: 600 iterations, the same
# budget as the gradual-magnitude-pruning baseline
# (configs/dedicated/mask-rcnn_r18_fpn_unstructured-0.80_shapes.py).
_base_ = ['../shapes/mask-rcnn_r18_fpn_shapes.py', '../_base_/sparsity/spartan.py']
optim_wrapper = dict(type='OptimWrapper')
val_cfg = dict(type='mmsparse.SubnetValLoop', subnets='unstructured@0.80')
