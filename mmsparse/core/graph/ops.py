"""What autograd ops do to channels: the vocabulary of :mod:`.dependency`'s graph walk.

The walk sees a forward pass as torch's autograd graph, whose nodes are named after the ops
(``ReluBackward0``). Here: which ops keep a zero channel zero, how to recognise MMDetection's
``x.sum() * 0.`` (an exact zero kept only to have the tensor in the graph), and a recorder of
the constants added to tensors, which the graph shows only as missing inputs.
"""
import re

import torch
from torch.overrides import TorchFunctionMode

from ..layers import weight_axes

# Ops that act per channel and map an all-zero channel to an all-zero channel.
CHANNELWISE_OPS = frozenset({
    'Relu', 'LeakyRelu', 'Hardtanh', 'Gelu', 'Silu', 'Tanh', 'Hardswish', 'Mish', 'Elu',
    'Threshold', 'MaxPool1DWithIndices', 'MaxPool2DWithIndices', 'MaxPool3DWithIndices',
    'AvgPool2D', 'AvgPool3D', 'AdaptiveAvgPool2D', 'AdaptiveMaxPool2D', 'UpsampleNearest1D',
    'UpsampleNearest2D', 'UpsampleNearest3D', 'UpsampleBilinear2D', 'UpsampleNearestExact2D',
    'NativeDropout', 'Clone', 'ToCopy', 'Alias'})
# Channel-wise too, but only crossed with ``couple=True``: past them the channels are RoI
# features shared by all FPN levels, which only a group can remove.
COUPLED_CHANNELWISE_OPS = frozenset({'RoIAlignFunction', 'RoIPoolFunction'})
_SUFFIX = re.compile(r'Backward\d*$')


def op_name(node):
    """``ReluBackward0`` -> ``Relu``."""
    return _SUFFIX.sub('', type(node).__name__)


class NonzeroConstants(TorchFunctionMode):
    """Records the adds and row writes that mix a non-zero constant into a tensor.

    The autograd graph shows a tensor without history only as a missing input, yet a group
    may be removed only if every junction adds zeros to its removed channels: an add of
    ``1.0`` or of a non-zero buffer couples them, the zero buffer a RoI extractor writes
    its features into does not.
    """

    _ADDS = frozenset({'add', 'add_', '__add__', '__iadd__', '__radd__'})
    _WRITES = frozenset({'__setitem__', 'index_put', 'index_put_'})

    def __init__(self):
        super().__init__()
        self.nodes = set()  # grad nodes of the junctions that add a non-zero constant

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, '__name__', '')
        operands = args[:2] if name in self._ADDS else args[:1] if name in self._WRITES else ()
        constant = any(self._nonzero_constant(a) for a in operands)
        out = func(*args, **(kwargs or {}))
        target = args[0] if name in ('__setitem__', 'add_', '__iadd__', 'index_put_') else out
        if constant and isinstance(target, torch.Tensor) and target.grad_fn is not None:
            self.nodes.add(target.grad_fn)
        return out

    @staticmethod
    def _nonzero_constant(value):
        if isinstance(value, torch.Tensor):
            return value.grad_fn is None and not value.requires_grad and bool(value.any())
        return isinstance(value, (int, float)) and value != 0


def is_times_zero(node):
    """A multiplication by the constant 0 (its output is exactly 0 whatever the input)."""
    other = getattr(node, '_saved_other', None) if op_name(node) == 'Mul' else None
    return isinstance(other, torch.Tensor) and other.numel() == 1 and float(other) == 0.0


def out_count(module):
    """Output channels of a weighted layer (masked or not)."""
    weight = module._parameters['weight']
    return weight.shape[weight_axes(module)[0]]
