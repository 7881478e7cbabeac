"""Deployment outside PyTorch: ONNX export of a detector's tensor parts and an ONNX Runtime
detector that keeps MMDetection's post-processing (see docs/deploy.md)."""
from mmsparse.deploy.onnx_export import OnnxExportError, export_onnx, read_manifest
from mmsparse.deploy.ort_detector import OrtDetector, compare_with_torch

__all__ = ['OnnxExportError', 'OrtDetector', 'compare_with_torch', 'export_onnx',
           'read_manifest']
