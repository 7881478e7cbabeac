# Dedicated sparse baseline for co-training: one pattern trained every iteration (no dense
# pivot), sparsity rising in stages (gradual magnitude pruning), same 600-iteration budget.
_base_ = ['../shapes/mask-rcnn_r18_fpn_shapes.py']
custom_hooks = [
    dict(type='mmsparse.SparseSubnetsHook', subnets=['unstructured@0.1', 'unstructured@0.2', 'unstructured@0.3', 'unstructured@0.4', 'unstructured@0.5']),
    dict(type='mmsparse.SparseCocktailHook', dense_pivot=False, ratio_mode='current',
         num_stages=None),
    dict(type='mmsparse.RNGStateHook'),
]
val_cfg = dict(type='mmsparse.SubnetValLoop', subnets='unstructured@0.50')
