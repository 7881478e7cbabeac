"""Subnets of Mask R-CNN in ONNX Runtime on the CPU, next to PyTorch eager: latency,
speed-up over dense, FLOP-ideal speed-up, parameters and ONNX file sizes.

Each subnet is taken out as ``tools/export_subnet.py`` does (``slim_subnet``: masks folded,
channel subnets physically slimmed) and exported with ``mmsparse.deploy.export_onnx`` (the
features graph: backbone, FPN and RPN head; the RoI box and mask heads as two more graphs).
Timed per subnet, interleaved round by round so that drift in machine load hits all alike:

* ``features``: the features graph alone (ONNX Runtime ``run_features`` / the same
  ``FeaturesGraph`` module in PyTorch eager): where almost all the FLOPs are;
* ``detector``: the whole ``predict`` on one image (``OrtDetector.predict``: the ONNX graphs
  plus MMDetection's own post-processing in PyTorch - proposals, NMS, RoIAlign, mask
  pasting / ``model.predict`` in eager).

``--openvino`` also times the same ``features.onnx`` compiled by OpenVINO for the CPU
(``pip install openvino``; not a project requirement).

FLOPs (multiply-adds) are counted by ``mmengine.analysis.FlopAnalyzer`` on the exported
module (the features graph; the whole detector with the RoI heads on the dense model's
proposals), so the ideal speed-up is what dense kernels would gain: for ``nm@2:4`` and
``unstructured@`` it is 1.0 (a dense runtime multiplies the zeros). ``params_nonzero``
counts the nonzero weights.

The default model is MMDetection's ``mask-rcnn_r50_fpn_1x_coco.py`` with random weights (no
download). As in ``channel_slimming_r50.py``, one class's logit bias is raised so that the
mask head runs on 100 detections as for a busy real image, and ``--same-boxes`` zeroes the
box-scoring layers' weights so every model proposes the same boxes (random weights give two
unrelated networks otherwise). ``--config/--checkpoint`` measure another detector (e.g. the
shapes model with trained weights); masks are made by unified mask generation on its weights.

Usage (from the repository root)::

    python benchmarks/onnx_runtime_subnets.py --size 800 1333 --threads 1 --same-boxes \\
        --divisor 8 --out benchmarks/results/onnx_runtime_r50_coco_size.json
    python benchmarks/onnx_runtime_subnets.py --size 128 128 --threads 1 --divisor 8 \\
        --config configs/shapes/mask-rcnn_r18_fpn_shapes.py \\
        --checkpoint work_dirs/dense_t1024_3600_seed0/iter_3600.pth \\
        --openvino --out benchmarks/results/onnx_runtime_shapes.json
"""
import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import torch
from mmdet.registry import MODELS
from mmdet.testing import demo_mm_inputs
from mmdet.utils import register_all_modules
from mmengine.analysis import FlopAnalyzer
from mmengine.config import Config
from mmengine.logging import MMLogger
from mmengine.runner import load_checkpoint

from mmsparse.core import DENSE, generate_masks
from mmsparse.core.export.slimming import slim_subnet
from mmsparse.deploy.onnx_export import FeaturesGraph, detector_kind, export_onnx
from mmsparse.deploy.ort_detector import OrtDetector
from mmsparse.evaluation.flops import fixed_proposals, model_flops
from mmsparse.models import sparsify_detector

from channel_slimming_r50 import fix_boxes  # benchmarks/ (scripts run from there)
from core_mask_rcnn_r50 import build_model
from report import report_figures

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'tools/analysis_tools'))
from benchmark_subnets import summarize, time_runs  # noqa: E402

SUBNETS = ('dense', 'channel@0.30', 'channel@0.50', 'channel@0.65', 'nm@2:4',
           'unstructured@0.80')


def load_model(config, checkpoint):
    """The default random-init R-50 Mask R-CNN, or ``config`` (+ ``checkpoint``)."""
    if config is None:
        return build_model()
    register_all_modules()
    cfg = Config.fromfile(config)
    if cfg.model.get('backbone', {}).get('init_cfg'):
        cfg.model.backbone.init_cfg = None  # no download
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    if checkpoint:
        load_checkpoint(model, checkpoint, map_location='cpu', strict=False)
    return model.eval()


def openvino_features(path, threads, array):
    """A no-argument callable running the ONNX features graph in OpenVINO on the CPU."""
    import openvino as ov
    compiled = ov.Core().compile_model(str(path), 'CPU', {'INFERENCE_NUM_THREADS': threads})
    request = compiled.create_infer_request()
    return lambda: request.infer({0: array})


