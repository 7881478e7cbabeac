# AST on COCO instance segmentation with N:M subnets 2:4, 1:4 and 1:8 on MMDetection's
# Mask R-CNN R-50 FPN 1x: iteration t trains subnet t mod 3, switchable BatchNorm,
# gradient correction in groups of 3.
_base_ = ['mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py', '../_base_/sparsity/ast.py']
ast_subnets = ['nm@2:4', 'nm@1:4', 'nm@1:8']
custom_hooks = [
    dict(type='mmsparse.SparseSubnetsHook', subnets=ast_subnets),
    # 1x schedule: ~88k iterations; masks updated every 300 iterations (a multiple of 3).
    dict(type='mmsparse.SparseASTHook', subnets=ast_subnets, switchable_bn=True,
         update_interval=300, prune_start=0.0, prune_end=0.5, regrow_end=0.8),
    dict(type='mmsparse.RNGStateHook'),
]
optim_wrapper = dict(type='mmsparse.SparseOptimWrapper',
                     gradient_correction=dict(group_size=len(ast_subnets)))
val_cfg = dict(type='mmsparse.SubnetValLoop', subnets=','.join(ast_subnets))
