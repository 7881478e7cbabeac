# Dense fine-tuning of a trained shapes Mask R-CNN (plain continued training), the schedule
# every shapes fine-tune config shares (their base): K=600 iterations, MMDetection's COCO
# backbone set-up (norm_eval=True: BatchNorm statistics frozen; frozen_stages=1: stem and
# layer1 frozen), learning rate 0.01 (half the from-scratch 0.02) after 50 iterations of
# linear warm-up, x0.1 at 0.75K and 0.9K (one choice, not tuned).
#
# The start is required: load_from=<checkpoint>. Without it RequireLoadFromHook stops the run
# before anything trains (the random init would be trained); every fine-tune config has it:
#   python tools/train.py configs/finetune/mask-rcnn_r18_fpn_dense-finetune_600it_shapes.py \
#       --cfg-options load_from=work_dirs/dense/iter_600.pth
# Budget K=1200 instead of 600 (the milestones are 0.75K and 0.9K):
#   --cfg-options train_cfg.max_iters=1200 train_cfg.val_interval=1200 \
#       param_scheduler.1.end=1200 param_scheduler.1.milestones=[900,1080] \
#       default_hooks.checkpoint.interval=1200
_base_ = ['../shapes/mask-rcnn_r18_fpn_shapes.py']
load_from = None
finetune_iters = 600
model = dict(backbone=dict(norm_eval=True, frozen_stages=1))
train_cfg = dict(type='IterBasedTrainLoop', max_iters=finetune_iters,
                 val_interval=finetune_iters)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=50),
    dict(type='MultiStepLR', by_epoch=False, begin=0, end=finetune_iters,
         milestones=[int(finetune_iters * 0.75), int(finetune_iters * 0.9)], gamma=0.1),
]
optim_wrapper = dict(optimizer=dict(lr=0.01))
default_hooks = dict(checkpoint=dict(interval=finetune_iters))
custom_hooks = [dict(type='mmsparse.RNGStateHook'), dict(type='mmsparse.RequireLoadFromHook')]
