"""Training stability: stop at the first non-finite loss, clip what the joint step needs.

A NaN or infinite loss has already reached the weights through its backward by the time a
hook sees it, and every later iteration then trains on NaN. MMDetection's
``CheckInvalidLossHook`` only looks every ``interval`` iterations, with an ``assert`` that
``python -O`` skips and whose message is None. :func:`check_finite_loss` runs after every
iteration, raises a :class:`FloatingPointError` that names the iteration, the subnet and the
non-finite loss terms, and says what to change. Raised from a hook of higher priority than
``CheckpointHook`` (VERY_LOW), it stops the run before the broken weights are saved.

:func:`prepare_joint_step` rejects a batch size of 1 for split batches and gives the
optimizer gradient clipping when the config has none (:func:`clip_unclipped`): the joint
step (:class:`mmsparse.models.joint_dense.JointDenseLoss`) sums the sparse pass's and the
weighted dense pass's losses, a step about three times plain training's at weight 2.0, and
was measured with clipping at 35; without any it diverged (docs/training.md, "Stability").
"""
import math

import torch

from mmsparse.models import attached_network
from .network import unwrap

ADVICE = ('lower the learning rate (optim_wrapper.optimizer.lr), lengthen the warm-up '
          '(the LinearLR entry of param_scheduler) or {clip}, then start the run again')


def _number(value):
    """``value`` as a float, or None for what is not one number (e.g. a per-class list)."""
    if isinstance(value, torch.Tensor):
        return float(value.detach()) if value.numel() == 1 else None
    return float(value) if isinstance(value, (int, float)) else None


def non_finite_losses(log_vars):
    """``{key: value}`` of the loss terms (keys holding ``'loss'``) that are NaN or infinite."""
    numbers = {key: _number(value) for key, value in (log_vars or {}).items() if 'loss' in key}
    return {key: v for key, v in numbers.items() if v is not None and not math.isfinite(v)}


def _trained(runner, log_vars):
    """The networks the iteration trained, in words ('' without a SparseNetwork)."""
    network = attached_network(unwrap(runner.model))
    if network is None:
        return ''
    joint = any(key.startswith('dense.') for key in log_vars)
    return f' (subnet {network.active.name}' + (' and the dense network, joint step)'
                                                 if joint else ')')


def check_finite_loss(runner, log_vars):
    """Raise a FloatingPointError when the iteration's loss is NaN or infinite.

    Args:
        runner: The mmengine Runner, inside ``after_train_iter`` (``runner.iter`` is the
            index of the iteration that just ran, as mmsparse's log lines count).
        log_vars: The iteration's ``outputs`` (``train_step``'s log variables).
    """
    total = _number(log_vars['loss']) if log_vars and 'loss' in log_vars else None
    if total is not None and math.isfinite(total):
        return  # one number to read on the usual path: the total sums every loss term
    bad = non_finite_losses(log_vars)
    if not bad:
        return
    if len(bad) > 1:
        bad.pop('loss', None)  # the total: the terms say more
    terms = ', '.join(f'{key}={value}' for key, value in bad.items())
    clip = getattr(runner.optim_wrapper, 'clip_grad_kwargs', None)
    advice = ADVICE.format(clip='clip gradients harder (a lower max_norm)' if clip else
                           'clip gradients (optim_wrapper.clip_grad=dict(max_norm=35, '
                           'norm_type=2))')
    raise FloatingPointError(
        f'non-finite loss in iteration {runner.iter} (log: Iter(train) [{runner.iter + 1}/'
        f'{runner.max_iters}]){_trained(runner, log_vars)}: {terms}; gradient clipping: '
        f'{clip or "none"}. The weights are no longer usable, so training stops here; the '
        f'checkpoints saved before this iteration are intact. To fix it: {advice}.')


def train_batch_size(runner):
    """Images per training batch and process (None when the runner has no such loader)."""
    loader = getattr(runner, 'train_dataloader', None)
    size = getattr(loader, 'batch_size', None)
    return size if size is not None else getattr(getattr(loader, 'batch_sampler', None),
                                                 'batch_size', None)


def prepare_joint_step(runner, joint):
    """Before training with :class:`~mmsparse.models.joint_dense.JointDenseLoss` ``joint``:
    fail on a batch size its split can never serve, clip gradients if the config does not."""
    joint.check_batch_size(train_batch_size(runner))
    clip_unclipped(runner, joint.clip_grad, 'the joint dense step is on (its step is about '
                   f'{1 + joint.weight:g}x plain training\'s)')


def clip_unclipped(runner, clip_grad, why):
    """Clip gradients by norm with ``clip_grad`` (e.g. ``dict(max_norm=35, norm_type=2)``)
    in every optimizer wrapper that clips nothing; log it, naming ``why``.

    A config's own ``clip_grad`` is left alone, so a measured recipe keeps its numerics.
    Returns whether any wrapper changed.
    """
    if not clip_grad:
        return False
    wrapper = runner.optim_wrapper
    wrappers = (wrapper.optim_wrappers.values() if hasattr(wrapper, 'optim_wrappers')
                else [wrapper])
    changed = [w for w in wrappers if not getattr(w, 'clip_grad_kwargs', None)]
    for w in changed:
        # what OptimWrapper.__init__ sets for clip_grad=dict(type='norm', ...)
        w.clip_func, w.grad_name = torch.nn.utils.clip_grad_norm_, 'grad_norm'
        w.clip_grad_kwargs = dict(clip_grad)
    if changed:
        runner.logger.info(f'mmsparse: {why}, and the config clips no gradients: clipping '
                           f'them with {dict(clip_grad)} (a config\'s own '
                           'optim_wrapper.clip_grad is left alone)')
    return bool(changed)
