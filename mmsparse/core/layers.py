"""Masked layers: one shared weight, one mask per subnet, the active mask applied in forward.

:func:`make_masked` changes the *class* of an existing ``Conv2d``, ``Linear`` or
``ConvTranspose2d`` instance (or any subclass, e.g. MMCV's wrappers) to a subclass that also
derives from :class:`MaskedLayerMixin`. Nothing is copied or renamed: the parameters stay
``<name>.weight`` / ``<name>.bias``, so stock MMDetection checkpoints load, and the layer's own
``forward`` still runs. The mixin turns ``weight`` and ``bias`` into properties that return
``weight * mask`` for the active subnet and the raw parameter for ``dense`` (so dense is
bitwise identical to the unmodified layer). Switching subnets sets one attribute.

Masks are persistent buffers, stored compactly (checkpoints carry them):

* ``mask_unstructured_level`` / ``mask_block_level``: uint8 per weight, the number of nested
  ratios at which the weight is kept (see :func:`~mmsparse.core.patterns.nested_levels`);
* ``mask_nm_bits``: one bit per weight per N:M subnet;
* ``mask_channel``: one bool per output channel per channel subnet;
* ``mask_*_ratios`` / ``mask_nm_nm`` / ``mask_block_shape``: which subnets those encode.
"""
import torch
from torch import nn

from .patterns import level_mask, pack_bits, unpack_bits
from .subnets import DENSE, SubnetSpec, parse_subnet

MASKABLE_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, nn.ConvTranspose1d,
                  nn.ConvTranspose2d, nn.ConvTranspose3d)
# Instance attributes :meth:`MaskedLayerMixin._init_mask_buffers` adds besides the buffers,
# and a training-time ``weight_transform`` (Spartan) that may have been set on the instance.
_MASK_ATTRIBUTES = ('active_subnet', '_mask_version', '_mask_cache', 'out_axis', 'in_axis',
                    'weight_transform')
_MASK_BUFFERS = ('mask_unstructured_level', 'mask_unstructured_ratios', 'mask_block_level',
                 'mask_block_ratios', 'mask_block_shape', 'mask_nm_bits', 'mask_nm_nm',
                 'mask_channel', 'mask_channel_ratios')


def is_mask_key(key):
    """True for a state-dict key of a mask buffer (``...conv1.mask_nm_bits``), not for
    e.g. ``roi_head.mask_head.convs.0.conv.weight``."""
    return key.rsplit('.', 1)[-1].startswith('mask_')


