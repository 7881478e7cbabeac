# Dedicated sparse fine-tuning of a trained shapes Mask R-CNN for unstructured@0.5 (NVIDIA ASP's
# recipe): the mask is computed ONCE from the loaded weights (UMG, before the first
# iteration) and stays fixed while the subnet trains every iteration for K=600 iterations.
# Schedule, frozen set-up, K=1200 and the required load_from:
# ./mask-rcnn_r18_fpn_dense-finetune_600it_shapes.py.
#   python tools/train.py \
#       configs/finetune/mask-rcnn_r18_fpn_dedicated-unstructured-0.50-finetune_600it_shapes.py \
#       --cfg-options load_from=work_dirs/dense/iter_600.pth
_base_ = ['./mask-rcnn_r18_fpn_dense-finetune_600it_shapes.py']
custom_hooks = [
    dict(type='mmsparse.SparseSubnetsHook', subnets=['unstructured@0.5']),
    # One subnet, one stage: every iteration trains it; no stage boundary, so the mask is
    # never regenerated (regenerate_masks=False says so explicitly).
    dict(type='mmsparse.SparseCocktailHook', dense_pivot=False, ratio_mode='current',
         num_stages=1, regenerate_masks=False),
    dict(type='mmsparse.RNGStateHook'),
    dict(type='mmsparse.RequireLoadFromHook'),  # load_from is required
]
val_cfg = dict(type='mmsparse.SubnetValLoop', subnets='unstructured@0.5')
