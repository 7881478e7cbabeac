"""Registered mmengine hooks (one per file)."""
from .sparse_subnets_hook import SparseSubnetsHook

__all__ = ['SparseSubnetsHook']
