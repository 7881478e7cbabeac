# Spartan (soft top-k masks + dual averaging) at 80% global unstructured sparsity. Add to any
# MMDetection config's _base_ list. SparseSubnetsHook selects the layers (the stem and the
# prediction layers stay dense) and holds the subnet the learned mask is stored as, so the
# checkpoint's `unstructured@0.80` is evaluated and exported like any other subnet.
# Schedules (fractions of max_iters): density 1 -> 0.2 by 20%, beta 1 -> 20 by 80%, then the
# mask freezes and the subnet is fine-tuned. Change the sparsity in both hooks together.
spartan_sparsity = 0.8
custom_hooks = [
    dict(type='mmsparse.SparseSubnetsHook', subnets=[f'unstructured@{spartan_sparsity}']),
    dict(type='mmsparse.SpartanHook', sparsity=spartan_sparsity, allocation='global',
         cost='params', anneal_end=0.2, beta_start=1.0, beta_end=None, freeze_at=0.8),
    dict(type='mmsparse.RNGStateHook'),
]
# Straight-through updates need dense gradients: mmengine's plain OptimWrapper (or
# mmsparse's SparseOptimWrapper, which never masks gradients or momentum).
spartan_val_cfg = dict(type='mmsparse.SubnetValLoop', subnets=f'unstructured@{spartan_sparsity}')
