# Sparse Cocktail on shapes: the joint dense loss on split batches with straight-through
# sparse passes (mask-rcnn_r18_fpn_cocktail-joint-split-ste_shapes.py), and the sparse pass
# samples among all ratios unlocked so far instead of only the current stage's. The closest
# of the measured co-training variants to the single runs at about the cost of plain
# training, though still short of #4's goals (docs/results.md).
_base_ = ['./mask-rcnn_r18_fpn_cocktail-joint-split-ste_shapes.py']
custom_hooks = _base_.custom_hooks  # [1] is the SparseCocktailHook; one option changes
custom_hooks[1].update(ratio_mode='unlocked')
