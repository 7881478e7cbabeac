"""Rebuild a channel-slimmed architecture from a plain description of its widths.

:func:`~.slimming.slim_channels` narrows layers in place, so a slimmed model is no longer
what its config builds. Instead of pickling the module, the export records what slimming
changed, layer by layer (:func:`narrowed_spec`: ``{module name: {attribute: width}}``, plain
ints, fit for a config), and :func:`narrow_modules` applies that record to a freshly built
unslimmed model: it sets the attributes and re-creates the affected parameters and buffers
with the shapes they imply. The slimmed model's ``state_dict`` then loads into it strictly.
"""
import torch
from torch import nn
from torch.nn.modules.batchnorm import _NormBase
from torch.nn.modules.conv import _ConvNd

# The width attributes narrowing rebuilds: slim_channels changes the first five; a
# GroupNorm's num_channels is supported too, though slimming never narrows one (a GroupNorm
# after a layer blocks removing its channels).
WIDTH_ATTRIBUTES = ('in_channels', 'out_channels', 'in_features', 'out_features',
                    'num_features', 'num_channels')


class NarrowingError(ValueError):
    """A narrowing that cannot be rebuilt from widths alone; the message names the module."""


def _width_shapes(module):
    """``{tensor name: shape}`` of a module's own parameters and buffers as its width
    attributes imply them, or ``None`` for a type whose shapes this module cannot derive."""
    if isinstance(module, _ConvNd):
        cin, cout, groups = module.in_channels, module.out_channels, module.groups
        if cin % groups or cout % groups:
            return None
        kernel = tuple(module.kernel_size)
        weight = (cin, cout // groups) if module.transposed else (cout, cin // groups)
        return dict(weight=weight + kernel, bias=(cout, ))
    if isinstance(module, nn.Linear):
        return dict(weight=(module.out_features, module.in_features),
                    bias=(module.out_features, ))
    if isinstance(module, _NormBase):  # BatchNorm*, SyncBatchNorm, InstanceNorm*
        width = (module.num_features, )
        return dict(weight=width, bias=width, running_mean=width, running_var=width,
                    num_batches_tracked=())
    if isinstance(module, nn.GroupNorm):
        if module.num_channels % module.num_groups:
            return None
        return dict(weight=(module.num_channels, ), bias=(module.num_channels, ))
    return None


def _implied_shapes(module, widths):
    """:func:`_width_shapes` of ``module`` with ``widths`` set (the module is unchanged)."""
    before = {a: getattr(module, a) for a in widths}
    try:
        for attr, value in widths.items():
            setattr(module, attr, value)
        return _width_shapes(module)
    finally:
        for attr, value in before.items():
            setattr(module, attr, value)


def _own_tensors(module):
    return {**{k: v for k, v in module._parameters.items() if v is not None},
            **{k: v for k, v in module._buffers.items() if v is not None}}


def _check_rebuildable(name, module, shapes):
    """Refuse a narrowed module whose tensors :func:`narrow_modules` could not re-create:
    ``shapes`` (name -> actual shape) must be what its widths imply."""
    implied = _width_shapes(module)
    if implied is None:
        if shapes:  # e.g. a deformable conv: its weights' shapes are not derived here
            raise NarrowingError(
                f'cannot rebuild the narrowed layer {name} ({type(module).__name__}): '
                f'only Conv/ConvTranspose, Linear, BatchNorm/InstanceNorm and GroupNorm '
                f'layers, or modules without own weights, can be narrowed by widths')
        return
    wrong = {k: tuple(s) for k, s in shapes.items() if k in implied and tuple(s) != implied[k]}
    unknown = sorted(set(shapes) - set(implied))
    if wrong or unknown:
        raise NarrowingError(f'cannot rebuild the narrowed layer {name} '
                             f'({type(module).__name__}): its tensors {wrong or unknown} do '
                             'not follow from its width attributes')


def narrowed_spec(reference, slimmed):
    """What slimming changed: the width attributes that differ between two models.

    Args:
        reference: The unslimmed model (masked layers are fine: only the attributes and the
            tensors both models have are compared).
        slimmed: The same model after :func:`~.slimming.slim_channels`.

    Returns:
        ``{module name: {attribute: int}}`` for every module with a changed width, in module
        order; :func:`narrow_modules` applied to a fresh ``reference`` gives ``slimmed``'s
        architecture.

    Raises:
        NarrowingError: naming a module whose changed tensors :func:`narrow_modules` could
            not re-create (an unsupported layer type, or shapes its widths do not imply).
    """
    before = dict(reference.named_modules())
    spec = {}
    for name, module in slimmed.named_modules():
        old = before.get(name)
        if old is None:
            raise NarrowingError(f'{name} is in the slimmed model but not in the reference')
        changed = {a: getattr(module, a) for a in WIDTH_ATTRIBUTES
                   if hasattr(module, a) and getattr(old, a, None) != getattr(module, a)}
        old_tensors = _own_tensors(old)
        reshaped = {k: t.shape for k, t in _own_tensors(module).items()
                    if k in old_tensors and old_tensors[k].shape != t.shape}
        if not changed and not reshaped:
            continue
        bad = {a: v for a, v in changed.items() if type(v) is not int or v <= 0}
        if bad:
            raise NarrowingError(f'{name}: widths must be positive ints, got {bad}')
        if reshaped and not changed:
            raise NarrowingError(f'cannot rebuild the narrowed layer {name} '
                                 f'({type(module).__name__}): its tensors {sorted(reshaped)} '
                                 'changed shape but none of its width attributes did')
        _check_rebuildable(name, module, {k: t.shape for k, t in _own_tensors(module).items()})
        spec[name] = changed
    return spec


@torch.no_grad()
def narrow_modules(model, narrowed):
    """Narrow ``model`` in place to the widths of a :func:`narrowed_spec`.

    Every listed attribute is set, then the module's own parameters and buffers are
    re-created with the shapes the new widths imply (freshly initialised by the layer's
    ``reset_parameters``: the weights are meant to come from the slimmed model's state dict).

    Args:
        model: The unslimmed model, as its config builds it.
        narrowed: ``{module name: {attribute: int}}``.

    Returns:
        ``model``.

    Raises:
        NarrowingError: an unknown module or attribute, a width that is not a positive int,
            or a layer type whose tensors cannot be re-created; nothing is changed then.
    """
    modules = dict(model.named_modules())
    for name, widths in narrowed.items():
        module = modules.get(name)
        if module is None:
            raise NarrowingError(f'narrowed module {name!r} is not in the model')
        for attr, value in widths.items():
            if attr not in WIDTH_ATTRIBUTES or not hasattr(module, attr):
                raise NarrowingError(f'{name} ({type(module).__name__}) has no width '
                                     f'attribute {attr!r}')
            if type(value) is not int or value <= 0:
                raise NarrowingError(f'{name}.{attr} must be a positive int, got {value!r}')
        if _own_tensors(module) and _implied_shapes(module, widths) is None:
            raise NarrowingError(
                f'cannot rebuild the narrowed layer {name} ({type(module).__name__}): only '
                'Conv/ConvTranspose, Linear, BatchNorm/InstanceNorm and GroupNorm layers, or '
                'modules without own weights, can be narrowed by widths (or its groups do not '
                'divide the new widths)')
    for name, widths in narrowed.items():
        module = modules[name]
        for attr, value in widths.items():
            setattr(module, attr, value)
        shapes = _width_shapes(module)
        if shapes is None:  # no own tensors: the attributes are all (e.g. a RoI extractor)
            continue
        for store in (module._parameters, module._buffers):
            for key, old in store.items():
                if old is None or tuple(old.shape) == shapes[key]:
                    continue
                new = torch.empty(shapes[key], dtype=old.dtype, device=old.device)
                store[key] = (nn.Parameter(new, requires_grad=old.requires_grad)
                              if isinstance(old, nn.Parameter) else new)
        if hasattr(module, 'reset_parameters'):
            module.reset_parameters()
    return model
