"""Registered optimizer wrappers for sparse training."""
from .sparse_optim_wrapper import SparseAmpOptimWrapper, SparseOptimWrapper

__all__ = ['SparseAmpOptimWrapper', 'SparseOptimWrapper']
