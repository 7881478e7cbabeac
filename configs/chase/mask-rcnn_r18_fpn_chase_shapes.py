# Chase on the CPU-sized shapes Mask R-CNN: 50% unstructured sparsity (global budget) and 30%
# of the removable channels removed, same 600-iteration schedule as the other shapes runs.
_base_ = ['../shapes/mask-rcnn_r18_fpn_shapes.py', '../_base_/sparsity/chase.py']
# 600 iterations: an update every 50 until 450 (9 updates; the LR warm-up ends at 100), then
# 150 iterations of fine-tuning with fixed masks through both LR drops (450, 540).
custom_hooks = [
    dict(type='mmsparse.SparseSubnetsHook', subnets=['unstructured@0.50', 'channel@0.30']),
    dict(type='mmsparse.ChaseHook', sparsity=0.5, channel_sparsity=0.3, update_interval=50,
         update_end=0.75, extra_density=0.1, drop_fraction=0.3, beta=0.5),
    dict(type='mmsparse.RNGStateHook'),
]
val_cfg = {{_base_.chase_val_cfg}}
