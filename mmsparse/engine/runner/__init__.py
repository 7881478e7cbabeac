"""Registered loops: evaluate many subnets in one test or validation run."""
from .subnet_loops import SubnetTestLoop, SubnetValLoop, resolve_subnets

__all__ = ['SubnetTestLoop', 'SubnetValLoop', 'resolve_subnets']
