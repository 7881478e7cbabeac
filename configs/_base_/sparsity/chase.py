# Chase: unstructured dynamic sparse training at a global parameter budget that removes
# whole channels on the way (channel-aware DST). Add to any MMDetection config's _base_
# list. The stem and the prediction layers stay dense (found automatically). The trained
# checkpoint holds two subnets: unstructured@<sparsity> (the DST mask, zero on removed
# channels) and channel@<channel_sparsity> (the removed channels); export the physically
# slimmed model with tools/export_subnet.py --subnet channel@0.30 --also unstructured@0.50.
# (mmengine forbids a key in two bases, so val_cfg is set by the configs that inherit this.)
chase_sparsity = 0.5
chase_channel_sparsity = 0.3
custom_hooks = [
    dict(type='mmsparse.SparseSubnetsHook',
         subnets=[f'unstructured@{chase_sparsity:.2f}',
                  f'channel@{chase_channel_sparsity:.2f}']),
    dict(type='mmsparse.ChaseHook', sparsity=chase_sparsity,
         channel_sparsity=chase_channel_sparsity,
         update_interval=100,   # Delta T; set per schedule (a handful of updates at least)
         update_end=0.8,        # masks fixed for the last 20% of training
         extra_density=0.1,     # temporary extra density, decays cubically to the budget
         drop_fraction=0.3,     # RigL's prune/regrow fraction, cosine-decaying
         beta=0.5,              # per-layer channel floor: ceil(beta * (1 - S_c) * C)
         prune_scope='global'),  # one magnitude/gradient ranking over all layers ('layer':
                                 # RigL's per-layer drop and regrow)
    dict(type='mmsparse.RNGStateHook'),  # --resume continues exactly
]
chase_val_cfg = dict(type='mmsparse.SubnetValLoop',
                     subnets=f'unstructured@{chase_sparsity:.2f},'
                     f'channel@{chase_channel_sparsity:.2f}')
