# The split, straight-through, unlocked cocktail (the closest variant to the single runs,
# docs/results.md) with N:M twice in the sparse cycle (U, C, NM, NM, ...): N:M gets half of
# the sparse passes instead of a third, unstructured and channel a quarter each. At 3600
# iterations (one seed) it raised nm@2:4 by 2.4 / 2.5 mAP at no cost to the others
# (docs/results.md, "BatchNorm recalibration and N:M's share of the sparse passes").
_base_ = ['./mask-rcnn_r18_fpn_cocktail-joint-split-ste-unlocked_shapes.py']
custom_hooks = _base_.custom_hooks  # [1] is the SparseCocktailHook; one option changes
custom_hooks[1].update(patterns=('unstructured', 'channel', 'nm', 'nm'))
# Every subnet shares the BatchNorm statistics training leaves, which fit none of them well
# (recalibrating gains up to 2.2 mAP here): store each subnet's own after the last
# iteration, so the last checkpoint, the final validation, tools/test.py and export use them
# without --recalibrate-bn (24 subnets x 20 batches, about 5 min on one core).
custom_hooks.append(dict(type='mmsparse.SubnetBNStatsHook', batches=20))
