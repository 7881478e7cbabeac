"""Chase: channel-level sparsity from unstructured dynamic sparse training (DST).

One unstructured mask at a global parameter budget is trained RigL-style, and channels that
DST leaves sparse are removed on the way:

* start: ERK allocation (:func:`~.allocation.erk_densities`) at the budget's density plus a
  temporary *extra* density, magnitude top-k per layer;
* every ``update_interval`` iterations (until ``update_end`` of training):
  1. channel removal: the target channel sparsity rises on a cubic schedule from 0 to
     ``channel_sparsity`` at the last update; the globally lowest-UMM channels among the
     removable layers are removed until the target is met, never leaving a layer fewer than
     ``ceil(beta (1 - S_c) C)`` channels. Removed channels stay removed;
  2. prune and grow: drop the ``drop_fraction`` (cosine-decaying) smallest-magnitude kept
     weights globally, plus the surplus when the extra density shrinks, then grow as many
     weights with the largest dense-gradient magnitude as the current density allows
     (``prune_scope='layer'``: each layer on its own, RigL-style). Grown weights (and their
     momentum) start at zero;
* after every optimizer step (:func:`apply_chase_masks`): weights and optimizer state are
  multiplied by the mask; removed channels' bias and their BatchNorms' weight and bias are
  zeroed, so a removed channel outputs exactly 0 and physical slimming is exact.

The budget is global over every masked weight: weights of removed channels (and the
consumers' weights that read them) count as pruned, and DST regrows the budget elsewhere.

Masks live in the layers' standard buffers: the DST mask is the single-ratio unstructured
subnet ``unstructured@<S>`` (level 1 = kept) and the removed channels the channel subnet
``channel@<S_c>``, so evaluation, statistics and export need nothing Chase-specific. While
the extra density is non-zero, ``unstructured@<S>`` holds more than the fraction its name
says; from the last update on it holds exactly the budget.
"""
import math
from dataclasses import dataclass

import torch
from torch import nn

from ..attach import channel_companions, channel_keep
from .allocation import erk_densities
from .dst import prune_and_grow
from ..patterns import SparsitySpecError, channel_scores_umm, check_ratio, topk_mask
from .schedules import polynomial_progress
from ..subnets import SubnetSpec


def check_chase_options(sparsity, channel_sparsity, update_interval=100, update_end=0.8,
                        extra_density=0.1, drop_fraction=0.3, beta=0.5, erk_power=1.0,
                        prune_scope='global'):
    """Raise a ValueError naming the first impossible :class:`ChaseSchedule` option (those
    that do not depend on the training length)."""
    check_ratio(sparsity, 'Chase sparsity')
    check_ratio(channel_sparsity, 'Chase channel_sparsity')
    if (isinstance(update_interval, bool) or not isinstance(update_interval, (int, float))
            or update_interval != int(update_interval) or update_interval < 1):
        raise ValueError(f'update_interval must be an integer >= 1, got {update_interval!r}')
    if not 0.0 < update_end <= 1.0:
        raise ValueError(f'update_end must be in (0, 1] (a fraction of training), got '
                         f'{update_end}')
    if not 0.0 <= extra_density <= sparsity:
        raise ValueError(f'extra_density must be in [0, sparsity={sparsity}], got '
                         f'{extra_density}')
    if not 0.0 <= drop_fraction < 1.0:
        raise ValueError(f'drop_fraction must be in [0, 1), got {drop_fraction}')
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f'beta must be in [0, 1], got {beta}')
    if not erk_power >= 0:
        raise ValueError(f'erk_power must be >= 0, got {erk_power}')
    if prune_scope not in ('global', 'layer'):
        raise ValueError(f"prune_scope must be 'global' or 'layer', got {prune_scope!r}")


