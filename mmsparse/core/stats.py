"""Measured sparsity, parameter and FLOP counts of a subnet: what it really keeps.

Counts come from the masks themselves, not from the nominal ratio: a channel subnet also
drops its removed channels' biases, the following BatchNorm's affine parameters and the
consumers' matching input-channel weights. FLOPs are multiply-accumulates of the
conv / linear / transposed-conv layers (mmengine's convention: one MAC = one FLOP), counted
from the number of output (or input, for transposed convs) positions each layer computed in
one recorded forward, times the weights it keeps.
"""
from dataclasses import asdict, dataclass

import torch
from torch import nn

from .attach import channel_companions, channel_keep
from .layers import MASKABLE_TYPES
from .subnets import DENSE, parse_subnet


@dataclass
class SubnetStats:
    """Counts for one subnet.

    Attributes:
        sparsity: Fraction of the masked layers' weights the subnet removes.
        params: Parameters the subnet keeps (whole model).
        params_dense: Parameters of the dense model.
        flops: MACs of the weighted layers for the recorded input.
        flops_dense: The same for the dense model.
    """
    name: str
    sparsity: float
    params: int
    params_dense: int
    flops: int
    flops_dense: int

    def as_dict(self):
        return asdict(self)


def _positions(module, inputs, output):
    """How many times each weight is used in one call (output/input positions, rows)."""
    if isinstance(module, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
        x = inputs[0]
        return x.numel() // x.shape[1]
    if isinstance(module, nn.Linear):
        x = inputs[0]
        return x.numel() // x.shape[-1]
    return output.numel() // output.shape[1]


@torch.no_grad()
def record_positions(model, run, types=MASKABLE_TYPES):
    """``{layer name: positions}`` summed over all calls of one ``run(model)``."""
    positions, handles = {}, []
    for name, module in model.named_modules():
        if isinstance(module, types):
            def hook(mod, inputs, output, name=name):
                positions[name] = positions.get(name, 0) + _positions(mod, inputs, output)
            handles.append(module.register_forward_hook(hook))
    was_training = model.training
    try:
        model.eval()
        run(model)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return positions


def subnet_stats(network, name, positions):
    """:class:`SubnetStats` of subnet ``name`` of a :class:`~.attach.SparseNetwork`.

    Args:
        network: The sparse network.
        name: A subnet name the network holds.
        positions: From :func:`record_positions` on the same model.
    """
    spec = parse_subnet(name)
    model = network.model
    modules = dict(model.named_modules())
    params_dense = sum(p.numel() for p in model.parameters())
    masks = network.effective_masks(spec) if spec != DENSE else {}
    masked_total = sum(layer.dense_weight.numel() for layer in network.layers.values())
    masked_removed = removed = 0
    for lname, mask in masks.items():
        dropped = 0 if mask is None else int((~mask).sum())
        removed += dropped  # includes unmasked consumers' dead input channels
        if lname in network.layers:
            masked_removed += dropped
    if spec.pattern == 'channel':
        # a removed channel's bias and BatchNorm affine entries (parameters; not statistics)
        for lname, keep in channel_keep(network, spec, all_layers=True).items():
            owned = channel_companions(modules, network.graph, lname)
            removed += int((~keep).sum()) * sum(isinstance(t, nn.Parameter) for *_, t in owned)
    flops = flops_dense = 0
    for lname, count in positions.items():
        module = modules[lname]
        weight = getattr(module, 'dense_weight', None)
        weight = module.weight if weight is None else weight
        flops_dense += weight.numel() * count
        mask = masks.get(lname)
        flops += (weight.numel() if mask is None else int(mask.sum())) * count
    return SubnetStats(spec.name, masked_removed / max(masked_total, 1), params_dense - removed,
                       params_dense, flops, flops_dense)
