# Dedicated gradual-magnitude-pruning baseline at 80% unstructured sparsity (the budget of the
# Spartan comparison): every iteration on the current stage's ratio, no dense pivot, same
# 600-iteration budget as the other shapes runs.
_base_ = ['../shapes/mask-rcnn_r18_fpn_shapes.py']
custom_hooks = [
    dict(type='mmsparse.SparseSubnetsHook',
         subnets=['unstructured@0.3', 'unstructured@0.5', 'unstructured@0.65',
                  'unstructured@0.75', 'unstructured@0.8']),
    dict(type='mmsparse.SparseCocktailHook', dense_pivot=False, ratio_mode='current',
         num_stages=None),
    dict(type='mmsparse.RNGStateHook'),
]
val_cfg = dict(type='mmsparse.SubnetValLoop', subnets='unstructured@0.80')
