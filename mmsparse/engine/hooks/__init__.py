"""Registered mmengine hooks (one per file)."""
from .ast_hook import SparseASTHook
from .chase_hook import ChaseHook
from .finite_loss_hook import FiniteLossHook
from .require_load_from_hook import RequireLoadFromHook
from .rng_state_hook import RNGStateHook
from .sparse_cocktail_hook import SparseCocktailHook
from .sparse_subnets_hook import SparseSubnetsHook
from .spartan_hook import SpartanHook
from .subnet_bn_stats_hook import SubnetBNStatsHook

__all__ = ['ChaseHook', 'FiniteLossHook', 'RequireLoadFromHook', 'RNGStateHook', 'SparseASTHook',
           'SparseCocktailHook', 'SparseSubnetsHook', 'SpartanHook', 'SubnetBNStatsHook']
