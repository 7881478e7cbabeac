# Sparse Cocktail, the paper's dense-pivot recipe: one network per iteration, D, U, D, C, D,
# NM, ... (the dense network every other iteration, the patterns in turn), each sparse step
# on the current stage's ratio. Far behind the recommended recipe (./cocktail.py) at the
# budgets measured (docs/results.md); kept to reproduce the paper and as a baseline.
# Used like ./cocktail.py:
#   custom_hooks = [*_base_.get('custom_hooks', []), *_base_.sparse_hooks]
#   val_cfg = _base_.cocktail_val_cfg
sparse_subnets = dict(type='mmsparse.SparseSubnetsHook', subnets='cocktail')
sparse_cocktail = dict(type='mmsparse.SparseCocktailHook', ratio_mode='current',
                       stage_end=0.8)
rng_state = dict(type='mmsparse.RNGStateHook')  # --resume continues exactly
sparse_hooks = [sparse_subnets, sparse_cocktail, rng_state]
cocktail_val_cfg = dict(type='mmsparse.SubnetValLoop',
                        subnets='dense,unstructured@0.49,channel@0.27,nm@2:4')
