"""Registered mmengine hooks (one per file)."""
from .rng_state_hook import RNGStateHook
from .sparse_cocktail_hook import SparseCocktailHook
from .sparse_subnets_hook import SparseSubnetsHook

__all__ = ['RNGStateHook', 'SparseCocktailHook', 'SparseSubnetsHook']
