"""GPU latency of exported Mask R-CNN R-50 FPN subnets: slimmed channel subnets and the
2:4 subnet with semi-structured sparse kernels, against dense (random init, no download).

Subnets (masks from unified mask generation on the random weights):

* ``channel@0.30`` / ``channel@0.50``: physically slimmed by ``slim_subnet`` (an ordinary,
  smaller model on dense kernels);
* ``nm@2:4``: masks folded in (dense-shaped, zeros), run on dense kernels, and again with its
  2:4 ``nn.Linear`` layers (the RoI box head's two shared FCs) converted by
  ``mmsparse.core.export.deploy.to_semi_structured`` (cuSPARSELt). cuSPARSELt has no fp32 kernels
  and CUTLASS's need compute capability 8.x, so on a Hopper GPU only the fp16 rows can use
  them. Convolutions stay dense: torch has no 2:4 convolution.

Each model runs MMDetection's ``model.predict`` on a preprocessed batch of synthetic images,
in fp32 and in fp16 (``torch.autocast``, as mmengine's ``TestLoop(fp16=True)`` runs it), at
batch 1 and batch 8; runs are interleaved across models (``time_runs``), CUDA-synchronised,
median and IQR reported. ``efficiency = measured speed-up / ideal`` with ideal = dense MACs /
exported MACs. A microbenchmark of the two FC shapes alone (1000 RoIs) shows the kernel-level
2:4 speed-up.

As in ``channel_slimming_r50.py`` the RoI classifier's bias is raised for one class, so
post-processing keeps 100 detections per image and the mask head runs as on a busy image.

Usage (from the repository root, on a CUDA machine)::

    python benchmarks/gpu_subnets_r50.py --size 800 1216 --repeat 20 \\
        --out benchmarks/results/gpu_subnets_r50.json
"""
import argparse
import copy
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from mmdet.testing import demo_mm_inputs
from mmengine.logging import MMLogger

from mmsparse.core import DENSE, generate_masks, record_positions
from mmsparse.core.export.deploy import to_semi_structured
from mmsparse.core.export.slimming import slim_subnet
from mmsparse.models import detector_predict_run, sparsify_detector

from core_mask_rcnn_r50 import build_model  # benchmarks/ (scripts run from there)
from report import report_figures

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'tools/analysis_tools'))
from benchmark_subnets import predictor, summarize, time_runs  # noqa: E402
from channel_slimming_r50 import exported_counts  # noqa: E402

SUBNETS = ('dense', 'channel@0.30', 'channel@0.50', 'nm@2:4')


def semi_structured_copy(model, layer_names):
    """A copy of the 2:4 model whose 2:4 Linear layers hold fp16 semi-structured weights."""
    sparse = copy.deepcopy(model)
    converted, _ = to_semi_structured(sparse, layer_names, torch.float16)  # cuSPARSELt: fp16
    return sparse, converted


