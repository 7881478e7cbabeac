"""Per-subnet results: the results JSON, the printed table and the report files."""
from .report import format_table, split_subnet_metrics, write_report

__all__ = ['format_table', 'split_subnet_metrics', 'write_report']
