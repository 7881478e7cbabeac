# Sparse Cocktail on shapes with the joint dense loss on split batches: every iteration
# trains one sparse subnet (U, C, NM, U, ...) on the first half of the batch and the dense
# network on the second half (two loss forwards over 4 images each, one backward, one step).
# About the time per iteration of plain training (docs/training.md, docs/results.md).
_base_ = ['./mask-rcnn_r18_fpn_cocktail_shapes.py']
custom_hooks = _base_.custom_hooks  # [1] is the SparseCocktailHook; one option changes
custom_hooks[1].update(joint_dense=dict(split_batch=True))