@dataclass(frozen=True)
class ChaseSchedule:
    """Every Chase quantity as a function of the number of completed iterations.

    Attributes:
        sparsity: Final unstructured sparsity S (fraction of masked weights removed).
        channel_sparsity: Final fraction S_c of removable channels removed (0: none).
        max_iters: Length of training.
        update_interval: Iterations between mask updates (Delta T).
        update_end: Fraction of training after which masks stay fixed (the last update is
            the last multiple of ``update_interval`` not after it).
        extra_density: Density added at the start; decays cubically to 0 at the last update.
        drop_fraction: Fraction of kept weights pruned (and regrown) at the first update,
            cosine-decaying to 0 at the last update (RigL).
        beta: Per-layer channel floor factor: a layer keeps >= ceil(beta (1 - S_c) C).
        erk_power: ERK exponent for the initial allocation.
        prune_scope: ``'global'`` (Chase) or ``'layer'`` (RigL); see :func:`prune_and_grow`.
    """
    sparsity: float
    channel_sparsity: float
    max_iters: int
    update_interval: int = 100
    update_end: float = 0.8
    extra_density: float = 0.1
    drop_fraction: float = 0.3
    beta: float = 0.5
    erk_power: float = 1.0
    prune_scope: str = 'global'

    def __post_init__(self):
        check_chase_options(self.sparsity, self.channel_sparsity, self.update_interval,
                            self.update_end, self.extra_density, self.drop_fraction, self.beta,
                            self.erk_power, self.prune_scope)
        if self.last_update < self.update_interval:
            raise ValueError(
                f'no mask update fits: update_interval={self.update_interval} > update_end '
                f'({self.update_end}) x max_iters ({self.max_iters})')

    @property
    def last_update(self):
        """The completed-iteration count of the last mask update."""
        end = int(self.update_end * self.max_iters)
        return end - end % self.update_interval

    def is_update(self, completed):
        """True when masks are updated after ``completed`` iterations."""
        return (0 < completed <= self.last_update and completed % self.update_interval == 0)

    def density_at(self, completed):
        """Unstructured density: the budget plus the cubically decaying extra density."""
        remaining = 1.0 - polynomial_progress(completed, self.last_update, 0.0, 1.0, power=1)
        return (1.0 - self.sparsity) + self.extra_density * remaining ** 3

    def drop_fraction_at(self, completed):
        """RigL's cosine-decaying drop (= regrow) fraction."""
        x = min(1.0, completed / self.last_update)
        return self.drop_fraction * 0.5 * (1.0 + math.cos(math.pi * x))

    def channel_sparsity_at(self, completed):
        """Cubic removal target: 0 at the start, ``channel_sparsity`` at the last update."""
        return self.channel_sparsity * polynomial_progress(completed, self.last_update, 0.0,
                                                           1.0, power=3)

    def floor(self, channels):
        """Fewest channels a layer of ``channels`` output channels may keep (>= 1)."""
        return channel_floor(channels, self.beta, self.channel_sparsity)

    @property
    def unstructured(self):
        return SubnetSpec('unstructured', self.sparsity)

    @property
    def channel(self):
        return SubnetSpec('channel', self.channel_sparsity)


# -- pure mask functions -------------------------------------------------------------------
def channel_floor(channels, beta, channel_sparsity):
    """Chase's per-layer floor: a layer of ``channels`` output channels keeps at least
    ``ceil(beta (1 - channel_sparsity) channels)`` of them (and at least one)."""
    return max(1, math.ceil(beta * (1.0 - channel_sparsity) * channels - 1e-9))


def select_channels(scores, keep, removed_total, floors):
    """Remove the globally lowest-scoring channels until ``removed_total`` are removed.

    Args:
        scores: ``{layer: (C,) scores}`` (e.g. UMM); lower is removed first, ties by layer
            order then channel index.
        keep: ``{layer: bool (C,)}`` currently kept channels (removed ones stay removed).
        removed_total: How many channels should be removed in all.
        floors: ``{layer: int}`` fewest channels each layer keeps.

    Returns:
        New ``{layer: bool (C,)}``; fewer than asked are removed only when the floors bind.
    """
    new = {name: k.clone() for name, k in keep.items()}
    need = removed_total - sum(int((~k).sum()) for k in keep.values())
    if need <= 0:
        return new
    names = list(keep)
    # On the CPU: the loop below reads single elements (one device sync each on a GPU).
    flat = torch.cat([torch.where(keep[n], scores[n].float(), torch.full_like(
        scores[n].float(), float('inf'))).cpu() for n in names])
    owner = torch.cat([torch.full((keep[n].numel(), ), i) for i, n in enumerate(names)])
    index = torch.cat([torch.arange(keep[n].numel()) for n in names])
    room = {n: int(keep[n].sum()) - floors[n] for n in names}
    for pos in torch.argsort(flat, stable=True).tolist():
        if need == 0 or flat[pos] == float('inf'):
            break
        name = names[int(owner[pos])]
        if room[name] > 0:
            new[name][int(index[pos])] = False
            room[name] -= 1
            need -= 1
    return new


