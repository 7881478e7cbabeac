# Ablation: Sparse Cocktail on the shapes Mask R-CNN with only the unstructured subnets
# trained by Spartan (channel, N:M by UMG). See docs/mask_sources.md.
_base_ = ['./mask-rcnn_r18_fpn_cocktail_shapes.py']
custom_hooks = _base_.custom_hooks  # [1] is the SparseCocktailHook; one option changes
custom_hooks[1].update(
    mask_sources=dict(unstructured=dict(type='spartan', beta_start=1.0, beta_end=20.0)))
