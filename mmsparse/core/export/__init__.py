"""Taking one subnet out as an ordinary model: masks folded into the weights, channel
subnets physically slimmed (:mod:`.slimming`) and rebuilt from their widths
(:mod:`.narrowing`), and the deploy-side helpers (measured sparsity, plain values for JSON,
2:4 semi-structured conversion, :mod:`.deploy`)."""
from .deploy import (ExportError, is_two_four, measured_sparsity, plain_value,
                     semi_structured_needs_half, semi_structured_support, to_semi_structured)
from .narrowing import NarrowingError, narrow_modules, narrowed_spec
from .slimming import SlimmingError, channel_keep, fold_masks, slim_channels, slim_subnet

__all__ = [
    'ExportError', 'NarrowingError', 'SlimmingError', 'channel_keep', 'fold_masks',
    'is_two_four', 'measured_sparsity', 'narrow_modules', 'narrowed_spec', 'plain_value',
    'semi_structured_needs_half', 'semi_structured_support', 'slim_channels', 'slim_subnet',
    'to_semi_structured'
]
