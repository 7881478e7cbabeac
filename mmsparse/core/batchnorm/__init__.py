"""BatchNorm under shared weights: re-estimated statistics for the active subnet
(:mod:`.recalibration`), every subnet's statistics stored in the checkpoint
(:mod:`.stored_stats`), and one set of BN parameters per subnet for AST (:mod:`.switchable`).
The last two keep rows in one order, ``SparseNetwork.subnets()``'s, made and copied by the
helpers of :mod:`.recalibration` (which also lists, saves and restores the BatchNorms).
All three leave frozen BatchNorms (:func:`frozen_batchnorms`) alone unless asked."""
from .recalibration import frozen_batchnorms, recalibrated_bn
from .stored_stats import store_subnet_bn_stats, stored_bn_stats
from .switchable import SwitchableBatchNorm

__all__ = ['SwitchableBatchNorm', 'frozen_batchnorms', 'recalibrated_bn', 'store_subnet_bn_stats',
           'stored_bn_stats']
