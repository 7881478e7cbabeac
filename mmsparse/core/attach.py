"""Choose layers by name globs, turn them into masked layers, switch the active subnet.

:class:`SparseNetwork` is the handle the rest of mmsparse uses: it knows the masked layers,
the channel dependencies (from :mod:`.dependency`) and which subnets the masks hold.
:func:`channel_keep` reads a channel subnet's kept channels, :func:`channel_companions`
lists what a removed channel takes with it beyond the weights.
"""
import fnmatch

import torch

from .batchnorm.recalibration import frozen_batchnorms
from .graph.dependency import analyze_channels
from .layers import MASKABLE_TYPES, make_masked, weight_axes
from .patterns import SparsitySpecError, check_block_shape, check_nm
from .subnets import DENSE, SubnetNameError, parse_subnet


class LayerSelectionError(ValueError):
    """A name glob matches no layer, or a selection leaves nothing to sparsify."""


def frozen_layers(model, types=MASKABLE_TYPES):
    """Names of the maskable layers whose weight does not train (``requires_grad`` False,
    e.g. the stages MMDetection's ``frozen_stages`` freezes when the backbone is built)."""
    return [name for name, m in model.named_modules() if isinstance(m, types)
            and not getattr(m, 'dense_weight', m.weight).requires_grad]


def select_layers(model, include=('*', ), exclude=(), graph=None, sparsify_input_layers=False,
                  sparsify_output_layers=False, types=MASKABLE_TYPES,
                  sparsify_frozen_layers=False):
    """Names of the layers to sparsify.

    Args:
        model: The network.
        include: Globs (``fnmatch``) over module names; each must match some layer.
        exclude: Globs removed from the selection; each must match some layer.
        graph: A :class:`~.dependency.GraphInfo`; with it the stem (layers that consume the
            raw input) and the prediction layers (whose outputs are the model's outputs) stay
            dense unless ``sparsify_input_layers`` / ``sparsify_output_layers`` is set.
        types: Layer types that can be masked.
        sparsify_frozen_layers: Also mask the layers whose weight does not train
            (:func:`frozen_layers`). Default: they stay dense, since a weight that cannot
            move cannot recover from a mask.

    Raises:
        LayerSelectionError: naming the glob that matched nothing.
    """
    candidates = [name for name, m in model.named_modules() if isinstance(m, types)]
    for kind, globs in (('include', include), ('exclude', exclude)):
        for glob in globs:
            if not fnmatch.filter(candidates, glob):
                raise LayerSelectionError(
                    f'{kind} glob {glob!r} matches no maskable layer; layers look like '
                    f'{candidates[:3]} ... ({len(candidates)} in all)')
    chosen = [n for n in candidates if any(fnmatch.fnmatchcase(n, g) for g in include)
              and not any(fnmatch.fnmatchcase(n, g) for g in exclude)]
    if graph is not None:
        if not sparsify_input_layers:
            chosen = [n for n in chosen if n not in graph.input_layers]
        if not sparsify_output_layers:
            chosen = [n for n in chosen if n not in graph.output_layers]
    frozen = [] if sparsify_frozen_layers else frozen_layers(model, types)
    if frozen:
        chosen = [n for n in chosen if n not in set(frozen)]
    if not chosen:
        raise LayerSelectionError(f'no layer left to sparsify (include={list(include)}, '
                                  f'exclude={list(exclude)}'
                                  + (f', {len(frozen)} frozen layers left dense: '
                                     'sparsify_frozen_layers=True masks them' if frozen else '')
                                  + ')')
    return chosen


class ChannelOutputMask:
    """Forward hook on a BatchNorm that follows a channel-masked layer.

    BatchNorm turns a zero channel into its shift (beta - mean * gamma / std), so the removed
    channels must be zeroed after it too; the hook multiplies them by the producer's mask.
    """

    def __init__(self, producer):
        self.producer = producer

    def __call__(self, module, args, output):
        keep = self.producer.active_channel_mask()
        if keep is None:
            return output
        shape = [1] * output.dim()
        shape[1] = -1
        return output * keep.view(shape).to(output.dtype)