def weight_axes(module):
    """``(out_axis, in_axis)`` of a layer's weight (ConvTranspose stores (Cin, Cout, ...))."""
    if isinstance(module, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
        return 1, 0
    return 0, 1


class _StraightThroughMask(torch.autograd.Function):
    """``tensor * mask`` forward; the gradient passes to ``tensor`` unmasked."""

    @staticmethod
    def forward(ctx, tensor, mask):
        return tensor * mask

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def straight_through_mask(tensor, mask):
    """``tensor * mask`` whose gradient reaches every entry of ``tensor``, removed ones too.

    A sparse step then also moves the weights its subnet removes, along the gradient taken at
    the sparse point (the dense weights keep learning on every step; cf. DPF, Lin et al.
    2020). The forward value is exactly ``tensor * mask``; the cost is the same.
    """
    return _StraightThroughMask.apply(tensor, mask)


class MaskedLayerMixin:
    """Behaviour added to a maskable layer instance by :func:`make_masked`."""

    # Optional ``fn(dense_weight) -> forward weight`` that replaces the masking (Spartan's
    # dual-averaging forward); None, the default, leaves the masked path untouched.
    weight_transform = None
    # True: the masked forward passes its gradient straight through to every weight, the
    # removed ones too (:func:`straight_through_mask`); False, the default: only kept weights
    # get gradient, as autograd of ``weight * mask`` gives.
    straight_through = False

    # ``weight`` and ``bias`` live in ``_parameters`` (so names and optimizers are unchanged);
    # these properties shadow nn.Module.__getattr__ to apply the active mask on access.
    @property
    def weight(self):
        weight = self._parameters['weight']
        if self.weight_transform is not None:
            return self.weight_transform(weight)
        return self._apply_mask(weight, self.active_mask(weight))

    @property
    def bias(self):
        bias = self._parameters.get('bias')
        if bias is None or self.active_subnet.pattern != 'channel':
            return bias
        keep = self.active_channel_mask()
        return self._apply_mask(bias, None if keep is None else keep.to(bias.dtype))

    def _apply_mask(self, tensor, mask):
        if mask is None:
            return tensor
        return straight_through_mask(tensor, mask) if self.straight_through else tensor * mask

    @property
    def dense_weight(self):
        """The shared, unmasked weight parameter."""
        return self._parameters['weight']

    # -- set-up ---------------------------------------------------------------------------
    def _init_mask_buffers(self):
        out_axis, in_axis = weight_axes(self)
        self.out_axis, self.in_axis = out_axis, in_axis
        self.active_subnet = DENSE
        self._mask_version = 0
        self._mask_cache = None
        dev = self._parameters['weight'].device
        empty = dict(device=dev)
        self.register_buffer('mask_unstructured_level', torch.zeros(0, dtype=torch.uint8, **empty))
        self.register_buffer('mask_unstructured_ratios', torch.zeros(0, **empty))
        self.register_buffer('mask_block_level', torch.zeros(0, dtype=torch.uint8, **empty))
        self.register_buffer('mask_block_ratios', torch.zeros(0, **empty))
        self.register_buffer('mask_block_shape', torch.ones(2, dtype=torch.int64, **empty))
        self.register_buffer('mask_nm_bits', torch.zeros(0, 0, dtype=torch.uint8, **empty))
        self.register_buffer('mask_nm_nm', torch.zeros(0, 2, dtype=torch.int64, **empty))
        self.register_buffer('mask_channel', torch.zeros(0, 0, dtype=torch.bool, **empty))
        self.register_buffer('mask_channel_ratios', torch.zeros(0, **empty))

    @property
    def out_channels_count(self):
        return self._parameters['weight'].shape[self.out_axis]

    @property
    def in_channels_count(self):
        return self._parameters['weight'].shape[self.in_axis]

    def set_masks(self, unstructured=None, nm=None, channel=None, block=None):
        """Store the masks of this layer's subnets (replacing those of the given patterns).

        Args:
            unstructured: ``(ratios, level)`` with ``level`` from ``nested_levels``.
            nm: list of ``((n, m), bool mask)``.
            channel: ``(ratios, bool tensor (K, Cout))``.
            block: ``(ratios, level, (bo, bi))``.
        """
        weight = self._parameters['weight']
        dev = weight.device
        if unstructured is not None:
            ratios, level = unstructured
            self.mask_unstructured_level = level.to(dev, torch.uint8)
            self.mask_unstructured_ratios = torch.tensor(list(ratios), device=dev)
        if block is not None:
            ratios, level, shape = block
            self.mask_block_level = level.to(dev, torch.uint8)
            self.mask_block_ratios = torch.tensor(list(ratios), device=dev)
            self.mask_block_shape = torch.tensor(list(shape), device=dev)
        if nm is not None:
            bits = [pack_bits(mask) for _, mask in nm]
            self.mask_nm_bits = (torch.stack(bits) if bits else
                                 torch.zeros(0, 0, dtype=torch.uint8)).to(dev)
            self.mask_nm_nm = torch.tensor([list(nm_) for nm_, _ in nm],
                                           dtype=torch.int64, device=dev).reshape(-1, 2)
        if channel is not None:
            ratios, masks = channel
            self.mask_channel = masks.to(dev, torch.bool).reshape(len(ratios), -1)
            self.mask_channel_ratios = torch.tensor(list(ratios), device=dev)
        self._mask_version += 1

    # -- queries ---------------------------------------------------------------------------
    def held_subnets(self):
        """The sparse subnets this layer holds masks for (``dense`` is implicit)."""
        specs = [SubnetSpec('unstructured', round(float(r), 6))
                 for r in self.mask_unstructured_ratios.tolist()]
        specs += [SubnetSpec('block', round(float(r), 6)) for r in self.mask_block_ratios.tolist()]
        specs += [SubnetSpec('nm', n=int(n), m=int(m)) for n, m in self.mask_nm_nm.tolist()]
        specs += [SubnetSpec('channel', round(float(r), 6))
                  for r in self.mask_channel_ratios.tolist()]
        return specs

    @staticmethod
    def _ratio_index(ratios, ratio):
        for i, r in enumerate(ratios.tolist()):
            if abs(r - ratio) < 1e-6:
                return i
        return None

    def channel_keep(self, spec):
        """Bool (Cout,) kept output channels of channel subnet ``spec``, or None if not held."""
        index = self._ratio_index(self.mask_channel_ratios, spec.ratio)
        return None if index is None else self.mask_channel[index]

    def mask_for(self, spec):
        """Bool weight-shaped mask of ``spec`` (a name or spec), or None when the layer is
        dense for it."""
        spec = parse_subnet(spec)
        shape = self._parameters['weight'].shape
        if spec.pattern in ('unstructured', 'block'):
            ratios = getattr(self, f'mask_{spec.pattern}_ratios')
            if self._ratio_index(ratios, spec.ratio) is None:
                return None
            rounded = [round(r, 6) for r in ratios.tolist()]
            level = getattr(self, f'mask_{spec.pattern}_level')
            return level_mask(level, rounded, rounded[self._ratio_index(ratios, spec.ratio)])
        if spec.pattern == 'nm':
            for i, (n, m) in enumerate(self.mask_nm_nm.tolist()):
                if (n, m) == (spec.n, spec.m):
                    return unpack_bits(self.mask_nm_bits[i], shape)
            return None
        if spec.pattern == 'channel':
            keep = self.channel_keep(spec)
            if keep is None:
                return None
            view = [1] * len(shape)
            view[self.out_axis] = -1
            return keep.view(view).expand(shape)
        return None

    def active_channel_mask(self):
        """Kept output channels under the active channel subnet, or None."""
        if self.active_subnet.pattern != 'channel':
            return None
        return self.channel_keep(self.active_subnet)

    def active_mask(self, weight=None):
        """The active subnet's mask in ``weight``'s dtype and device (default: the dense
        weight's), or None for ``dense``; cached until a switch or a mask update."""
        weight = self._parameters['weight'] if weight is None else weight
        spec = self.active_subnet
        if spec.pattern == 'dense':
            return None
        key = (spec, self._mask_version, weight.dtype, weight.device)
        if self._mask_cache is None or self._mask_cache[0] != key:
            mask = self.mask_for(spec)
            self._mask_cache = (key, None if mask is None else mask.to(weight.dtype))
        return self._mask_cache[1]

    # -- state: the cached mask and its version --------------------------------------------
    @property
    def mask_version(self):
        """A counter that changes whenever this layer's masks do (for callers' caches)."""
        return self._mask_version

    def masks_changed(self):
        """Invalidate the cached mask after the mask buffers were changed in place (e.g. by a
        broadcast from another rank); :meth:`set_masks` and loading do this themselves."""
        self._mask_version += 1
        self._mask_cache = None

    def tap_active_mask(self):
        """Make the active subnet's mask, as used by the forward, a fresh leaf tensor that
        requires grad, and return it (None when the layer is dense for the subnet).

        After a backward, ``tap.grad`` is dL/dM = dL/dW_eff * W (W_eff = W * M), from which
        AST recovers the dense gradient that pruned weights need for regrowth. The tap stays
        in use until :meth:`release_tap` (or any mask change).
        """
        mask = self.active_mask()
        if mask is None:
            return None
        tap = mask.detach().clone().requires_grad_(True)
        self._mask_cache = (self._mask_cache[0], tap)
        return tap

    def release_tap(self):
        """Stop using a mask made by :meth:`tap_active_mask` (the next forward rebuilds it)."""
        self._mask_cache = None

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        # A checkpoint defines which subnets it holds: take its mask buffers' shapes.
        for name in _MASK_BUFFERS:
            incoming = state_dict.get(prefix + name)
            current = getattr(self, name)
            if incoming is not None and incoming.shape != current.shape:
                setattr(self, name, torch.empty(incoming.shape, dtype=current.dtype,
                                                device=current.device))
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
        self._mask_version += 1


_MASKED_CLASSES = {}


def _masked_class(cls):
    """The (cached, picklable) subclass ``Masked<cls>`` of a maskable layer class."""
    if cls not in _MASKED_CLASSES:
        name = 'Masked_' + f'{cls.__module__}.{cls.__qualname__}'.replace('.', '_')
        masked = type(name, (MaskedLayerMixin, cls), {'__module__': __name__})
        masked.__qualname__ = name
        globals()[name] = masked  # so pickle and deepcopy can find the class by name
        _MASKED_CLASSES[cls] = masked
    return _MASKED_CLASSES[cls]


def make_masked(module):
    """Turn a Conv/Linear/ConvTranspose (sub)class instance into a masked layer, in place.

    Returns:
        The same module object, now an instance of ``Masked_<original class>``.
    """
    if isinstance(module, MaskedLayerMixin):
        return module
    if not isinstance(module, MASKABLE_TYPES):
        raise TypeError(f'cannot mask {type(module).__name__}; maskable: '
                        f'{[t.__name__ for t in MASKABLE_TYPES]}')
    module.__class__ = _masked_class(type(module))
    module._init_mask_buffers()
    return module


def original_class(module):
    """The class a masked layer had before :func:`make_masked` (else its class)."""
    cls = type(module)
    if not issubclass(cls, MaskedLayerMixin):
        return cls
    return next(base for base in cls.__bases__ if base is not MaskedLayerMixin)


def unmask_layer(layer):
    """Turn a masked layer back into its original class, in place (weights untouched)."""
    for name in _MASK_BUFFERS:
        layer._buffers.pop(name, None)
    for name in _MASK_ATTRIBUTES:
        layer.__dict__.pop(name, None)
    layer.__class__ = original_class(layer)
    return layer


def is_masked(module):
    return isinstance(module, MaskedLayerMixin)


def masked_layers(model):
    """``{name: layer}`` of every masked layer in ``model``, in module order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, MaskedLayerMixin)}