# -- a SparseNetwork's Chase masks ----------------------------------------------------------
def weight_masks(network, spec):
    """``{layer: bool}`` of the unstructured subnet ``spec`` (all True when not held)."""
    out = {}
    for name, layer in network.layers.items():
        mask = layer.mask_for(spec)
        out[name] = (torch.ones_like(layer.dense_weight, dtype=torch.bool)
                     if mask is None else mask.clone())
    return out


def check_uncoupled(network, who):
    """Chase ranks and floors channels layer by layer: refuse channel groups, naming one."""
    group = next((g for g in network.channel_layer_groups() if len(g) > 1), None)
    if group is not None:
        raise SparsitySpecError(
            f'{who} removes channels layer by layer, but the network couples {len(group)} '
            f'layers into one channel group ({group[0]}, ...): set '
            'SparseSubnetsHook(channel_groups=False)')


def umm_scores(network, masks):
    """Chase's UMM per output channel of every removable layer: ``sum |w * m|`` over the
    channel divided by the channel's number of weights (pruned weights count as zero)."""
    out = {}
    for name in network.channel_layers:
        layer = network.layers[name]
        weight = layer.dense_weight.detach()
        out[name] = channel_scores_umm(weight, masks[name].to(weight.dtype), layer.out_axis)
    return out


def allowed_masks(network, keeps):
    """Weights that may be non-zero: not on a removed output channel, not reading one."""
    producers = network.channel_producers()
    out = {}
    for name, layer in network.layers.items():
        weight = layer.dense_weight
        allowed = torch.ones_like(weight, dtype=torch.bool)
        for keep, axis in ((keeps.get(name), layer.out_axis),
                           (keeps.get(producers.get(name)), layer.in_axis)):
            if keep is not None:
                shape = [1] * weight.dim()
                shape[axis] = -1
                allowed &= keep.view(shape)
        out[name] = allowed
    return out


def write_masks(network, schedule, masks, keeps):
    """Store the DST masks as ``unstructured@S`` and the channels as ``channel@S_c``."""
    for name, layer in network.layers.items():
        channel = None
        if name in keeps and schedule.channel_sparsity > 0:
            channel = ([schedule.channel_sparsity], keeps[name][None])
        layer.set_masks(unstructured=([schedule.sparsity], masks[name].to(torch.uint8)),
                        channel=channel)


@torch.no_grad()
def init_chase_masks(network, schedule):
    """ERK masks (magnitude top-k per layer) at the starting density, no channel removed.

    Returns:
        ``{layer: density}`` of the ERK allocation.
    """
    shapes = {n: layer.dense_weight.shape for n, layer in network.layers.items()}
    densities = erk_densities(shapes, min(1.0, schedule.density_at(0)), schedule.erk_power)
    masks = {}
    for name, layer in network.layers.items():
        weight = layer.dense_weight
        keep = max(1, int(round(densities[name] * weight.numel())))
        masks[name] = topk_mask(weight.abs().float(), keep)
    # Every channel kept: whatever channel masks the layers held (e.g. from mask generation
    # at attach time) are replaced.
    keeps = {n: torch.ones(network.layers[n].out_channels_count, dtype=torch.bool,
                           device=network.layers[n].dense_weight.device)
             for n in network.channel_layers}
    write_masks(network, schedule, masks, keeps)
    return densities


