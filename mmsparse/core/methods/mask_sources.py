"""Mask sources for Sparse Cocktail: which method chooses the masks of each sparse pattern.

By default unified mask generation (UMG, :mod:`.umg`) makes every pattern's masks from the
magnitude of the shared weight. Two patterns can instead take their masks from the methods
built for them:

* ``channel`` by **Chase** (:func:`chase_channel_masks`): the cocktail's nested channel
  masks at all its channel ratios, chosen by Chase's UMM score (mean ``|w|`` over the weights
  the unstructured mask of matching rank keeps) with one *global* ranking over all removable
  channels, Chase's per-layer floor ``ceil(beta (1 - r) C)``, and the ratios replayed in
  ascending order as Chase's gradual removal (a channel removed at ratio r stays removed at
  every higher ratio; scores are recomputed at each ratio). ``channel@r`` then removes
  exactly ``round(r N)`` of the ``N`` removable channels of the whole network, not ``r`` of
  every layer;
* ``unstructured`` by **Spartan** (:func:`spartan_unstructured_step`): on an unstructured
  step the forward uses Spartan's dual-averaging weight ``Π_k(m ⊙ w)`` at the trained
  subnet's budget (soft top-k mask ``m``, straight-through gradient to the dense weight),
  and the nested unstructured masks of every ratio are rebuilt from the current weights
  right before it. With unit costs and one global budget, Spartan's hard projection keeps
  the k largest ``|w|``, so the stored nested levels are the global magnitude levels
  (:func:`~.patterns.global_levels`): nested and exact at every ratio by construction.

Everything here is a pure function of the weights and mask buffers (torch only).
"""
import torch

from .chase import channel_floor, select_channels, umm_scores, weight_masks
from ..patterns import SparsitySpecError, global_levels, keep_count, level_mask
from .spartan import spartan_forward
from ..subnets import SubnetSpec
from ..umg import rank_match

# source name -> the patterns it can produce masks for
MASK_SOURCES = {
    'umg': ('unstructured', 'channel', 'nm', 'block'),
    'chase': ('channel', ),
    'spartan': ('unstructured', ),
}
PATTERNS = ('unstructured', 'channel', 'nm', 'block')


def check_mask_sources(sources, held_patterns=None):
    """Validate a ``{pattern: source name}`` mapping; return it complete (``'umg'`` default).

    Args:
        sources: e.g. ``dict(channel='chase', unstructured='spartan')``, or None.
        held_patterns: Patterns the model holds subnets of; None skips that check.

    Raises:
        SparsitySpecError: naming the unknown pattern or source, the source that cannot
            make that pattern, or the pattern the model holds no subnet of.
    """
    sources = dict(sources or {})
    for pattern, source in sources.items():
        if pattern not in PATTERNS:
            raise SparsitySpecError(f'mask_sources: unknown pattern {pattern!r}; patterns: '
                                    f'{PATTERNS}')
        if source not in MASK_SOURCES:
            raise SparsitySpecError(f'mask_sources[{pattern!r}]: unknown source {source!r}; '
                                    f'sources: {sorted(MASK_SOURCES)}')
        if pattern not in MASK_SOURCES[source]:
            can = [p for p, allowed in MASK_SOURCES.items() if pattern in allowed]
            raise SparsitySpecError(f'mask_sources[{pattern!r}]={source!r}: {source} makes '
                                    f'only {list(MASK_SOURCES[source])} masks; {pattern} '
                                    f'masks can come from {can}')
        if (held_patterns is not None and source != 'umg'
                and pattern not in held_patterns):
            raise SparsitySpecError(f'mask_sources[{pattern!r}]={source!r}: the model holds '
                                    f'no {pattern} subnets (it holds {sorted(held_patterns)})')
    return {p: sources.get(p, 'umg') for p in PATTERNS}


def _ratios(network, pattern):
    return sorted(s.ratio for s in network.subnets() if s.pattern == pattern)


