# Sparse Cocktail, the recommended recipe: co-train dense + 10 unstructured + 10 channel + 3
# N:M subnets in one run, at about the cost of plain training. Each iteration splits the
# batch: one sparse subnet trains on the first half, the dense network on the second (one
# backward, one step; the dense losses weigh 2.0); sparse passes are straight-through;
# ratios are sampled among those unlocked so far; N:M comes twice in the sparse cycle; every
# subnet's BatchNorm statistics are stored after the last iteration. Measured on shapes:
# docs/results.md. The paper's dense-pivot recipe is ./cocktail_paper.py.
#
# Use (mmengine forbids a key in two bases, so the fragment defines no custom_hooks or
# val_cfg; the config that inherits it sets them, whatever hooks its other bases bring):
#   _base_ = ['mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py',
#             '../_base_/sparsity/cocktail.py']
#   custom_hooks = [*_base_.get('custom_hooks', []), *_base_.sparse_hooks]
#   val_cfg = _base_.cocktail_val_cfg
# Options are set by name (docs/training.md, "Changing an option"): in a config, e.g.
#   sparse_cocktail = dict(_base_.sparse_cocktail, ratio_mode='current')
#   custom_hooks = [_base_.sparse_subnets, sparse_cocktail, _base_.rng_state,
#                   _base_.subnet_bn_stats]
# or on the command line of tools/train.py / tools/test.py:
#   --cfg-options sparse_cocktail.ratio_mode=current
# The stem and the prediction layers stay dense (found automatically); pass include/exclude
# globs to SparseSubnetsHook to change that.
sparse_subnets = dict(type='mmsparse.SparseSubnetsHook', subnets='cocktail')
sparse_cocktail = dict(
    type='mmsparse.SparseCocktailHook',
    joint_dense=dict(split_batch=True, weight=2.0),  # sparse + dense pass every iteration
    straight_through=True,    # a sparse pass's gradient also reaches the removed weights
    ratio_mode='unlocked',    # sample among all ratios unlocked so far
    patterns=('unstructured', 'channel', 'nm', 'nm'),  # N:M twice in the sparse cycle
    stage_end=0.8)            # every ratio unlocked by 80% of training
rng_state = dict(type='mmsparse.RNGStateHook')  # --resume continues exactly
# Each subnet's own BatchNorm statistics, estimated after the last iteration (24 subnets x
# `batches` training batches) and stored in the final checkpoint.
subnet_bn_stats = dict(type='mmsparse.SubnetBNStatsHook', batches=20)
sparse_hooks = [sparse_subnets, sparse_cocktail, rng_state, subnet_bn_stats]
# Validation during training tracks dense and one subnet per pattern.
cocktail_val_cfg = dict(type='mmsparse.SubnetValLoop',
                        subnets='dense,unstructured@0.49,channel@0.27,nm@2:4')
