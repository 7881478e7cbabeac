# Sparse Cocktail with per-pattern mask sources: the channel masks chosen by Chase (UMM
# scores, one global ranking over the removable channels, floor ceil(beta (1 - r) C)) and
# the unstructured subnets trained with Spartan's dual-averaging forward (soft top-k mask,
# hard projection, straight-through gradient). N:M (and block) masks stay UMG's.
# Add after a cocktail fragment (./cocktail.py or ./cocktail_paper.py) in a config's _base_
# list and give it to the SparseCocktailHook by name, e.g.
#   sparse_cocktail = dict(_base_.sparse_cocktail, mask_sources=_base_.cocktail_mask_sources)
#   custom_hooks = [_base_.sparse_subnets, sparse_cocktail, _base_.rng_state]
# (configs/cocktail/mask-rcnn_r18_fpn_cocktail-paper-chase-spartan_600it_shapes.py).
# docs/mask_sources.md explains the choices.
cocktail_mask_sources = dict(
    channel=dict(type='chase', beta=0.3),  # beta as in the dedicated Chase shapes run
    unstructured=dict(type='spartan', beta_start=1.0, beta_end=20.0,
                      freeze_at=None,       # None: the cocktail's stage_end (0.8)
                      through_mask=True))
