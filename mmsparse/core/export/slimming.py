"""Take one subnet out of a :class:`~.attach.SparseNetwork` as an ordinary model.

Two steps, both on a deep copy (the shared weights of the co-trained network stay intact):

* :func:`fold_masks` multiplies the chosen subnets' masks into the weights and turns every
  masked layer back into its original class (``Masked_torch_nn_Conv2d`` -> ``nn.Conv2d``),
  without mask buffers, stored per-subnet BatchNorm statistics or mmsparse hooks. For
  channel subnets the removed channels' bias and their following BatchNorm's affine
  parameters are zeroed too, so a removed channel outputs exactly 0, as in the masked
  forward (where a hook zeroes it after the BatchNorm).
* :func:`slim_channels` then physically slices the removed channels out: the producer's
  output channels, its followers' BatchNorm features and the consumers' input channels. The
  removed channels carried exact zeros, so the smaller model computes the same outputs up to
  the order of floating-point sums.

:func:`slim_subnet` does both. Everything here is plain torch: the result is a model of
torch / MMCV / MMDetection classes only.
"""
import copy

import torch
from torch import nn

from ..attach import ChannelOutputMask, channel_companions, channel_keep
from ..layers import MaskedLayerMixin, unmask_layer, weight_axes
from ..batchnorm.stored_stats import drop_stored_bn_stats
from ..subnets import DENSE, SubnetSpec

# The attribute under which ``mmsparse.models.attach_network`` remembers the network.
_NETWORK_ATTRIBUTE = '_mmsparse_network'


class SlimmingError(ValueError):
    """A fold or slimming request that cannot give an equivalent ordinary model."""


def _as_specs(network, subnets):
    if isinstance(subnets, (str, SubnetSpec)):
        subnets = [subnets]
    specs = []
    for name in subnets:
        spec = DENSE if name in ('dense', DENSE) else network.resolve(name)
        if spec not in specs:
            specs.append(spec)
    if not specs:
        raise SlimmingError('fold_masks needs at least one subnet name')
    return specs


def _cached_graph_tensors(model):
    """``{id: detached copy}`` of the tensors with autograd history that modules keep as
    plain attributes (e.g. a dense head's ``_raw_positive_infos`` after a loss forward),
    which ``copy.deepcopy`` refuses; the copy holds them detached."""
    memo, stack = {}, [v for m in model.modules() for k, v in vars(m).items()
                       if k not in ('_parameters', '_buffers', '_modules')]
    seen = set()
    while stack:
        value = stack.pop()
        if id(value) in seen:
            continue
        seen.add(id(value))
        if isinstance(value, torch.Tensor):
            if value.grad_fn is not None:
                memo[id(value)] = value.detach().clone()
        elif isinstance(value, dict):
            stack.extend(value.values())
        elif isinstance(value, (list, tuple)):
            stack.extend(value)
    return memo


def _copy_model(network):
    # The attached SparseNetwork (and its graph) must not be copied along: mapping it to
    # None in deepcopy's memo drops it, then the attribute is removed.
    memo = _cached_graph_tensors(network.model)
    memo[id(network)] = None
    model = copy.deepcopy(network.model, memo=memo)
    model.__dict__.pop(_NETWORK_ATTRIBUTE, None)
    return model


def _remove_mask_hooks(model):
    for module in model.modules():
        for key, hook in list(module._forward_hooks.items()):
            if isinstance(hook, ChannelOutputMask):
                del module._forward_hooks[key]


def _weight_mask(layer, name, spec, keep):
    """Layer ``name``'s weight mask for ``spec``; for a channel subnet, from ``keep`` when
    given (a keep set rounded up by :func:`round_channel_keep` differs from the masks)."""
    if spec.pattern != 'channel' or keep is None:
        return layer.mask_for(spec)
    name_keep = keep.get(name)
    if name_keep is None:
        return None
    shape = layer._parameters['weight'].shape
    view = [1] * len(shape)
    view[weight_axes(layer)[0]] = -1
    return name_keep.view(view).expand(shape)


@torch.no_grad()
def _fold(network, specs, zero_followers=True, keep=None):
    model = _copy_model(network)
    drop_stored_bn_stats(model)  # the copy's live statistics are the ones it keeps
    modules = dict(model.named_modules())
    for name in network.layers:
        layer = modules[name]
        mask = None
        for spec in specs:
            if spec == DENSE:
                continue
            part = _weight_mask(layer, name, spec, keep)
            if part is not None:
                mask = part if mask is None else mask & part
        if mask is not None:
            weight = layer._parameters['weight']
            weight.mul_(mask.to(weight.dtype))
    for spec in specs:
        if spec.pattern != 'channel':
            continue
        for name, kept in (keep or channel_keep(network, spec)).items():
            try:
                owned = channel_companions(modules, network.graph, name, affine=zero_followers)
            except ValueError as err:
                raise SlimmingError(f'{err}; slim the channels out (slim_subnet) instead') from err
            for _, _, tensor in owned:
                # the statistics may stay: with a zero affine the channel outputs 0 anyway
                if isinstance(tensor, nn.Parameter):
                    tensor[~kept] = 0
    _remove_mask_hooks(model)
    for name in network.layers:
        unmask_layer(modules[name])
    return model


