# Sparse Cocktail on the shapes Mask R-CNN with Chase choosing the channel masks and
# Spartan training the unstructured subnets (issue #6); everything else as
# mask-rcnn_r18_fpn_cocktail_shapes.py. See docs/mask_sources.md.
_base_ = ['./mask-rcnn_r18_fpn_cocktail_shapes.py',
          '../_base_/sparsity/cocktail_mask_sources.py']
custom_hooks = _base_.custom_hooks  # [1] is the SparseCocktailHook; one option changes
custom_hooks[1].update(mask_sources=_base_.cocktail_mask_sources)
