# Sparse Cocktail fine-tuning (../_base_/sparsity/cocktail_finetune.py) on COCO, starting
# from MMDetection's trained Mask R-CNN R-50 FPN 1x (model zoo, legacy torch format; mmdet's
# configs/mask_rcnn/metafile.yml lists this URL). mmengine downloads it once into torch's hub
# cache. The model, data and backbone set-up (norm_eval=True, frozen_stages=1) are mmdet's.
#
# Budget: K = 14660 iterations at batch 16 (8 GPUs x 2) = 2 epochs of the 117266 training
# images = 1/6 of the 1x schedule (87960 iterations). Learning rate 0.01 (half of 1x's 0.02)
# after 50 iterations of linear warm-up, x0.1 at 0.75K and 0.9K (one choice, not tuned).
#   bash tools/dist_train.sh configs/finetune/mask-rcnn_r50_fpn_cocktail-finetune_1x_coco.py 8
# Another budget, e.g. K=29320 (1/3 of 1x):
#   --cfg-options train_cfg.max_iters=29320 train_cfg.val_interval=29320 \
#       param_scheduler.1.end=29320 param_scheduler.1.milestones=[21990,26388] \
#       default_hooks.checkpoint.interval=29320
_base_ = ['mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py',
          '../_base_/sparsity/cocktail_finetune.py']
load_from = 'https://download.openmmlab.com/mmdetection/v2.0/mask_rcnn/mask_rcnn_r50_fpn_1x_coco/mask_rcnn_r50_fpn_1x_coco_20200205-d4b0c5d6.pth'  # noqa: E501
finetune_iters = 14660
# load_from replaces every weight: no ImageNet download for the backbone's init.
model = dict(backbone=dict(init_cfg=None))
train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters=finetune_iters,
                 val_interval=finetune_iters)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=50),
    dict(type='MultiStepLR', by_epoch=False, begin=0, end=finetune_iters,
         milestones=[int(finetune_iters * 0.75), int(finetune_iters * 0.9)], gamma=0.1),
]
optim_wrapper = dict(optimizer=dict(lr=0.01))
default_hooks = dict(checkpoint=dict(by_epoch=False, interval=finetune_iters))
log_processor = dict(by_epoch=False)
custom_hooks = [*_base_.get('custom_hooks', []), *_base_.sparse_hooks]
val_cfg = _base_.cocktail_val_cfg