# -- channel by Chase -----------------------------------------------------------------------
@torch.no_grad()
def chase_channel_selection(network, channel_ratios, beta=0.5):
    """Choose, Chase's way, the nested kept channels of every removable layer at
    ``channel_ratios`` (a selection from the weights, not a read of stored masks).

    For each ratio r (ascending), the UMM scores are computed with the network's stored
    unstructured mask of matching rank (all weights when it holds no unstructured subnet),
    and the globally lowest-scoring channels still kept are removed
    (:func:`~.chase.select_channels`) until exactly ``round(r N)`` of the ``N`` removable
    channels are removed, each layer keeping at least ``ceil(beta (1 - r) C)``.

    Args:
        network: A :class:`~.attach.SparseNetwork` (its unstructured masks are read).
        channel_ratios: Channel sparsities (fractions of removable channels).
        beta: Chase's floor factor in [0, 1].

    Returns:
        ``{removable layer: bool (K, C)}``, row k the kept channels at the k-th smallest
        ratio; rows are nested (each a subset of the one before).

    Raises:
        SparsitySpecError: if the floors leave too few removable channels for a ratio.
    """
    if not 0.0 <= beta <= 1.0:
        raise SparsitySpecError(f'Chase beta must be in [0, 1], got {beta}')
    ratios = sorted(channel_ratios)
    names = list(network.channel_layers)
    if not names:
        raise SparsitySpecError('channel masks by Chase: no selected layer has removable '
                                'output channels')
    u_ratios = _ratios(network, 'unstructured')
    keeps = {n: torch.ones(network.layers[n].out_channels_count, dtype=torch.bool,
                           device=network.layers[n].dense_weight.device) for n in names}
    total = sum(k.numel() for k in keeps.values())
    rows = {n: [] for n in names}
    for i, ratio in enumerate(ratios):
        rank = rank_match(i, len(ratios), len(u_ratios))
        spec = SubnetSpec('unstructured', u_ratios[rank]) if rank is not None else None
        masks = weight_masks(network, spec) if spec is not None else {
            n: torch.ones_like(network.layers[n].dense_weight, dtype=torch.bool)
            for n in names}
        target = total - keep_count(total, ratio)
        floors = {n: channel_floor(k.numel(), beta, ratio) for n, k in keeps.items()}
        keeps = select_channels(umm_scores(network, masks), keeps, target, floors)
        removed = sum(int((~k).sum()) for k in keeps.values())
        if removed != target:
            raise SparsitySpecError(
                f'channel@{ratio:g} by Chase: the per-layer floors ceil(beta (1 - r) C) with '
                f'beta={beta} allow removing only {removed} of the {target} channels asked '
                f'({total} removable); lower beta')
        for n in names:
            rows[n].append(keeps[n])
    return {n: torch.stack(r) for n, r in rows.items()}


@torch.no_grad()
def chase_channel_masks(network, beta=0.5):
    """Replace the network's channel masks (all its channel ratios) by Chase's choice
    (:func:`chase_channel_selection`); other patterns' masks are left as they are."""
    ratios = _ratios(network, 'channel')
    if not ratios:
        return
    keeps = chase_channel_selection(network, ratios, beta)
    for name, keep in keeps.items():
        network.layers[name].set_masks(channel=(ratios, keep))


# -- unstructured by Spartan ----------------------------------------------------------------
@torch.no_grad()
def store_magnitude_levels(network):
    """Rebuild the nested unstructured levels of every held ratio from the current weights
    with one global budget (Spartan's hard projection at unit costs), and store them.

    Returns:
        The ascending unstructured ratios.
    """
    ratios = _ratios(network, 'unstructured')
    if not ratios:
        return ratios
    scores = {n: layer.dense_weight.detach().abs().float() for n, layer in network.layers.items()}
    for name, level in global_levels(scores, ratios).items():
        network.layers[name].set_masks(unstructured=(ratios, level))
    return ratios


def spartan_unstructured_step(network, masker, spec, beta, through_mask=True):
    """Set up one unstructured step of ``spec`` with Spartan's dual-averaging forward.

    Rebuilds and stores the nested unstructured levels from the current weights, computes
    the soft top-k masks at ``spec``'s budget (from scratch: no solver warm start, so the
    result depends on the weights alone and a resumed run reproduces it), and sets every
    masked layer's forward to ``Π_k(m ⊙ w)`` (:func:`~.spartan.spartan_forward`) whose hard
    mask ``Π_k`` is exactly the stored mask of ``spec``, while ``spec`` is active.

    Args:
        network: The :class:`~.attach.SparseNetwork`.
        masker: A :class:`~.spartan.SpartanMasker` over ``network.layers`` (global, unit
            costs).
        spec: The unstructured subnet trained this step (its ratio is the budget).
        beta: Soft top-k sharpness.
        through_mask: Differentiate through the soft mask too (Spartan).
    """
    ratios = store_magnitude_levels(network)
    if spec.ratio not in ratios:
        raise SparsitySpecError(f'{spec.name} is not an unstructured subnet of this model '
                                f'(ratios {ratios})')
    masker.reset()
    spartan_forward(masker, spec.ratio, beta, through_mask, spec, lambda _, layer: level_mask(
        layer.mask_unstructured_level, ratios, spec.ratio))
