# Sparse Cocktail on shapes with 'unlocked' ratio sampling: each sparse step samples among
# all ratios unlocked so far (the default 'current' trains only the current stage's ratio,
# as the paper does, and measured better: docs/results.md).
_base_ = ['./mask-rcnn_r18_fpn_cocktail_shapes.py']
custom_hooks = _base_.custom_hooks  # [1] is the SparseCocktailHook; one option changes
custom_hooks[1].update(ratio_mode='unlocked')
