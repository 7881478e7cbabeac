# Sparse Cocktail, the recommended recipe (../_base_/sparsity/cocktail.py), on COCO:
# MMDetection's RTMDet-Ins tiny (one-stage, anchor-free, depthwise convolutions). Its base
# brings custom_hooks (EMAHook, PipelineSwitchHook): the cocktail's hooks are appended, and
# validation and checkpoints use the EMA weights with the live masks (docs/training.md).
_base_ = ['mmdet::rtmdet/rtmdet-ins_tiny_8xb32-300e_coco.py', '../_base_/sparsity/cocktail.py']
custom_hooks = [*_base_.get('custom_hooks', []), *_base_.sparse_hooks]
val_cfg = _base_.cocktail_val_cfg
