# Ablation: Sparse Cocktail on the shapes Mask R-CNN with only the channel masks by Chase
# (unstructured, N:M by UMG). See docs/mask_sources.md.
_base_ = ['./mask-rcnn_r18_fpn_cocktail_shapes.py']
custom_hooks = _base_.custom_hooks  # [1] is the SparseCocktailHook; one option changes
custom_hooks[1].update(mask_sources=dict(channel=dict(type='chase', beta=0.3)))
