"""Per-layer density allocation for a global parameter budget.

Erdős–Rényi-Kernel (ERK), as in RigL (Evci et al., 2020): a layer with weight shape
``(d_1, ..., d_k)`` gets density proportional to ``(sum d_i / prod d_i) ** power_scale``, so
small layers (few weights per dimension) stay denser. Layers whose density would exceed 1
are made dense and the remaining budget is spread over the rest, repeatedly, until no layer
exceeds 1. The total number of kept weights equals ``density * total`` up to rounding.
"""
import math


def _check_density(density):
    if not isinstance(density, (int, float)) or isinstance(density, bool):
        raise TypeError(f'density must be a number, got {type(density).__name__}')
    if not 0.0 < float(density) <= 1.0:
        raise ValueError(f'density must be in (0, 1], got {density}')


def erk_densities(shapes, density, power_scale=1.0):
    """ERK density per layer for a global ``density`` (fraction of weights kept).

    Args:
        shapes: ``{name: torch.Size}`` of the weights to allocate over (any rank >= 1).
        density: Fraction of all those weights to keep, in (0, 1].
        power_scale: Exponent on the ERK ratio (1.0 is RigL's ERK; 0.0 gives uniform).

    Returns:
        ``{name: density in (0, 1]}`` with ``sum(d * numel) == density * total`` (floats;
        the caller rounds to whole weights).

    Raises:
        ValueError: ``density`` outside (0, 1], empty ``shapes`` or an empty weight.
    """
    _check_density(density)
    if not shapes:
        raise ValueError('erk_densities needs at least one layer shape')
    numel, raw = {}, {}
    for name, shape in shapes.items():
        dims = [int(d) for d in shape]
        n = math.prod(dims)
        if not dims or n == 0:
            raise ValueError(f'layer {name!r} has an empty weight shape {tuple(shape)}')
        numel[name] = n
        raw[name] = (sum(dims) / n) ** power_scale
    if density == 1.0:
        return {name: 1.0 for name in shapes}
    total = sum(numel.values())
    dense = set()
    while True:
        # Solve eps * sum(raw * n over sparse layers) = budget left after the dense layers.
        budget = density * total - sum(numel[n] for n in dense)
        weighted = sum(raw[n] * numel[n] for n in shapes if n not in dense)
        eps = budget / weighted
        over = [n for n in shapes if n not in dense and eps * raw[n] > 1.0]
        if not over:
            break
        # Make the most over-budget layer dense (as RigL does) and re-solve: capping one at a
        # time keeps layers that only exceed 1 because of it sparse.
        dense.add(max(over, key=lambda n: raw[n]))
    return {n: 1.0 if n in dense else eps * raw[n] for n in shapes}
