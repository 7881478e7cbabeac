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

This is the technique of dependency-graph pruning libraries, here on torch's own autograd
graph so it works on MMDetection's data-dependent forwards, which ``torch.fx`` cannot trace.
No per-model tables. The same walk yields the layers that consume the raw input (the stem)
and the layers whose outputs reach the model's outputs directly (prediction layers).
"""
import re
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from .layers import MASKABLE_TYPES

# Ops that act per channel and map an all-zero channel to an all-zero channel.
CHANNELWISE_OPS = frozenset({
    'Relu', 'LeakyRelu', 'Hardtanh', 'Gelu', 'Silu', 'Tanh', 'Hardswish', 'Mish', 'Elu',
    'Threshold', 'MaxPool1DWithIndices', 'MaxPool2DWithIndices', 'MaxPool3DWithIndices',
    'AvgPool2D', 'AvgPool3D', 'AdaptiveAvgPool2D', 'AdaptiveMaxPool2D', 'UpsampleNearest1D',
    'UpsampleNearest2D', 'UpsampleNearest3D', 'UpsampleBilinear2D', 'UpsampleNearestExact2D',
    'NativeDropout', 'Clone', 'ToCopy', 'Alias'})
_SUFFIX = re.compile(r'Backward\d*$')


def op_name(node):
    """``ReluBackward0`` -> ``Relu``."""
    return _SUFFIX.sub('', type(node).__name__)


@dataclass
class ChannelInfo:
    """What removing one layer's output channels touches.

    Attributes:
        removable: True when the channels feed only channel-wise ops, BatchNorms and other
            layers' inputs.
        reason: Why not, naming the coupling op (empty when removable).
        followers: BatchNorm modules (names) whose outputs carry these channels.
        consumers: Layers (names) that take these channels as input channels.
    """
    removable: bool = True
    reason: str = ''
    followers: list = field(default_factory=list)
    consumers: list = field(default_factory=list)

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
    """
    channels: dict
    input_layers: set
    output_layers: set
    order: list

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


def _record_calls(model, run, layer_types, norm_types):
    """Run ``run(model)`` with hooks; return the calls and the output grad nodes."""
    calls, pending, handles = [], {}, []

    def pre_hook(module, args):
        first = next(iter(_flatten_tensors(args)), None)
        pending[id(module)] = None if first is None else first.grad_fn

    def post_hook(name):
        def hook(module, args, output):
            out = next(iter(_flatten_tensors(output)), None)
            if out is not None and out.grad_fn is not None:
                calls.append(_Call(name, module, pending.get(id(module)), out.grad_fn))
        return hook

    for name, module in model.named_modules():
        if isinstance(module, layer_types + norm_types):
            handles.append(module.register_forward_pre_hook(pre_hook))
            handles.append(module.register_forward_hook(post_hook(name)))
    grad_flags = {p: p.requires_grad for p in model.parameters()}
    was_training = model.training
    try:
        # eval() first: no BN statistic updates, no dropout. Some modules (MMDetection's
        # ResNet with frozen_stages) re-freeze parameters inside train()/eval(), so grads
        # are switched on afterwards: frozen stages must appear in the graph too.
        model.eval()
        for p in grad_flags:
            p.requires_grad_(True)
        with torch.enable_grad():
            outputs = run(model)
        roots = {t.grad_fn for t in _flatten_tensors(outputs) if t.grad_fn is not None}
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
        for p, flag in grad_flags.items():
            p.requires_grad_(flag)
    return calls, roots


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
                     passthrough_norm_types=(_BatchNorm,)):
    """Find removable output channels, the stem and the prediction layers of ``model``.

    Args:
        model: Any ``nn.Module``; it is run once in eval mode, then restored.
        run: ``run(model) -> outputs`` (tensors, possibly nested in dicts/lists/objects).
            For detectors, a loss computation covers every head.
        layer_types: Weighted layer types (producers and consumers of channels).
        norm_types: Normalisation layers to record (others are treated as plain ops).
        passthrough_norm_types: Norms that act per channel and may follow a removable layer.

    Returns:
        GraphInfo
    """
    norm_types = tuple(norm_types) + tuple(t for t in (nn.GroupNorm, nn.LayerNorm)
                                           if t not in norm_types)
    calls, roots = _record_calls(model, run, tuple(layer_types), norm_types)
    owner = _node_owners(calls)
    consumers = _consumer_map(roots)
    channels, order, input_layers, output_layers = {}, [], set(), set()
    for call in calls:
        if not isinstance(call.module, tuple(layer_types)):
            continue
        if call.name not in channels:
            channels[call.name] = ChannelInfo()
            order.append(call.name)
        info = channels[call.name]
        if call.in_node is None:
            input_layers.add(call.name)
        if _walk_forward(call, owner, consumers, roots, info, tuple(layer_types),
                         tuple(passthrough_norm_types)):
            output_layers.add(call.name)
    for info in channels.values():
        if info.removable and not info.consumers:
            info.block('its output feeds no other layer')
    return GraphInfo(channels, input_layers, output_layers, order)


def _walk_forward(call, owner, consumers, roots, info, layer_types, passthrough_norms):
    """Follow one call's output channels forward; update ``info``.

    Returns:
        True when the output reaches a model output through no other weighted layer.
    """
    reaches_output = False
    stack, seen = [call.out_node], set()
    while stack:
        node = stack.pop()
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
                    if getattr(module, 'groups', 1) != 1:
                        info.block(f'it feeds the grouped conv {user_call.name}')
                    elif user_call.name not in info.consumers:
                        info.consumers.append(user_call.name)
                    continue
                if isinstance(module, passthrough_norms):
                    if user_call.name not in info.followers:
                        info.followers.append(user_call.name)
                    stack.append(user_call.out_node)
                    continue
                info.block(f'it feeds {type(module).__name__} {user_call.name}')
                stack.append(user_call.out_node)
                continue
            name = op_name(user)
            if name not in CHANNELWISE_OPS:
                info.block(f'it feeds a {name} op')
            stack.append(user)  # keep walking: we still want to know if it reaches outputs
    return reaches_output and _reaches_without_layer(call, owner, consumers, roots,
                                                     layer_types)


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
