"""CPU latency of slimmed channel subnets of Mask R-CNN R-50 FPN against dense, next to the
FLOP reduction (random init, no download).

For ``channel@0.30`` and ``channel@0.50`` (masks from unified mask generation) the subnet is
exported with ``mmsparse.core.export.slimming.slim_subnet``: removed channels are physically sliced
out, so the exported model is a smaller ordinary MMDetection model. Dense is exported the same
way (an ordinary model without mask machinery), so all three run the same code.

Measured per model, for three parts: the whole detector's inference (``model.predict`` on one
preprocessed image), backbone + FPN (``extract_feat``) and the backbone alone: MACs (of the
conv / linear layers, mmengine's FLOP convention), median latency and IQR, and
``efficiency = measured speed-up / ideal speed-up`` with ideal = dense MACs / slim MACs
(goal: >= 0.8). Runs are interleaved (one run of every model and part in turn, per round) so
drift in machine load hits all alike. One extra profiled run per model gives the share of the
detector's CPU time spent in conv / linear kernels (the part that slimming can shrink).

Random weights give no confident detection (every class scores about 1/81 < ``score_thr``
0.05), so the mask head would never run. The RoI classifier's bias is raised for one class,
so each of the 1000 proposals scores about 0.65 for it: MMDetection's own post-processing
(score threshold, NMS) then keeps ``max_per_img`` = 100 detections, and the mask head runs on
100 RoIs as for a busy real image. (Setting ``score_thr=0`` instead would push all 80,000
class boxes through NMS, a cost no trained model pays.)

``--same-boxes`` gives every model the same proposals and detections. Without it each
exported model proposes its own boxes, and with random weights the dense model and a slimmed
one are two unrelated random networks whose proposals differ in size; RoIAlign's CPU cost
grows with the RoI's area (its sampling grid is adaptive, ``sampling_ratio=0``), so the
models then do different amounts of RoI work for reasons that have nothing to do with their
width. (A trained subnet shares its weights with the dense network and proposes similar
boxes.) The option zeroes the weights, not the biases, of the RPN's objectness and box
regression convs and of the box head's classifier and regressor, after the masks are made:
every anchor gets the same score and no offset, so the proposals are the same anchors in
every model, and so are the 100 detections. Those layers still run at full cost.

``--channel-groups`` builds the subnets with ``SparseSubnetsHook(channel_groups=True)``'s
analysis: the residual streams and the FPN's channels are removable too (kept equal across
each group), so RoIAlign, the RPN conv's and the RoI heads' inputs shrink with them.

Usage (from the repository root)::

    python benchmarks/channel_slimming_r50.py --size 512 --repeat 10 \\
        --out benchmarks/results/channel_slimming_r50.json
    python benchmarks/channel_slimming_r50.py --size 512 --repeat 10 --channel-groups \\
        --out benchmarks/results/channel_slimming_r50_groups.json
    python benchmarks/channel_slimming_r50.py --size 512 --repeat 10 --channel-groups \\
        --same-boxes --out benchmarks/results/channel_slimming_r50_groups_same_boxes.json
    python benchmarks/channel_slimming_r50.py --size 800 1333 --repeat 10 --threads 1 \\
        --channel-groups --same-boxes \\
        --out benchmarks/results/channel_slimming_r50_coco_size_groups.json
"""
import argparse
import json
import os
import sys
from pathlib import Path

import torch
from mmdet.testing import demo_mm_inputs
from mmengine.logging import MMLogger
from torch.profiler import ProfilerActivity, profile

from mmsparse.core import DENSE, generate_masks, record_positions
from mmsparse.core.export.slimming import slim_subnet
from mmsparse.models import detector_predict_run, sparsify_detector

from core_mask_rcnn_r50 import build_model  # benchmarks/ (scripts run from there)
from report import report_figures

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'tools/analysis_tools'))
from benchmark_subnets import predictor, summarize, time_runs  # noqa: E402

SUBNETS = ('channel@0.30', 'channel@0.50')
# part -> prefixes of the layers whose MACs it computes (None: every layer)
PARTS = {'detector': None, 'features': ('backbone.', 'neck.'), 'backbone': ('backbone.', )}
# Profiler ops that run the conv / linear layers' arithmetic (self time is spent in these).
WEIGHTED_OPS = ('conv', 'addmm', 'aten::mm', 'aten::bmm', 'aten::matmul')


def exported_counts(model, positions):
    """(params, MACs) of an exported model: its tensor sizes, and each recorded layer's weight
    size times the output positions it computed (``record_positions``) with dense weights."""
    modules = dict(model.named_modules())
    macs = sum(modules[name].weight.numel() * count for name, count in positions.items()
               if name in modules and hasattr(modules[name], 'weight'))
    return sum(p.numel() for p in model.parameters()), macs


def fix_boxes(model):
    """Same proposals and detections in every exported model (``--same-boxes``, docstring).

    Zeroes the weights (biases kept) of the four layers that turn features into box scores
    and offsets; the slimmed models copy them, and their inputs are all that slimming changes.
    """
    rpn, bbox = model.rpn_head, model.roi_head.bbox_head
    for layer in (rpn.rpn_cls, rpn.rpn_reg, bbox.fc_cls, bbox.fc_reg):
        layer.weight.zero_()


