# Sparse Cocktail on shapes with the paper's ratio choice: each sparse step trains only the
# current stage's ratio (compare with the default 'unlocked' sampling).
_base_ = ['./mask-rcnn_r18_fpn_cocktail_shapes.py']
custom_hooks = [
    dict(type='mmsparse.SparseSubnetsHook', subnets='cocktail'),
    dict(type='mmsparse.SparseCocktailHook', ratio_mode='current', stage_end=0.8),
    dict(type='mmsparse.RNGStateHook'),
]
