"""BatchNorm under shared weights: re-estimated statistics for the active subnet
(:mod:`.recalibration`), every subnet's statistics stored in the checkpoint
(:mod:`.stored_stats`), and one set of BN parameters per subnet for AST (:mod:`.switchable`)."""
from .recalibration import recalibrated_bn
from .stored_stats import store_subnet_bn_stats, stored_bn_stats
from .switchable import SwitchableBatchNorm

__all__ = ['SwitchableBatchNorm', 'recalibrated_bn', 'store_subnet_bn_stats', 'stored_bn_stats']