def fc_microbenchmark(model, rois, repeat):
    """ms of each 2:4 FC at its detector shape (``rois`` rows), fp16, dense vs
    semi-structured kernels."""
    from torch.sparse import to_sparse_semi_structured
    out = {}
    head = model.roi_head.bbox_head
    for i, fc in enumerate(head.shared_fcs):
        w = fc.weight.detach().half()
        x = torch.randn(rois, w.shape[1], device='cuda', dtype=torch.float16)
        s = to_sparse_semi_structured(w)
        fns = {'dense': lambda x=x, w=w: F.linear(x, w),
               'semi': lambda x=x, s=s: F.linear(x, s)}
        times = time_runs(fns, 10, repeat, 'cuda')
        d, s_ = (summarize(times[k])['latency_ms'] for k in ('dense', 'semi'))
        out[f'fc{i}_{w.shape[1]}x{w.shape[0]}'] = dict(dense_ms=d, semi_ms=s_, speedup=d / s_)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--size', type=int, nargs=2, default=(800, 1216), metavar=('H', 'W'))
    parser.add_argument('--batches', type=int, nargs='*', default=(1, 8),
                        help='detector batch sizes (none: the FC microbenchmark alone)')
    parser.add_argument('--fc-rois', type=int, nargs='+', default=(1000, 8000),
                        help='rows of the FC microbenchmark (RoIs: 1000 per image)')
    parser.add_argument('--repeat', type=int, default=20)
    parser.add_argument('--warmup', type=int, default=5)
    parser.add_argument('--out')
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit('gpu_subnets_r50: needs a CUDA GPU')
    torch.set_grad_enabled(False)
    torch.backends.cudnn.benchmark = True
    MMLogger.get_current_instance().setLevel('WARNING')
    model = build_model()
    with torch.no_grad():  # confident detections, see the module docstring
        model.roi_head.bbox_head.fc_cls.bias[0] = 5.0
    with torch.enable_grad():
        network = sparsify_detector(model)
    generate_masks(network, [DENSE, *SUBNETS[1:]])
    model.eval()
    network.set_active(DENSE)
    one = demo_mm_inputs(1, [(3, *args.size)], num_items=[1], num_classes=2, with_mask=False)
    positions = record_positions(model, detector_predict_run(one))  # MACs of one image
    nm_layers = list(network.layers)
    exported = {name: slim_subnet(network, name).cuda().eval() for name in SUBNETS}
    del model, network
    figures = dict(device=torch.cuda.get_device_name(), torch=torch.__version__,
                   image=list(args.size), repeat=args.repeat, warmup=args.warmup)
    for name, m in exported.items():
        params, macs = exported_counts(m, positions)
        figures[f'{name}_params'] = params
        figures[f'{name}_gmacs'] = macs / 1e9
    semi, converted = semi_structured_copy(exported['nm@2:4'], nm_layers)
    figures['semi_structured_layers'] = converted
    for rois in args.fc_rois:
        figures[f'fc_microbenchmark_fp16_{rois}rois'] = fc_microbenchmark(
            exported['nm@2:4'], rois, args.repeat * 5)
    for batch_size in args.batches:
        batch = demo_mm_inputs(batch_size, [(3, *args.size)] * batch_size,
                               num_items=[1] * batch_size, num_classes=2, with_mask=False)
        fns = {}
        for fp16 in (False, True):
            precision = 'fp16' if fp16 else 'fp32'
            for name, m in exported.items():
                fns[(name, precision)] = predictor(m, batch, 'cuda', fp16)
            if fp16:
                fns[('nm@2:4-semi', precision)] = predictor(semi, batch, 'cuda', True)
        with torch.inference_mode():
            for key, fn in fns.items():
                figures[f'b{batch_size}_{key[0]}_{key[1]}_detections'] = sum(
                    len(s.pred_instances) for s in fn())
        times = time_runs(fns, args.warmup, args.repeat, 'cuda')
        for (name, precision), t in times.items():
            stats = summarize(t)
            tag = f'b{batch_size}_{name}_{precision}'
            figures[f'{tag}_ms'] = stats['latency_ms']
            figures[f'{tag}_iqr_ms'] = stats['latency_iqr_ms']
        for precision in ('fp32', 'fp16'):
            dense = figures[f'b{batch_size}_dense_{precision}_ms']
            for name in SUBNETS[1:3]:
                measured = dense / figures[f'b{batch_size}_{name}_{precision}_ms']
                ideal = figures['dense_gmacs'] / figures[f'{name}_gmacs']
                figures[f'b{batch_size}_{name}_{precision}_speedup'] = measured
                figures[f'b{batch_size}_{name}_{precision}_efficiency'] = measured / ideal
        figures[f'b{batch_size}_nm@2:4-semi_fp16_speedup'] = (
            figures[f'b{batch_size}_dense_fp16_ms'] / figures[f'b{batch_size}_nm@2:4-semi_fp16_ms'])
    report_figures({k: v for k, v in figures.items() if not isinstance(v, (list, dict))})
    print(json.dumps({k: v for k, v in figures.items() if k.startswith('fc_')}, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(figures, indent=2))


if __name__ == '__main__':
    main()