def channel_companions(modules, graph, name, affine=False):
    """What an output channel of layer ``name`` takes with it when it is removed.

    Besides its weights, an output channel owns one entry of the layer's bias and of every
    follower BatchNorm's weight, bias, running mean and running variance (a BatchNorm turns a
    zero channel into its shift, so those entries must go as well). Counting, zeroing and
    slicing removed channels all walk this one list.

    Args:
        modules: ``dict(model.named_modules())`` of the model holding the layers (a masked
            or an ordinary one).
        graph: The :class:`~.graph.GraphInfo` that names the layer's followers.
        name: A layer with removable output channels.
        affine: Require every follower to have affine parameters, for callers that make a
            removed channel output exactly 0 by zeroing its entries.

    Returns:
        list of ``(module, tensor name, tensor)`` for the entries that exist: the layer's
        ``bias`` first, then each follower's ``weight``, ``bias``, ``running_mean``,
        ``running_var``. Tensors are the raw parameters (``nn.Parameter``) and buffers, not
        a masked layer's masked views.

    Raises:
        ValueError: with ``affine``, naming a follower without affine parameters.
    """
    owners = [(modules[name], ('bias', ))]
    for follower in graph.channels[name].followers:
        norm = modules[follower]
        if affine and (norm._parameters.get('weight') is None
                       or norm._parameters.get('bias') is None):
            raise ValueError(f'{follower} follows channel-masked {name} but has no affine '
                             'parameters: its removed channels cannot be zeroed')
        owners.append((norm, ('weight', 'bias', 'running_mean', 'running_var')))
    out = []
    for module, tensor_names in owners:
        for tensor_name in tensor_names:
            tensor = module._parameters.get(tensor_name, module._buffers.get(tensor_name))
            if tensor is not None:
                out.append((module, tensor_name, tensor))
    return out


