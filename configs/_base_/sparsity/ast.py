# AST (Alternating Sparse Training): K subnets of one pattern share the weights; iteration t
# trains subnet t mod K, with switchable BatchNorm and gradual pruning then prune-and-regrow.
# Add to any MMDetection config's _base_ list. The default subnets are the paper's densities
# 0.5 and 0.05. A config that inherits this must set (mmengine forbids a key in two bases):
#   optim_wrapper = dict(type='mmsparse.SparseOptimWrapper',
#                        gradient_correction=dict(group_size=<number of subnets>))
#   val_cfg = {{_base_.ast_val_cfg}}
# To change the subnets, redefine custom_hooks (see configs/ast/*.py).
ast_subnets = ['unstructured@0.50', 'unstructured@0.95']
custom_hooks = [
    dict(type='mmsparse.SparseSubnetsHook', subnets=ast_subnets),
    dict(type='mmsparse.SparseASTHook', subnets=ast_subnets, switchable_bn=True,
         update_interval=100, prune_start=0.0, prune_end=0.5, regrow_end=0.8),
    dict(type='mmsparse.RNGStateHook'),  # --resume continues exactly
]
ast_val_cfg = dict(type='mmsparse.SubnetValLoop', subnets=','.join(ast_subnets))
