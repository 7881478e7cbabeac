# Sparse Cocktail on shapes with straight-through sparse steps: the dense-pivot schedule of
# the default (D, U, D, C, D, NM, ...), but each sparse step's gradient also reaches the
# weights its subnet removes, so every iteration moves the whole dense network. Same cost
# as the default (docs/training.md, docs/results.md).
_base_ = ['./mask-rcnn_r18_fpn_cocktail_shapes.py']
custom_hooks = _base_.custom_hooks  # [1] is the SparseCocktailHook; one option changes
custom_hooks[1].update(straight_through=True)