def onnx_size_mb(folder):
    files = [f for f in Path(folder).glob('*.onnx')]
    return (sum(f.stat().st_size for f in files) / 2**20,
            Path(folder, 'features.onnx').stat().st_size / 2**20)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--size', type=int, nargs=2, default=[800, 1333], metavar=('H', 'W'))
    parser.add_argument('--config', help='detector config (default: random-init R-50 '
                        'Mask R-CNN of MMDetection)')
    parser.add_argument('--checkpoint', help='weights for --config (dense)')
    parser.add_argument('--subnets', default=','.join(SUBNETS))
    parser.add_argument('--repeat', type=int, default=5)
    parser.add_argument('--warmup', type=int, default=1)
    parser.add_argument('--threads', type=int, default=1,
                        help='threads of ONNX Runtime and of torch alike')
    parser.add_argument('--divisor', type=int, default=1,
                        help='also measure each channel subnet with its kept channels rounded '
                        'up to a multiple of this (export_subnet.py --divisor), as <name>/d<D>')
    parser.add_argument('--channel-groups', action='store_true')
    parser.add_argument('--same-boxes', action='store_true')
    parser.add_argument('--parts', default='features,detector',
                        help='what to time: features (the graph), detector (whole predict)')
    parser.add_argument('--openvino', action='store_true',
                        help='also time the features graph in OpenVINO (pip install openvino)')
    parser.add_argument('--keep-onnx', help='folder to keep the ONNX exports in')
    parser.add_argument('--out', help='write the figures as JSON')
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    load_before = os.getloadavg()
    names = args.subnets.split(',')
    height, width = args.size

    MMLogger.get_current_instance().setLevel('WARNING')
    model = load_model(args.config, args.checkpoint)
    if args.config is None:
        with torch.no_grad():  # confident detections, see the module docstring
            model.roi_head.bbox_head.fc_cls.bias[0] = 5.0
    with torch.enable_grad():
        network = sparsify_detector(model, channel_groups=args.channel_groups)
    generate_masks(network, [DENSE, *[n for n in names if n != 'dense']])
    if args.same_boxes:
        fix_boxes(model)
    model.eval()
    num_classes = getattr(model.roi_head.bbox_head, 'num_classes', 2) \
        if hasattr(model, 'roi_head') else 2
    packed = demo_mm_inputs(batch_size=1, image_shapes=[(3, height, width)], num_items=[1],
                            num_classes=num_classes, with_mask=False)
    network.set_active(DENSE)
    data = model.data_preprocessor(packed, False)
    inputs, samples = data['inputs'], data['data_samples']
    proposals = fixed_proposals(model, inputs, samples)
    shape = tuple(inputs.shape[-2:])  # padded to the preprocessor's size divisor

    tmp = tempfile.TemporaryDirectory()
    root = Path(args.keep_onnx or tmp.name)
    fns, figures = {}, {}
    variants = [(name, 1) for name in names] + [
        (name, args.divisor) for name in names if name.startswith('channel')
        and args.divisor > 1]
    names = [name if d == 1 else f'{name}/d{d}' for name, d in variants]
    for (subnet, divisor), name in zip(variants, names):
        m = slim_subnet(network, subnet, divisor=divisor).eval()
        folder = root / name.replace('@', '').replace(':', '-').replace('/', '_')
        folder.mkdir(parents=True, exist_ok=True)
        export_onnx(m, str(folder), shape)
        ort = OrtDetector(m, str(folder), threads=args.threads)
        graph = FeaturesGraph(m, detector_kind(m)).eval()
        tag = name.replace('@', '').replace('/', '_')
        figures[f'{tag}_params'] = sum(p.numel() for p in m.parameters())
        figures[f'{tag}_params_nonzero'] = sum(int((p != 0).sum()) for p in m.parameters())
        figures[f'{tag}_features_gflops'] = FlopAnalyzer(graph, (inputs,)).total() / 1e9
        figures[f'{tag}_detector_gflops'] = model_flops(m, inputs, samples, proposals) / 1e9
        figures[f'{tag}_onnx_mb'], figures[f'{tag}_features_onnx_mb'] = onnx_size_mb(folder)
        figures[f'{tag}_ort_detections'] = len(ort.predict(inputs, samples)[0].pred_instances)
        figures[f'{tag}_eager_detections'] = len(m.predict(inputs, samples)[0].pred_instances)
        array = inputs.numpy()
        fns[(name, 'ort', 'features')] = lambda o=ort, a=array: o.run_features(a)
        fns[(name, 'ort', 'detector')] = lambda o=ort: o.predict(inputs, samples)
        fns[(name, 'eager', 'features')] = lambda g=graph: g(inputs)
        if args.openvino:
            fns[(name, 'openvino', 'features')] = openvino_features(
                folder / 'features.onnx', args.threads, array)
        fns[(name, 'eager', 'detector')] = lambda m=m: m.predict(inputs, samples)
        print(f'exported {name}', flush=True)
    del model, network

    parts = args.parts.split(',')
    fns = {key: fn for key, fn in fns.items() if key[2] in parts}
    times = time_runs(fns, args.warmup, args.repeat)
    for (name, runtime, part), runs in times.items():
        tag = name.replace('@', '').replace('/', '_')
        stats = summarize(runs)
        figures[f'{tag}_{runtime}_{part}_ms'] = stats['latency_ms']
        figures[f'{tag}_{runtime}_{part}_iqr_ms'] = stats['latency_iqr_ms']
    for name in names:
        tag = name.replace('@', '').replace('/', '_')
        for part in ('features', 'detector'):
            ideal = figures[f'dense_{part}_gflops'] / figures[f'{tag}_{part}_gflops']
            figures[f'{tag}_{part}_ideal_speedup'] = ideal
            for runtime in ('ort', 'eager', 'openvino'):
                if f'{tag}_{runtime}_{part}_ms' not in figures:
                    continue
                speedup = (figures[f'dense_{runtime}_{part}_ms']
                           / figures[f'{tag}_{runtime}_{part}_ms'])
                figures[f'{tag}_{runtime}_{part}_speedup'] = speedup
                figures[f'{tag}_{runtime}_{part}_efficiency'] = speedup / ideal
    figures = dict(image=[height, width], padded=list(shape), config=args.config,
                   divisor=args.divisor,
                   checkpoint=args.checkpoint, channel_groups=args.channel_groups,
                   same_boxes=args.same_boxes, threads=args.threads, repeat=args.repeat,
                   warmup=args.warmup, load_avg_before=list(load_before),
                   load_avg_after=list(os.getloadavg()), **dict(sorted(figures.items())))
    report_figures(figures)
    if args.out:
        figures['runs_ms'] = {'/'.join(k): t for k, t in times.items()}
        Path(args.out).write_text(json.dumps(figures, indent=2))


if __name__ == '__main__':
    main()
