# Sparse Cocktail on shapes with the joint dense loss: every iteration trains one sparse
# subnet (U, C, NM, U, ...) and the dense network together (two loss forwards, one backward,
# one step), so the dense subnet gets every update instead of every other one. About twice
# the time per iteration of the default cocktail (docs/training.md, docs/results.md).
_base_ = ['./mask-rcnn_r18_fpn_cocktail_shapes.py']
custom_hooks = _base_.custom_hooks  # [1] is the SparseCocktailHook; one option changes
custom_hooks[1].update(joint_dense=True)
