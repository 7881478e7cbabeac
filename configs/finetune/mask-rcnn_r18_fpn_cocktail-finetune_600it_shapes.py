# Sparse Cocktail fine-tuning (../_base_/sparsity/cocktail_finetune.py) of a trained shapes
# Mask R-CNN: the 24 subnets co-trained for K=600 iterations from the checkpoint's weights,
# their first masks one-shot UMG of those weights. Schedule and frozen backbone set-up:
# ./mask-rcnn_r18_fpn_dense-finetune_600it_shapes.py.
#
# The start is required: load_from=<checkpoint> (without it RequireLoadFromHook, in the
# fragment's hooks, stops the run before anything trains):
#   python tools/train.py configs/finetune/mask-rcnn_r18_fpn_cocktail-finetune_600it_shapes.py \
#       --cfg-options load_from=work_dirs/dense/iter_600.pth randomness.seed=0
# Budget K=1200 instead of 600 (stages scale by themselves; the milestones are 0.75K, 0.9K):
#   --cfg-options train_cfg.max_iters=1200 train_cfg.val_interval=1200 \
#       param_scheduler.1.end=1200 param_scheduler.1.milestones=[900,1080] \
#       default_hooks.checkpoint.interval=1200
# The stem and layer1 are frozen (frozen_stages=1) and therefore stay dense in every subnet.
_base_ = ['./mask-rcnn_r18_fpn_dense-finetune_600it_shapes.py',
          '../_base_/sparsity/cocktail_finetune.py']
custom_hooks = _base_.sparse_hooks
val_cfg = _base_.cocktail_val_cfg
