# Ablation of mask-rcnn_r18_fpn_ast-unstructured_shapes.py: one BatchNorm shared by both
# subnets (switchable_bn=False); everything else identical (alternation, schedule, regrowth,
# gradient correction on the masked weights). Evaluate it with --recalibrate-bn too: shared
# running statistics mix the two subnets' activations.
_base_ = ['./mask-rcnn_r18_fpn_ast-unstructured_shapes.py']
custom_hooks = [
    dict(type='mmsparse.SparseSubnetsHook', subnets={{_base_.ast_subnets}}),
    dict(type='mmsparse.SparseASTHook', subnets={{_base_.ast_subnets}}, switchable_bn=False,
         update_interval=50, prune_start=0.0, prune_end=0.5, regrow_end=0.8,
         regrow_initial=0.1),
    dict(type='mmsparse.RNGStateHook'),
]
