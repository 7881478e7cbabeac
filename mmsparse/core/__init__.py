"""Framework-free core of mmsparse: imports torch only (no mmengine, mmdet or mmcv).

The kernel every method uses sits at the top level: subnet names (:mod:`.subnets`), pure
mask functions (:mod:`.patterns`), masked layers (:mod:`.layers`), attaching them to a model
(:mod:`.attach`), unified mask generation (:mod:`.umg`) and measured statistics
(:mod:`.stats`). Around it: :mod:`.graph` (channel dependencies), :mod:`.batchnorm`,
:mod:`.methods` (AST, Chase, Spartan, schedules, ...) and :mod:`.export`.
"""
from .attach import (ChannelOutputMask, LayerSelectionError, SparseNetwork, channel_keep,
                     check_selection, select_layers)
from .batchnorm.switchable import SwitchableBatchNorm
from .export.slimming import SlimmingError, fold_masks, slim_channels, slim_subnet
from .graph import ChannelInfo, GraphInfo, analyze_channels
from .layers import MaskedLayerMixin, is_mask_key, is_masked, make_masked, masked_layers
from .methods.allocation import erk_densities
from .patterns import SparsitySpecError
from .stats import SubnetStats, record_positions, subnet_stats
from .subnets import (DENSE, SubnetNameError, SubnetSpec, cocktail_subnets, parse_subnet,
                      parse_subnets)
from .umg import MaskSpec, generate_masks

__all__ = [
    'ChannelInfo', 'ChannelOutputMask', 'DENSE', 'GraphInfo', 'LayerSelectionError',
    'MaskSpec', 'MaskedLayerMixin', 'SlimmingError', 'SparseNetwork', 'SparsitySpecError',
    'SubnetNameError', 'SubnetSpec', 'SubnetStats', 'SwitchableBatchNorm', 'analyze_channels',
    'channel_keep', 'check_selection', 'cocktail_subnets', 'erk_densities', 'fold_masks',
    'generate_masks', 'is_mask_key', 'is_masked', 'make_masked', 'masked_layers', 'parse_subnet',
    'parse_subnets', 'record_positions', 'select_layers', 'slim_channels', 'slim_subnet',
    'subnet_stats'
]