class SparseNetwork:
    """A model whose chosen layers hold many subnets' masks on their shared weights.

    Args:
        model: The network (modified in place: chosen layers become masked layers).
        run: ``run(model) -> outputs``, one forward used for channel dependency analysis.
        include / exclude / sparsify_input_layers / sparsify_output_layers: see
            :func:`select_layers`.
        channel_groups: Also remove channels that several layers share (residual streams,
            FPN outputs; :func:`~.dependency.analyze_channels` with ``couple=True``). A
            group's layers then keep the same channels. Default False: only layers whose
            channels reach nothing but other layers' inputs.
        graph: A :class:`~.dependency.GraphInfo` already computed for ``model`` (then
            ``run`` is not run and ``channel_groups`` is the graph's).
        sparsify_frozen_layers: see :func:`select_layers`. The frozen layers the selection
            leaves dense are listed in ``frozen_dense``.

    ``frozen_bn`` names the frozen BatchNorms (:func:`~.batchnorm.frozen_batchnorms`), read
    here from the model being trained: a copy of it made for weight averaging (mmengine's
    EMA model) has ``requires_grad`` False everywhere and would look entirely frozen.
    """

    def __init__(self, model, run, include=('*', ), exclude=(), sparsify_input_layers=False,
                 sparsify_output_layers=False, channel_groups=False, graph=None,
                 sparsify_frozen_layers=False):
        self.model = model
        self.graph = graph if graph is not None else analyze_channels(model, run,
                                                                      couple=channel_groups)
        names = select_layers(model, include, exclude, self.graph, sparsify_input_layers,
                              sparsify_output_layers,
                              sparsify_frozen_layers=sparsify_frozen_layers)
        # The layers the selection would have masked but for their frozen weights (the log
        # names them).
        self.frozen_bn = tuple(frozen_batchnorms(model))
        frozen = set() if sparsify_frozen_layers else set(frozen_layers(model))
        self.frozen_dense = [] if not frozen else [
            n for n in select_layers(model, include, exclude, self.graph, sparsify_input_layers,
                                     sparsify_output_layers, sparsify_frozen_layers=True)
            if n in frozen]
        modules = dict(model.named_modules())
        self.layers = {name: make_masked(modules[name]) for name in names}
        # A group's channels can go only if every layer of the group is masked (the stem,
        # left dense, shares a ResNet-18's first residual stream).
        self.channel_layers = [n for n in names if self.graph.channels.get(n) is not None
                               and self.graph.channels[n].removable
                               and all(m in self.layers for m in self.graph.channels[n].group)]
        for name in self.channel_layers:
            for follower in self.graph.channels[name].followers:
                modules[follower].register_forward_hook(ChannelOutputMask(self.layers[name]))
        self.active = DENSE
        # ``fn(spec)`` called after every switch, for state that must follow the active
        # subnet beyond the masks (e.g. AST's switchable BatchNorm).
        self.switch_listeners = []
        self._subnets_cache = None

    def subnets(self):
        """Every subnet the masks hold, ``dense`` first, sorted by pattern and sparsity."""
        # Cached per mask version (masks change on generation and checkpoint loading), so
        # switching subnets costs one attribute write per layer.
        version = tuple(layer.mask_version for layer in self.layers.values())
        if self._subnets_cache is None or self._subnets_cache[0] != version:
            specs = {DENSE}
            for layer in self.layers.values():
                specs.update(layer.held_subnets())
            self._subnets_cache = (version, sorted(specs, key=lambda s: s.sort_key))
        return self._subnets_cache[1]

    def resolve(self, name):
        """Parse ``name`` and check the masks hold it; the error lists the valid names."""
        spec = parse_subnet(name)
        valid = self.subnets()
        if spec not in valid:
            raise SubnetNameError(f'unknown subnet {spec.name!r}; this model holds: '
                                  f'{", ".join(s.name for s in valid)}')
        return spec

    def set_active(self, name):
        """Make ``name`` the active subnet of every masked layer (no weights are copied)."""
        spec = DENSE if name in ('dense', DENSE) else self.resolve(name)
        for layer in self.layers.values():
            layer.active_subnet = spec
        self.active = spec
        for listener in self.switch_listeners:
            listener(spec)
        return spec

    def channel_layer_groups(self):
        """The channel-masked layers as groups that keep the same channels (tuples)."""
        return list(dict.fromkeys(self.graph.channels[n].group for n in self.channel_layers))

    def channel_producers(self):
        """consumer layer name -> producer layer name, for channel-masked producers."""
        return {consumer: name for name in self.channel_layers
                for consumer in self.graph.channels[name].consumers}

    def consumer_keep(self, producer, consumer, spec):
        """Bool kept input features of ``consumer`` (fed by channel layer ``producer``) under
        channel subnet ``spec``, or None when ``producer`` holds no such mask.

        One entry per input channel, or ``H * W`` per channel for a Linear layer reading
        them flattened.
        """
        keep = self.layers[producer].channel_keep(spec)
        expansion = self.graph.channels[producer].expansion.get(consumer, 1)
        return None if keep is None else keep.repeat_interleave(expansion)

    def effective_masks(self, name):
        """Per layer, the bool mask of the weights ``name`` really uses (or None).

        Covers every masked layer and, for channel subnets, also the unmasked consumers of
        removed channels (e.g. the dense prediction convs reading the RPN conv): their
        input-channel weights now receive zeros, which parameter and FLOP counts must see.
        """
        spec = parse_subnet(name)
        producers = self.channel_producers() if spec.pattern == 'channel' else {}
        modules = dict(self.model.named_modules())
        masks = {}
        for lname in list(self.layers) + [c for c in producers if c not in self.layers]:
            layer = modules[lname]
            weight = self.layers[lname].dense_weight if lname in self.layers else layer.weight
            mask = (self.layers[lname].mask_for(spec)
                    if lname in self.layers and spec != DENSE else None)
            if lname in producers:
                keep_in = self.consumer_keep(producers[lname], lname, spec)
                if keep_in is not None:
                    shape = [1] * weight.dim()
                    shape[weight_axes(layer)[1]] = -1
                    in_mask = keep_in.view(shape).expand_as(weight)
                    mask = in_mask if mask is None else mask & in_mask
            masks[lname] = mask
        return masks


