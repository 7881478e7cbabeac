"""Benchmark mmsparse's core on MMDetection's Mask R-CNN R-50 FPN (random init, CPU).

Measures, for the 24 Sparse Cocktail subnets:

* time to analyse channel dependencies and attach the masked layers;
* time to generate all 24 subnets' masks (unified mask generation; goal < 2 s);
* time to switch the active subnet (goal < 1 ms), against loading a separate checkpoint;
* inference time of the sparse model with ``dense`` active against the unmodified model
  (goal <= 1.05x), and with a sparse subnet active;
* checkpoint size with all masks against the dense checkpoint (goal <= 1.5x).

Usage::

    python benchmarks/core_mask_rcnn_r50.py [--size 512] [--repeats 7] [--out results.json]
"""
import argparse
import copy
import io
import statistics
import tempfile
import time
from pathlib import Path

import torch
from mmdet.registry import MODELS
from mmdet.testing import demo_mm_inputs
from mmdet.utils import register_all_modules
from mmengine.config import Config

from mmsparse.core import cocktail_subnets, generate_masks
from mmsparse.models import sparsify_detector

from report import report_figures  # benchmarks/report.py (scripts run from here)

CONFIG = 'mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py'


def build_model():
    register_all_modules()
    with tempfile.TemporaryDirectory() as tmp:
        cfg_file = Path(tmp, 'r50.py')
        cfg_file.write_text(f"_base_ = ['{CONFIG}']\n")
        cfg = Config.fromfile(str(cfg_file))
    cfg.model.backbone.init_cfg = None
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    return model.eval()


def timed(fn, repeats):
    """Median wall time of ``fn()`` over ``repeats`` runs (after one warm-up)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def checkpoint_bytes(state_dict):
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    return buffer.tell()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--size', type=int, default=512, help='square input image side')
    parser.add_argument('--repeats', type=int, default=7)
    parser.add_argument('--out', help='write the figures as JSON')
    args = parser.parse_args()
    torch.set_grad_enabled(False)

    model = build_model()
    original = copy.deepcopy(model)
    start = time.perf_counter()
    with torch.enable_grad():
        net = sparsify_detector(model)
    attach_s = time.perf_counter() - start
    subnets = cocktail_subnets()
    umg_s = timed(lambda: generate_masks(net, subnets), 3)

    names = [s.name for s in net.subnets()]
    switches = 2400
    start = time.perf_counter()
    for i in range(switches):
        net.set_active(names[i % len(names)])
    switch_ms = (time.perf_counter() - start) / switches * 1e3
    net.set_active('dense')

    dense_state = original.state_dict()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, 'dense.pth')
        torch.save(dense_state, path)
        reload_ms = timed(lambda: original.load_state_dict(
            torch.load(path, map_location='cpu', weights_only=True)), 3) * 1e3

    packed = demo_mm_inputs(batch_size=1, image_shapes=[(3, args.size, args.size)],
                            num_items=[2], num_classes=2, with_mask=True)
    data = model.data_preprocessor(packed, False)

    def infer(m):
        return lambda: m.predict(data['inputs'], data['data_samples'])
    # Interleave the two models so drift in machine load hits both alike.
    unmodified, dense_active = [], []
    for _ in range(args.repeats):
        unmodified.append(timed(infer(original), 1))
        dense_active.append(timed(infer(model), 1))
    net.set_active('unstructured@0.49')
    sparse_active = timed(infer(model), args.repeats)
    net.set_active('dense')

    figures = dict(
        params=sum(p.numel() for p in model.parameters()),
        masked_layers=len(net.layers), channel_layers=len(net.channel_layers),
        attach_s=attach_s, umg_24_subnets_s=umg_s, switch_ms=switch_ms,
        reload_checkpoint_ms=reload_ms, image=args.size,
        infer_unmodified_s=statistics.median(unmodified),
        infer_dense_active_s=statistics.median(dense_active),
        infer_unstructured049_s=sparse_active,
        ckpt_dense_mb=checkpoint_bytes(dense_state) / 2**20,
        ckpt_sparse_mb=checkpoint_bytes(model.state_dict()) / 2**20)
    figures['dense_overhead_x'] = figures['infer_dense_active_s'] / figures['infer_unmodified_s']
    figures['ckpt_ratio'] = figures['ckpt_sparse_mb'] / figures['ckpt_dense_mb']
    report_figures(figures, args.out)


if __name__ == '__main__':
    main()
