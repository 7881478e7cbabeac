# Dedicated sparse baseline for co-training: one pattern trained every iteration (no dense
# pivot), sparsity rising in stages (gradual magnitude pruning), same 600-iteration budget.
_base_ = ['../shapes/mask-rcnn_r18_fpn_shapes.py']
custom_hooks = [
    dict(type='mmsparse.SparseSubnetsHook', subnets=['channel@0.1', 'channel@0.2', 'channel@0.3']),
    dict(type='mmsparse.SparseCocktailHook', dense_pivot=False, ratio_mode='current',
         num_stages=None),
    dict(type='mmsparse.RNGStateHook'),
]
val_cfg = dict(type='mmsparse.SubnetValLoop', subnets='channel@0.30')
