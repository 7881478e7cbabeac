# AST on the CPU-sized shapes Mask R-CNN: unstructured 50% and 80% (the sparsities of the
# dedicated baselines in configs/dedicated/) alternate on one set of weights for 600
# iterations, with switchable BatchNorm and AST's gradient correction.
_base_ = ['../shapes/mask-rcnn_r18_fpn_shapes.py', '../_base_/sparsity/ast.py']
ast_subnets = ['unstructured@0.50', 'unstructured@0.80']
custom_hooks = [
    dict(type='mmsparse.SparseSubnetsHook', subnets=ast_subnets),
    dict(type='mmsparse.SparseASTHook', subnets=ast_subnets, switchable_bn=True,
         update_interval=50, prune_start=0.0, prune_end=0.5, regrow_end=0.8,
         regrow_initial=0.1),  # 0.5 (the paper's CIFAR rate) every 20 its. was destructive
    dict(type='mmsparse.RNGStateHook'),
]
optim_wrapper = dict(type='mmsparse.SparseOptimWrapper',
                     gradient_correction=dict(group_size=len(ast_subnets)))
val_cfg = dict(type='mmsparse.SubnetValLoop', subnets=','.join(ast_subnets))
