"""Helpers of the ONNX tests: the tiny Mask R-CNN (seeded random weights, no training) and
the comparison of two detectors' detections."""
import torch

from conftest import TINY_CONFIG

SUBNETS = ['channel@0.25', 'nm@2:4']
# float32 graphs: ONNX Runtime and PyTorch order sums differently, nothing more.
FEATURE_TOL = 1e-4  # max abs diff / max(1, largest |output|), per graph
BOX_TOL = 1e-3  # pixels


def tiny_detector(seed=0):
    """The tiny config's Mask R-CNN with seeded random weights, in eval mode."""
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    from mmengine.config import Config
    register_all_modules()
    torch.manual_seed(seed)
    return MODELS.build(Config.fromfile(str(TINY_CONFIG)).model).eval()


def assert_same_detections(expected, got):
    """Same detections: count, labels, scores and boxes within float32 noise; masks agree
    on all but a few thresholded pixels."""
    for e, g in zip(expected, got):
        e, g = e.pred_instances, g.pred_instances
        assert len(e) == len(g) > 0
        assert torch.equal(e.labels, g.labels)
        torch.testing.assert_close(g.scores, e.scores, atol=1e-5, rtol=0)
        torch.testing.assert_close(g.bboxes, e.bboxes, atol=BOX_TOL, rtol=0)
        if 'masks' in e:
            assert (e.masks != g.masks).float().mean() < 1e-3