@torch.no_grad()
def chase_update(network, schedule, completed, grads):
    """Channel removal, then prune and grow, after ``completed`` iterations.

    Args:
        network: The :class:`~.attach.SparseNetwork`.
        schedule: The :class:`ChaseSchedule`.
        completed: Completed iterations (an update iteration of the schedule).
        grads: ``{layer: dense gradient}`` of the last batch (see
            :class:`DenseGradientRecorder`).

    Returns:
        A dict of what changed (for logs): density, kept, pruned, grown, removed channels.
    """
    missing = [n for n in network.layers if n not in grads]
    if missing:
        raise ValueError(f'chase_update needs dense gradients of every masked layer; '
                         f'missing {missing[:3]} ({len(missing)} in all)')
    masks = weight_masks(network, schedule.unstructured)
    keeps = channel_keep(network, schedule.channel, all_layers=True)
    if schedule.channel_sparsity > 0 and keeps:
        scores = umm_scores(network, masks)
        target = int(round(schedule.channel_sparsity_at(completed)
                           * sum(k.numel() for k in keeps.values())))
        floors = {n: schedule.floor(k.numel()) for n, k in keeps.items()}
        keeps = select_channels(scores, keeps, target, floors)
    allowed = allowed_masks(network, keeps)
    total = sum(m.numel() for m in masks.values())
    keep_total = int(round(min(1.0, schedule.density_at(completed)) * total))
    weights = {n: layer.dense_weight for n, layer in network.layers.items()}
    masks, pruned, grown = prune_and_grow(weights, masks, grads, allowed, keep_total,
                                          schedule.drop_fraction_at(completed),
                                          schedule.prune_scope)
    write_masks(network, schedule, masks, keeps)
    return dict(density=keep_total / total, kept=keep_total, pruned=pruned, grown=grown,
                removed_channels=sum(int((~k).sum()) for k in keeps.values()),
                channels=sum(k.numel() for k in keeps.values()))


@torch.no_grad()
def apply_chase_masks(network, schedule, optimizer=None, modules=None):
    """Multiply weights and optimizer state by the masks; zero removed channels' biases and
    their BatchNorms' affine parameters (and those parameters' optimizer state).

    Args:
        network: The :class:`~.attach.SparseNetwork`.
        schedule: The :class:`ChaseSchedule` (names the subnets).
        optimizer: A ``torch.optim.Optimizer`` whose per-parameter state tensors of the
            parameter's shape (momentum, Adam moments) are masked too; None: weights only.
        modules: ``dict(network.model.named_modules())`` (pass it to save the lookup).
    """
    modules = modules if modules is not None else dict(network.model.named_modules())
    keeps = channel_keep(network, schedule.channel, all_layers=True)
    state = optimizer.state if optimizer is not None else {}

    def mask_(param, mask):
        param.mul_(mask)
        for value in state.get(param, {}).values():
            if torch.is_tensor(value) and value.shape == param.shape:
                value.mul_(mask)

    for name, layer in network.layers.items():
        weight = layer.dense_weight
        mask = layer.mask_for(schedule.unstructured)
        if mask is not None:
            mask_(weight, mask.to(weight.dtype))
        keep = keeps.get(name)
        if keep is None or bool(keep.all()):
            continue
        keep = keep.to(weight.dtype)
        try:
            owned = channel_companions(modules, network.graph, name, affine=True)
        except ValueError as err:
            raise ValueError(f'Chase: {err}') from err
        for _, _, tensor in owned:
            # the statistics may stay: with a zero affine the channel outputs 0 anyway
            if isinstance(tensor, nn.Parameter):
                mask_(tensor, keep)


class DenseGradientRecorder:
    """Record the dense gradient of every masked weight during one backward pass.

    The masked forward multiplies the weight by its mask, so autograd gives pruned weights a
    zero gradient, yet gradient growth needs ``dL/dw`` at pruned positions. Chase keeps
    pruned weights at exactly zero (:func:`apply_chase_masks`), so running the iteration
    with ``dense`` active computes the very same outputs, and the gradient w.r.t. the raw
    weight is the dense gradient. A tensor hook on each weight records it and hands autograd
    ``grad * mask``, so the optimizer step is exactly the masked one.

    Use: ``recorder.start()`` before the forward, ``grads = recorder.stop()`` after the
    backward. Gradients of several backward passes (accumulation) are summed.
    """

    def __init__(self, network, schedule):
        self.network, self.schedule = network, schedule
        self.handles, self.grads, self.previous = [], {}, None

    def start(self):
        if self.handles:
            raise RuntimeError('DenseGradientRecorder already started')
        self.grads = {}
        self.previous = self.network.active
        for name, layer in self.network.layers.items():
            weight = layer.dense_weight
            mask = layer.mask_for(self.schedule.unstructured)
            mask = None if mask is None else mask.to(weight.dtype)
            self.handles.append(weight.register_hook(self._hook(name, mask)))
        self.network.set_active('dense')

    def _hook(self, name, mask):
        def hook(grad):
            dense = grad.detach().clone()
            self.grads[name] = dense if name not in self.grads else self.grads[name] + dense
            return grad if mask is None else grad * mask
        return hook

    def stop(self):
        for handle in self.handles:
            handle.remove()
        self.handles = []
        self.network.set_active(self.previous)
        return self.grads
