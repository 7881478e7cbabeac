"""Channel dependency analysis from the autograd graph of one real forward pass.

Which layers' output channels can be removed without touching a residual add, an FPN sum or
a concatenation? We run the model once (any callable, e.g. a detector's ``loss``), record
each weighted layer's and each norm's call with forward hooks, and walk the autograd graph
*forward* from every layer's output:

* a channel-wise op that maps 0 to 0 (ReLU, pooling, upsampling, dropout, ...) passes
  through;
* a BatchNorm call passes through and becomes a *follower* (its output for a removed
  channel must be zeroed too: BN adds a shift even to a zero input);
* another weighted layer is a *consumer* (its matching input channel gets a zero input);
* anything else (add, cat, mul, view, a group/layer norm, RoIAlign, a loss, the model's
  output) couples the channel to something else: the layer is not removable.

A grouped conv (depthwise ones too) is never removable: its output channels could go only
a whole group at a time, with the input channels that feed that group.

This is the technique of dependency-graph pruning libraries, here on torch's own autograd
graph so it works on MMDetection's data-dependent forwards, which ``torch.fx`` cannot trace.
No per-model tables. The same walk yields the layers that consume the raw input (the stem)
and the layers whose outputs reach the model's outputs directly (prediction layers).

Layers feeding the same consumer (an RPN conv run on every FPN level) form a *group* that
keeps the same channels (:mod:`.channel_groups`). With ``couple=True`` the walk also
crosses the ops that tie several layers' channels together:

* an ``add`` (a residual add, the FPN's top-down sum) is a junction: every layer whose
  channels meet there joins the group, which is removable only if every input of every
  junction comes from the group or is zero (a removed channel is then 0 + 0);
* RoIAlign is channel-wise, writing RoI features into a zero tensor (``index_put`` over
  rows) keeps channels, and flattening ``(N, C, H, W)`` into a Linear layer makes that
  layer consume each channel as ``H * W`` inputs (its *expansion*).

This makes residual streams and FPN outputs removable, which is what shrinks RoIAlign and
the heads' inputs; :mod:`.slimming` slices whole groups.
"""
import contextlib
from dataclasses import dataclass, field
from math import prod

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from .channel_groups import form_groups
from .ops import (CHANNELWISE_OPS, COUPLED_CHANNELWISE_OPS, NonzeroConstants, is_times_zero,
                  op_name, out_count)
from ..layers import MASKABLE_TYPES, weight_axes


@dataclass
class ChannelInfo:
    """What removing one layer's output channels touches.

    Attributes:
        removable: True when the channels feed only channel-wise ops, BatchNorms and other
            layers' inputs.
        reason: Why not, naming the coupling op (empty when removable).
        followers: BatchNorm modules (names) whose outputs carry these channels.
        consumers: Layers (names) that take these channels as input channels.
        expansion: consumer name -> inputs per channel, for Linear layers that read the
            channels flattened with their spatial positions (absent: 1).
        group: The layers that must keep the same channels as this one (itself included;
            only itself unless the analysis coupled layers).
        width_holders: Other modules whose ``out_channels`` attribute is this group's width
            and sizes tensors at run time (e.g. a RoI extractor's output buffer).
    """
    removable: bool = True
    reason: str = ''
    followers: list = field(default_factory=list)
    consumers: list = field(default_factory=list)
    expansion: dict = field(default_factory=dict)
    group: tuple = ()
    width_holders: list = field(default_factory=list)

    def block(self, reason):
        if self.removable:
            self.removable, self.reason = False, reason


@dataclass
class GraphInfo:
    """Result of :func:`analyze_channels`.

    Attributes:
        channels: layer name -> :class:`ChannelInfo`, for every weighted layer that ran.
        input_layers: Layers that consume the model's raw input (e.g. the stem conv).
        output_layers: Layers whose outputs reach the model outputs through no other
            weighted layer (class/box/mask prediction layers).
        order: Weighted layers in the order they first ran.
        coupled: Whether the analysis grouped coupled layers (``couple=True``).
    """
    channels: dict
    input_layers: set
    output_layers: set
    order: list
    coupled: bool = False

    @property
    def removable(self):
        return [n for n in self.order if self.channels[n].removable]


@dataclass
class _Call:
    name: str
    module: nn.Module
    in_node: object
    out_node: object


