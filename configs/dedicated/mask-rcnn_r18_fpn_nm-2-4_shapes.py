# Dedicated sparse baseline for co-training: one pattern trained every iteration (no dense
# pivot), sparsity rising in stages (gradual magnitude pruning), same 600-iteration budget.
_base_ = ['../shapes/mask-rcnn_r18_fpn_shapes.py']
custom_hooks = [
    dict(type='mmsparse.SparseSubnetsHook', subnets=['nm@2:4']),
    dict(type='mmsparse.SparseCocktailHook', dense_pivot=False, ratio_mode='current',
         num_stages=5),
    dict(type='mmsparse.RNGStateHook'),
]
val_cfg = dict(type='mmsparse.SubnetValLoop', subnets='nm@2:4')
