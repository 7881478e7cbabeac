"""The shapes dataset as an MMDetection ``CocoDataset`` with its class names and palette."""
from mmdet.datasets import CocoDataset

from mmsparse.registry import DATASETS
from .shapes import CLASSES


@DATASETS.register_module()
class ShapesDataset(CocoDataset):
    """COCO-format synthetic shapes written by ``tools/misc/make_shapes_dataset.py``."""

    METAINFO = dict(classes=CLASSES,
                    palette=[(220, 20, 60), (0, 128, 255), (0, 176, 80), (255, 192, 0),
                             (128, 0, 255)])