def weighted_share(fn, top=6):
    """Where one profiled call spends its time, by operator self time.

    Returns:
        (ms in conv / linear ops, ms in all ops, {op: ms} of the ``top`` other ops).
    """
    with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    weighted = [e for e in events if any(op in e.key for op in WEIGHTED_OPS)]
    others = sorted((e for e in events if e not in weighted),
                    key=lambda e: -e.self_cpu_time_total)[:top]
    return (sum(e.self_cpu_time_total for e in weighted) / 1e3, total / 1e3,
            {e.key: e.self_cpu_time_total / 1e3 for e in others})


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--size', type=int, nargs='+', default=[512],
                        help='input image side (square), or height and width; '
                        "800 1333 is the size MMDetection's COCO test pipeline resizes to")
    parser.add_argument('--repeat', type=int, default=10, help='timed runs per model and part')
    parser.add_argument('--warmup', type=int, default=2, help='untimed runs per model and part')
    parser.add_argument('--threads', type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument('--channel-groups', action='store_true',
                        help='also remove channels shared by several layers (residual '
                        'streams, FPN outputs)')
    parser.add_argument('--same-boxes', action='store_true',
                        help='identical proposals and detections in every model (zeroes the '
                        'box scoring layers\' weights after the masks are made)')
    parser.add_argument('--out', help='write the figures as JSON')
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    load_before = os.getloadavg()
    if len(args.size) > 2:
        parser.error('--size takes one side (square) or a height and a width')
    height, width = args.size * 2 if len(args.size) == 1 else args.size

    MMLogger.get_current_instance().setLevel('WARNING')  # no init_weights log per parameter
    model = build_model()
    with torch.no_grad():  # confident detections, see the module docstring
        model.roi_head.bbox_head.fc_cls.bias[0] = 5.0
    with torch.enable_grad():
        network = sparsify_detector(model, channel_groups=args.channel_groups)
    generate_masks(network, [DENSE, *SUBNETS])
    if args.same_boxes:
        fix_boxes(model)
    model.eval()
    packed = demo_mm_inputs(batch_size=1, image_shapes=[(3, height, width)],
                            num_items=[1], num_classes=2, with_mask=False)
    # MACs per layer on this image, with the dense network's proposals and detections.
    network.set_active(DENSE)
    positions = record_positions(model, detector_predict_run(packed))

    names = ('dense', *SUBNETS)
    exported = {name: slim_subnet(network, name).eval() for name in names}
    del model, network  # the co-trained model is not what is deployed
    fns, figures = {}, {}
    for name, m in exported.items():
        inputs = m.data_preprocessor(packed, False)['inputs']
        run = predictor(m, packed, 'cpu')
        tag = name.replace('@', '')
        fns[(name, 'detector')] = run
        fns[(name, 'features')] = lambda m=m, x=inputs: m.extract_feat(x)
        fns[(name, 'backbone')] = lambda m=m, x=inputs: m.backbone(x)
        with torch.inference_mode():
            figures[f'{tag}_detections'] = len(run()[0].pred_instances)
        figures[f'{tag}_params'] = exported_counts(m, positions)[0]
        figures[f'{tag}_backbone_params'] = sum(p.numel() for p in m.backbone.parameters())
        for part, prefixes in PARTS.items():
            kept = {k: v for k, v in positions.items()
                    if prefixes is None or k.startswith(prefixes)}
            figures[f'{tag}_{part}_gmacs'] = exported_counts(m, kept)[1] / 1e9

    times = time_runs(fns, args.warmup, args.repeat)  # interleaved across models/parts
    top_other_ops = {}
    for name in names:
        tag = name.replace('@', '')
        weighted, total, others = weighted_share(fns[(name, 'detector')])
        figures[f'{tag}_detector_conv_linear_share'] = weighted / total
        top_other_ops[name] = others
        for part in PARTS:
            stats = summarize(times[(name, part)])
            figures[f'{tag}_{part}_latency_ms'] = stats['latency_ms']
            figures[f'{tag}_{part}_latency_iqr_ms'] = stats['latency_iqr_ms']
    for name in SUBNETS:
        tag = name.replace('@', '')
        for part in PARTS:
            ideal = figures[f'dense_{part}_gmacs'] / figures[f'{tag}_{part}_gmacs']
            measured = figures[f'dense_{part}_latency_ms'] / figures[f'{tag}_{part}_latency_ms']
            figures[f'{tag}_{part}_ideal_speedup'] = ideal
            figures[f'{tag}_{part}_measured_speedup'] = measured
            figures[f'{tag}_{part}_efficiency'] = measured / ideal
    figures = dict(image=[height, width], channel_groups=args.channel_groups,
                   same_boxes=args.same_boxes,
                   threads=torch.get_num_threads(), repeat=args.repeat,
                   warmup=args.warmup, load_avg_before=list(load_before),
                   load_avg_after=list(os.getloadavg()), **dict(sorted(figures.items())))
    report_figures(figures)
    for name, ops in top_other_ops.items():
        print(f'{name}: most time outside conv/linear (ms): ' + ', '.join(
            f'{op} {ms:.0f}' for op, ms in ops.items()))
    if args.out:  # the JSON also holds every run's time
        figures['runs_ms'] = {f'{name}/{part}': t for (name, part), t in times.items()}
        figures['detector_top_other_ops_ms'] = top_other_ops  # one profiled run each
        Path(args.out).write_text(json.dumps(figures, indent=2))


if __name__ == '__main__':
    main()
