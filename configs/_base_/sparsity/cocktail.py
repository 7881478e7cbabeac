# Sparse Cocktail: co-train dense + 10 unstructured + 10 channel + 3 N:M subnets in one run.
# Add to any MMDetection config's _base_ list. The stem and the prediction layers stay dense
# (found automatically); pass include/exclude globs to SparseSubnetsHook to change that.
# (mmengine forbids a key in two bases, so val_cfg is set by the configs that inherit this.)
custom_hooks = [
    dict(type='mmsparse.SparseSubnetsHook', subnets='cocktail'),
    dict(type='mmsparse.SparseCocktailHook', ratio_mode='current', stage_end=0.8),
    dict(type='mmsparse.RNGStateHook'),  # --resume continues exactly
]
# Validation during training can track one subnet per pattern besides dense.
cocktail_val_cfg = dict(type='mmsparse.SubnetValLoop',
                        subnets='dense,unstructured@0.49,channel@0.27,nm@2:4')
