# Sparse Cocktail fine-tuning: the recommended recipe (./cocktail.py: same hooks, subnets and
# options) started from a trained dense detector (`load_from`) with a short budget of K
# iterations instead of training from scratch.
#
# What changes, and why:
# - First masks: SparseSubnetsHook generates them in `before_train`, which mmengine runs
#   after `load_or_resume`, so they are one-shot UMG of the LOADED weights (a checkpoint
#   already holding masks for the same subnets keeps its own). Nothing to set here.
# - Ratio stages: every option of the stage schedule is a fraction of the run's iterations
#   (stage s starts at the polynomial point of `stage_end * max_iters`), so the 10 stages and
#   the mask regenerations at their boundaries shrink with K by themselves. `stage_end` goes
#   from 0.8 to 0.5: the weights are trained already, so every ratio is unlocked by 0.5K and
#   the last half of the budget (both learning-rate decays included) trains all 24 subnets.
# - Learning rate (set by the config, it depends on K; configs/finetune/*): 50 iterations of
#   linear warm-up (the new masks and the joint batch split perturb a trained network; a
#   full-rate first step would undo part of it), half the from-scratch rate, x0.1 at 0.75K
#   and 0.9K. One choice, not tuned (no tuning runs were available).
#
# - The start is required: RequireLoadFromHook stops a training run that has no `load_from`
#   (it would train the random init) before anything trains, naming the option to set.
#
# Use as ./cocktail.py (the config sets custom_hooks and val_cfg). On top of your own
# MMDetection config, keep its hooks:
#   _base_ = [<your config>, '../_base_/sparsity/cocktail_finetune.py']
#   custom_hooks = [*_base_.get('custom_hooks', []), *_base_.sparse_hooks]
#   val_cfg = _base_.cocktail_val_cfg
# On top of configs/finetune/*dense-finetune* (its hooks, RNGStateHook and
# RequireLoadFromHook, are already in sparse_hooks): custom_hooks = _base_.sparse_hooks
# Options by name as in ./cocktail.py, e.g. --cfg-options sparse_cocktail.stage_end=0.8
_base_ = ['./cocktail.py']
sparse_cocktail = dict(_base_.sparse_cocktail, stage_end=0.5)
sparse_hooks = [_base_.sparse_subnets, sparse_cocktail, _base_.rng_state,
                _base_.subnet_bn_stats, dict(type='mmsparse.RequireLoadFromHook')]
