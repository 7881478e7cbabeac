# Sparse Cocktail on shapes with distillation from the dense network on sparse steps
# (loss = 0.5 task + 0.5 KD on RPN objectness and RoI class logits; an extra no-grad dense
# forward per sparse step).
_base_ = ['./mask-rcnn_r18_fpn_cocktail_shapes.py']
custom_hooks = _base_.custom_hooks  # [1] is the SparseCocktailHook; one option changes
custom_hooks[1].update(distill=dict(weight=0.5))
