"""Channel dependency analysis: which layers' output channels can be removed, and together
with what (residual streams, FPN sums, concatenations), read from one real forward pass."""
from .dependency import ChannelInfo, GraphInfo, analyze_channels

__all__ = ['ChannelInfo', 'GraphInfo', 'analyze_channels']