def _flatten_tensors(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _flatten_tensors(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _flatten_tensors(v)
    elif hasattr(obj, '__dict__'):  # e.g. data samples holding tensors
        for v in vars(obj).values():
            yield from _flatten_tensors(v)


def _record_calls(model, run, layer_types, norm_types, couple):
    """Run ``run(model)`` with hooks.

    Returns:
        (calls, roots, outputs, constants): the recorded layer and norm calls, the output
        grad nodes, ``{grad node: [module names]}`` of the first output tensor of every
        other module (where a group's channels leave a module that may size buffers by its
        width), and the junction nodes that add a non-zero constant.
    """
    calls, pending, handles, outputs = [], {}, [], {}
    constants = NonzeroConstants() if couple else None

    def pre_hook(module, args):
        first = next(iter(_flatten_tensors(args)), None)
        pending[id(module)] = None if first is None else first.grad_fn

    def post_hook(name):
        def hook(module, args, output):
            out = next(iter(_flatten_tensors(output)), None)
            if out is not None and out.grad_fn is not None:
                calls.append(_Call(name, module, pending.get(id(module)), out.grad_fn))
        return hook

    def output_hook(name):
        def hook(module, args, output):
            out = next(iter(_flatten_tensors(output)), None)
            if out is not None and out.grad_fn is not None:
                outputs.setdefault(out.grad_fn, []).append(name)
        return hook

    for name, module in model.named_modules():
        if isinstance(module, layer_types + norm_types):
            handles.append(module.register_forward_pre_hook(pre_hook))
            handles.append(module.register_forward_hook(post_hook(name)))
        elif name:
            handles.append(module.register_forward_hook(output_hook(name)))
    grad_flags = {p: p.requires_grad for p in model.parameters()}
    was_training = model.training
    try:
        # eval() first: no BN statistic updates, no dropout. Some modules (MMDetection's
        # ResNet with frozen_stages) re-freeze parameters inside train()/eval(), so grads
        # are switched on afterwards: frozen stages must appear in the graph too.
        model.eval()
        for p in grad_flags:
            p.requires_grad_(True)
        with torch.enable_grad(), constants or contextlib.nullcontext():
            results = run(model)
        roots = {t.grad_fn for t in _flatten_tensors(results) if t.grad_fn is not None}
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
        for p, flag in grad_flags.items():
            p.requires_grad_(flag)
    return calls, roots, outputs, (constants.nodes if couple else set())


def _node_owners(calls):
    """Map every autograd node created inside a recorded call to that call."""
    owner = {}
    for call in calls:
        stack, seen = [call.out_node], set()
        while stack:
            node = stack.pop()
            if node is None or node in seen or node is call.in_node:
                continue
            seen.add(node)
            if type(node).__name__ == 'AccumulateGrad':
                continue
            owner.setdefault(node, call)
            stack.extend(nxt for nxt, _ in node.next_functions)
    return owner


def _consumer_map(roots):
    """Invert the autograd graph: node -> nodes that use its output."""
    consumers, stack, seen = {}, list(roots), set()
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        for nxt, _ in node.next_functions:
            if nxt is not None:
                consumers.setdefault(nxt, []).append(node)
                stack.append(nxt)
    return consumers


def analyze_channels(model, run, layer_types=MASKABLE_TYPES, norm_types=(_BatchNorm,),
                     passthrough_norm_types=(_BatchNorm,), couple=False):
    """Find removable output channels, the stem and the prediction layers of ``model``.

    Args:
        model: Any ``nn.Module``; it is run once in eval mode, then restored.
        run: ``run(model) -> outputs`` (tensors, possibly nested in dicts/lists/objects).
            For detectors, a loss computation covers every head.
        layer_types: Weighted layer types (producers and consumers of channels).
        norm_types: Normalisation layers to record (others are treated as plain ops).
        passthrough_norm_types: Norms that act per channel and may follow a removable layer.
        couple: Also cross adds, RoIAlign and flattening into Linear layers, grouping the
            layers whose channels these ops tie together (see the module docstring).

    Returns:
        GraphInfo
    """
    norm_types = tuple(norm_types) + tuple(t for t in (nn.GroupNorm, nn.LayerNorm)
                                           if t not in norm_types)
    calls, roots, outputs, constants = _record_calls(model, run, tuple(layer_types), norm_types,
                                                     couple)
    owner = _node_owners(calls)
    consumers = _consumer_map(roots)
    channels, order, input_layers, output_layers = {}, [], set(), set()
    walks = {}  # layer name -> _Walk, merged over the layer's calls
    for call in calls:
        if not isinstance(call.module, tuple(layer_types)):
            continue
        if call.name not in channels:
            channels[call.name] = ChannelInfo()
            order.append(call.name)
            walks[call.name] = _Walk(couple)
        info = channels[call.name]
        if call.in_node is None:
            input_layers.add(call.name)
        if _walk_forward(call, owner, consumers, roots, info, tuple(layer_types),
                         tuple(passthrough_norm_types), walks[call.name]):
            output_layers.add(call.name)
    modules = dict(model.named_modules())
    for name, info in channels.items():
        if info.removable and not info.consumers:
            info.block('its output feeds no other layer')
        groups = getattr(modules[name], 'groups', 1)
        if groups != 1:  # an output channel belongs to a group: slicing one unbalances it
            info.block(f'it is a grouped conv (groups={groups}), whose output channels can '
                       'go only group by group, with the input channels feeding them')
    form_groups(channels, order, walks, outputs, constants, modules)
    return GraphInfo(channels, input_layers, output_layers, order, couple)


class _Walk:
    """What one layer's forward walk saw: the nodes, and the junctions it crossed."""

    def __init__(self, couple):
        self.couple = couple
        self.seen = set()
        self.junctions = set()


def _walk_forward(call, owner, consumers, roots, info, layer_types, passthrough_norms, walk):
    """Follow one call's output channels forward; update ``info`` and ``walk``.

    Each stack entry carries the channels' expansion: 1, or ``H * W`` once a ``(N, C, H, W)``
    tensor was flattened (only with coupling).

    Returns:
        True when the output reaches a model output through no other weighted layer.
    """
    reaches_output = False
    count = out_count(call.module)
    stack, seen = [(call.out_node, 1)], walk.seen
    while stack:
        node, expansion = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        if node in roots:
            reaches_output = True
            info.block('its output is a model output')
        for user in consumers.get(node, []):
            user_call = owner.get(user)
            if user_call is not None and user_call is not call:
                module = user_call.module
                if isinstance(module, layer_types):
                    _add_consumer(info, user_call.name, module, count, expansion)
                    continue
                if isinstance(module, passthrough_norms) and expansion == 1:
                    if user_call.name not in info.followers:
                        info.followers.append(user_call.name)
                    stack.append((user_call.out_node, 1))
                    continue
                info.block(f'it feeds {type(module).__name__} {user_call.name}')
                stack.append((user_call.out_node, expansion))
                continue
            stack.append((user, _crossing(user, consumers, info, walk, count, expansion)))
    return reaches_output and _reaches_without_layer(call, owner, consumers, roots,
                                                     layer_types)


def _add_consumer(info, name, module, count, expansion):
    if getattr(module, 'groups', 1) != 1:
        info.block(f'it feeds the grouped conv {name}')
        return
    if expansion != 1:
        in_count = module._parameters['weight'].shape[weight_axes(module)[1]]
        if not isinstance(module, nn.Linear) or in_count != count * expansion:
            info.block(f'its flattened channels feed {name}, which does not read them as '
                       f'{count} x {expansion} inputs')
            return
    if info.expansion.get(name, expansion) != expansion:
        info.block(f'{name} reads its channels both flattened and not')
    if name not in info.consumers:
        info.consumers.append(name)
    if expansion != 1:
        info.expansion[name] = expansion


def _crossing(node, consumers, info, walk, count, expansion):
    """Check a non-module op on the walk.

    Returns:
        The expansion past the op (``info`` is blocked if the op couples channels).
    """
    name = op_name(node)
    if name in CHANNELWISE_OPS:
        return expansion
    if walk.couple:
        if is_times_zero(node) or (name == 'Sum' and all(
                is_times_zero(u) for u in consumers.get(node, []))):
            # MMDetection's RoI extractors add ``feats.sum() * 0.`` for an FPN level no RoI
            # maps to (to keep it in the graph): an exact 0 whatever the channels hold, so
            # it may follow them into the junction where it is added.
            return expansion
        if name in COUPLED_CHANNELWISE_OPS:
            return expansion
        if name == 'Add' or (name == 'IndexPut' and len(node._saved_indices) == 1):
            walk.junctions.add(node)  # index_put over rows only: channels stay in place
            return expansion
        if name == 'View' and expansion == 1:
            sizes = tuple(node._saved_self_sym_sizes)
            if len(sizes) > 2 and sizes[1] == count:
                # Only a Linear layer reading count * H * W inputs may consume it
                # (checked by _add_consumer); anything else blocks further on.
                return int(prod(sizes[2:]))
    info.block(f'it feeds a {name} op')
    return expansion


def _reaches_without_layer(call, owner, consumers, roots, layer_types):
    """True if some path from the call's output reaches a root without a weighted layer."""
    stack, seen = [call.out_node], set()
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        if node in roots:
            return True
        for user in consumers.get(node, []):
            user_call = owner.get(user)
            if user_call is not None and user_call is not call and isinstance(
                    user_call.module, layer_types):
                continue
            stack.append(user)
    return False