def channel_keep(network, subnet, all_layers=False):
    """Kept output channels of channel subnet ``subnet``, read from the layers' masks.

    The network-wide form of :meth:`~.layers.MaskedLayerMixin.channel_keep` (what slimming
    slices and what Chase's updates start from).

    Args:
        network: A :class:`SparseNetwork`.
        subnet: A channel subnet name or spec.
        all_layers: Also give the channel-masked layers that hold no mask of ``subnet``
            (every channel kept), and accept a subnet the masks do not hold yet (e.g. Chase's
            ``channel@S_c`` before its first removal). Default: only the layers that hold
            its mask, and the masks must hold ``subnet``.

    Returns:
        ``{layer name: bool (Cout,)}``, copies (callers may edit them), in layer order.

    Raises:
        SparsitySpecError: ``subnet`` is not a channel subnet.
        SubnetNameError: without ``all_layers``, a subnet the masks do not hold.
    """
    spec = parse_subnet(subnet) if all_layers else network.resolve(subnet)
    if spec.pattern != 'channel':
        raise SparsitySpecError(f'channel_keep: {spec.name} is not a channel subnet')
    keep = {}
    for name in network.channel_layers:
        layer = network.layers[name]
        mask = layer.channel_keep(spec)
        if mask is not None:
            keep[name] = mask.detach().clone()
        elif all_layers:
            keep[name] = torch.ones(layer.out_channels_count, dtype=torch.bool,
                                    device=layer.dense_weight.device)
    return keep


def nm_dense_layers(network, n, m):
    """The selected layers that stay dense for ``n:m`` sparsity, in layer order.

    N:M groups ``m`` consecutive weights along the input channels (per kernel position), so a
    layer whose input channels are not divisible by ``m`` cannot hold the pattern: a
    depthwise conv (1 input per group), a 4-channel-per-group grouped conv under 1:8, a
    CoordConv's 258 inputs, a 257-input MaskIoU head.
    """
    return [name for name, layer in network.layers.items() if layer.in_channels_count % m]


def check_selection(network, subnets, block_shape=(1, 1)):
    """Raise, before any training, if a subnet is impossible on the selection.

    N:M subnets cover the layers whose input channels ``M`` divides; the others stay dense
    for them (:func:`nm_dense_layers`; :func:`~.umg.generate_masks` logs their names), even
    a layer the include globs name one by one, and the error comes only when no selected
    layer can hold the pattern. Block subnets must tile every selected layer, channel
    subnets need at least one removable layer. Errors name the layer.
    """
    for spec in subnets:
        spec = parse_subnet(spec)
        if spec.pattern == 'nm':
            check_nm(spec.n, spec.m, spec.m, spec.name)  # 0 < N < M
            if len(nm_dense_layers(network, spec.n, spec.m)) == len(network.layers):
                name, layer = next(iter(network.layers.items()))
                raise SparsitySpecError(
                    f'{spec.name}: no selected layer has input channels divisible by '
                    f'M={spec.m} (e.g. {name}: {layer.in_channels_count}); select layers that '
                    'can hold it or drop the subnet')
        for name, layer in network.layers.items():
            where = f'layer {name} ({type(layer).__mro__[2].__name__})'
            if spec.pattern == 'block':
                check_block_shape(layer.dense_weight.shape, block_shape, layer.out_axis,
                                  layer.in_axis, where)
        if spec.pattern == 'channel' and not network.channel_layers:
            raise SparsitySpecError(
                f'{spec.name}: none of the selected layers has removable output channels '
                '(every one feeds a residual add, concatenation or model output)')
