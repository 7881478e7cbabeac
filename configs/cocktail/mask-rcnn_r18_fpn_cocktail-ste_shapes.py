# Sparse Cocktail on shapes with straight-through sparse steps: the dense-pivot schedule of
# the default (D, U, D, C, D, NM, ...), but each sparse step's gradient also reaches the
# weights its subnet removes, so every iteration moves the whole dense network. Same cost
# as the default (docs/training.md, docs/results.md).
_base_ = ['./mask-rcnn_r18_fpn_cocktail_shapes.py']
custom_hooks = [
    dict(type='mmsparse.SparseSubnetsHook', subnets='cocktail'),
    dict(type='mmsparse.SparseCocktailHook', ratio_mode='current', stage_end=0.8,
         straight_through=True),
    dict(type='mmsparse.RNGStateHook'),
]