def fold_masks(network, subnets):
    """An ordinary copy of ``network.model`` with the masks of ``subnets`` folded in.

    Args:
        network: A :class:`~.attach.SparseNetwork`.
        subnets: A subnet name or a list of names (e.g. ``['unstructured@0.50',
            'channel@0.30']``); their masks are ANDed.

    Returns:
        nn.Module: a deep copy whose masked layers are their original classes again, with
        weights multiplied by the masks, no mask buffers and no mmsparse hooks. For channel
        subnets the removed channels' bias and the following BatchNorms' weight and bias are
        zero, so those channels output exactly 0 as in the masked forward.

    Raises:
        SubnetNameError: a name the network does not hold (listing the valid ones).
        SlimmingError: a BatchNorm without affine parameters follows a channel-masked layer.
    """
    return _fold(network, _as_specs(network, subnets))


def _set_param(module, name, value):
    old = module._parameters[name]
    module._parameters[name] = nn.Parameter(value.contiguous(), requires_grad=old.requires_grad)


def _slice_out(module, index, name):
    """Keep output channels ``index`` of a Conv/Linear/ConvTranspose layer's weight (its
    bias goes with the channel's other companions, :func:`_slice_companions`)."""
    out_axis, _ = weight_axes(module)
    _set_param(module, 'weight', module._parameters['weight'].index_select(out_axis, index))
    if isinstance(module, nn.Linear):
        module.out_features = len(index)
    elif hasattr(module, 'out_channels'):
        module.out_channels = len(index)
    else:
        raise SlimmingError(f'cannot slice output channels of {name} '
                            f'({type(module).__name__})')


def _slice_in(module, index, name, expansion=1):
    """Keep input channels ``index`` of a Conv/Linear/ConvTranspose layer (of a Linear
    layer reading ``expansion`` inputs per channel: all of each kept channel's)."""
    if expansion != 1:
        index = (index[:, None] * expansion + torch.arange(expansion, device=index.device)
                 ).flatten()
    if getattr(module, 'groups', 1) != 1:
        raise SlimmingError(f'cannot slice input channels of the grouped layer {name}')
    _, in_axis = weight_axes(module)
    _set_param(module, 'weight', module._parameters['weight'].index_select(in_axis, index))
    if isinstance(module, nn.Linear):
        module.in_features = len(index)
    elif hasattr(module, 'in_channels'):
        module.in_channels = len(index)
    else:
        raise SlimmingError(f'cannot slice input channels of {name} ({type(module).__name__})')


def _slice_companions(modules, graph, name, index, sliced):
    """Keep entries ``index`` of what layer ``name``'s channels take with them (its bias, its
    followers' affine parameters and statistics); a follower in ``sliced`` is done already."""
    for module, tensor_name, tensor in channel_companions(modules, graph, name):
        if module in sliced:
            continue
        if isinstance(tensor, nn.Parameter):
            _set_param(module, tensor_name, tensor.index_select(0, index))
        else:
            module._buffers[tensor_name] = tensor.index_select(0, index).contiguous()
        if hasattr(module, 'num_features'):
            module.num_features = len(index)
    sliced.update(modules[f] for f in graph.channels[name].followers)


def _check_keep(modules, graph, keep):
    """Validate ``keep`` before anything is changed."""
    masked = [n for n, m in modules.items() if isinstance(m, MaskedLayerMixin)]
    if masked:
        raise SlimmingError(f'slim_channels needs an ordinary model, but {masked[0]} is still '
                            'a masked layer: fold_masks first')
    for name, kept in keep.items():
        info = graph.channels.get(name)
        if info is None or name not in modules:
            raise SlimmingError(f'{name!r} is not a weighted layer of the analysed model')
        if not info.removable:
            raise SlimmingError(f'cannot remove output channels of {name}: {info.reason}')
        # Checked here too: a graph from elsewhere may call grouped layers removable.
        for layer in (name, *info.consumers):
            groups = getattr(modules[layer], 'groups', 1)
            if groups != 1:
                raise SlimmingError(
                    f'cannot remove output channels of {name}: {layer} is a grouped conv '
                    f'(groups={groups}), whose channels go only a whole group at a time')
        count = modules[name].weight.shape[weight_axes(modules[name])[0]]
        if kept.dtype != torch.bool or kept.shape != (count, ):
            raise SlimmingError(f'keep[{name!r}] must be a bool tensor of shape ({count},), got '
                                f'{kept.dtype} {tuple(kept.shape)}')
        if not kept.any():
            raise SlimmingError(f'keep[{name!r}] removes every output channel')
        # A group holds every layer feeding one of its consumers (a shared head) and every
        # layer its channels are added to: all must lose the same channels, or a consumer's
        # input channels could not be sliced once for all of them.
        for other in info.group:
            if other not in keep or not torch.equal(keep[other].cpu(), kept.cpu()):
                raise SlimmingError(
                    f'{name} and {other} are one channel group ({len(info.group)} layers whose '
                    'channels are added or read together); all must keep the same channels')


