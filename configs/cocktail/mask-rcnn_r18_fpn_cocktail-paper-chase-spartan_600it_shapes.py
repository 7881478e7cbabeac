# The paper's dense-pivot cocktail on the shapes Mask R-CNN with Chase choosing the channel
# masks and Spartan training the unstructured subnets (N:M by UMG); see docs/mask_sources.md.
# Options are changed by name: the SparseCocktailHook gets mask_sources, the list is rebuilt.
_base_ = ['./mask-rcnn_r18_fpn_cocktail-paper_600it_shapes.py',
          '../_base_/sparsity/cocktail_mask_sources.py']
sparse_cocktail = dict(_base_.sparse_cocktail, mask_sources=_base_.cocktail_mask_sources)
custom_hooks = [_base_.sparse_subnets, sparse_cocktail, _base_.rng_state]
