# Sparse Cocktail on shapes with the joint dense loss on split batches *and* straight-through
# sparse passes: each iteration trains one sparse subnet on the first half of the batch and
# the dense network on the second, and the sparse pass's gradient also reaches the weights
# its subnet removes, so the dense weights learn from the whole batch. About the cost of
# plain training (docs/training.md, docs/results.md).
_base_ = ['./mask-rcnn_r18_fpn_cocktail-joint-split_shapes.py']
custom_hooks = _base_.custom_hooks  # [1] is the SparseCocktailHook; one option changes
custom_hooks[1].update(straight_through=True)
