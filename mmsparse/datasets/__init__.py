"""Datasets: the embedded synthetic shapes dataset and early dataset-path checks."""
from .checks import DatasetPathError, check_dataset_paths
from .shapes import CLASSES, ShapesSpec, make_shapes_dataset
from .shapes_dataset import ShapesDataset

__all__ = ['CLASSES', 'DatasetPathError', 'ShapesDataset', 'ShapesSpec', 'check_dataset_paths',
           'make_shapes_dataset']
