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
        for lname in network.channel_layers:
            keep = network.layers[lname].channel_keep(spec)
            if keep is None:
                continue
            dropped = int((~keep).sum())
            if network.layers[lname]._parameters.get('bias') is not None:
                removed += dropped
            for follower in network.graph.channels[lname].followers:
                norm = modules[follower]
                removed += dropped * sum(p is not None for p in (norm.weight, norm.bias))
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