@torch.no_grad()
def slim_channels(model, graph, keep):
    """Physically remove output channels, in place.

    Args:
        model: An ordinary model (masks folded, e.g. by :func:`fold_masks`).
        graph: The :class:`~.dependency.GraphInfo` of ``analyze_channels`` on the model
            the names come from.
        keep: ``{producer layer name: bool (Cout,) tensor of kept channels}``; only layers
            whose ``graph.channels[name].removable``.

    Returns:
        ``model``: producers' weights/bias (and ``out_channels`` / ``out_features``), their
        follower BatchNorms' affine parameters and running statistics (``num_features``), and
        every consumer's input channels (``in_channels`` / ``in_features``) are sliced.

    Raises:
        SlimmingError: a non-removable layer, a malformed mask, a masked model, or a consumer
            whose producers keep different channels. Nothing is changed then.
    """
    modules = dict(model.named_modules())
    _check_keep(modules, graph, keep)
    # shared consumers and norms are sliced once (all their feeders agree)
    sliced, sliced_norms = set(), set()
    for name, kept in keep.items():
        module = modules[name]
        info = graph.channels[name]
        index = kept.to(module.weight.device).nonzero().flatten()
        _slice_out(module, index, name)
        _slice_companions(modules, graph, name, index, sliced_norms)
        for consumer in info.consumers:
            if consumer not in sliced:
                _slice_in(modules[consumer], index, consumer, info.expansion.get(consumer, 1))
                sliced.add(consumer)
        for holder in info.width_holders:
            # e.g. a RoI extractor allocates its output as (num_rois, out_channels, h, w)
            modules[holder].out_channels = len(index)
    return model


def round_channel_keep(network, keep, divisor):
    """``keep`` with each layer's kept-channel count rounded up to a multiple of ``divisor``
    (at most all channels), e.g. for kernels that run best on multiples of 8.

    The channels added back are the removed ones with the largest L1 norm of the dense
    weight (summed over a channel group, whose layers keep the same channels), so the result
    is the subnet plus a few restored channels.

    Args:
        network: The :class:`~.attach.SparseNetwork` the layers belong to.
        keep: ``{layer name: bool (Cout,)}`` (e.g. :func:`channel_keep`).
        divisor: A positive int.

    Returns:
        A new ``{layer name: bool (Cout,)}`` containing every channel of ``keep``.
    """
    if type(divisor) is not int or divisor < 1:
        raise SlimmingError(f'the channel divisor must be a positive int, got {divisor!r}')
    rounded = {}
    for name, kept in keep.items():
        if name in rounded:
            continue
        group = [n for n in (network.graph.channels[name].group or (name, )) if n in keep]
        scores = torch.zeros(kept.shape, dtype=torch.float64)
        for member in group:
            weight = network.layers[member].dense_weight.detach()
            out_axis = weight_axes(network.layers[member])[0]
            scores += weight.abs().transpose(0, out_axis).flatten(1).sum(1).double().cpu()
        count = int(kept.sum())
        extra = min(len(kept), -(-count // divisor) * divisor) - count
        new = kept.clone()
        if extra:
            removed = (~kept).nonzero().flatten()
            best = removed[scores[removed].argsort(descending=True, stable=True)[:extra]]
            new[best.to(new.device)] = True
        for member in group:
            rounded[member] = new.clone()
    return rounded


def slim_subnet(network, subnet, also=(), divisor=1):
    """``subnet`` (plus the masks of ``also``) as a smaller ordinary model.

    Folds the masks of ``[subnet, *also]`` (:func:`fold_masks`), then, when ``subnet`` is a
    channel subnet, slices its removed channels out (:func:`slim_channels`).

    Args:
        network: A :class:`~.attach.SparseNetwork`.
        subnet: The subnet name (e.g. ``'channel@0.30'``).
        also: More subnet names whose masks are folded in too (e.g. ``['unstructured@0.50']``).
        divisor: Round each slimmed layer's kept channels up to a multiple of it
            (:func:`round_channel_keep`); 1 keeps the subnet exactly.
    """
    return slim_subnet_restoring(network, subnet, also, divisor)[0]


def slim_subnet_restoring(network, subnet, also=(), divisor=1):
    """:func:`slim_subnet`'s model and how many removed channels ``divisor`` rounding put
    back, summed over the slimmed layers (0 for ``divisor`` 1 or no channel subnet)."""
    specs = _as_specs(network, [subnet, *also])
    channel = [s for s in specs if s.pattern == 'channel']
    if len(channel) > 1:
        raise SlimmingError(f'at most one channel subnet can be slimmed, got '
                            f'{[s.name for s in channel]}')
    keep = channel_keep(network, channel[0]) if channel else None
    restored = 0
    if keep is not None and divisor != 1:
        rounded = round_channel_keep(network, keep, divisor)
        restored = sum(int(rounded[n].sum() - keep[n].sum()) for n in keep)
        keep = rounded
    model = _fold(network, specs, zero_followers=not channel, keep=keep)
    if channel:
        slim_channels(model, network.graph, keep)
    return model, restored
