"""Params, FLOPs and measured inference latency of each subnet's exported model.

Example::

    python tools/analysis_tools/benchmark_subnets.py CONFIG CHECKPOINT \\
        --subnets dense,channel@0.27,nm@2:4 --device cpu --repeat 20 --out-dir bench/

For each subnet the model actually deployed is measured:
``mmsparse.core.export.slimming.slim_subnet``
folds the subnet's masks into the weights and, for channel subnets, physically slices the
removed channels out, leaving an ordinary (smaller) MMDetection model. Its inference
(``model.predict`` on one preprocessed image, ``torch.inference_mode``) is timed after
``--warmup`` runs, ``--repeat`` times; the median and the interquartile range are reported
(CUDA is synchronised around every run). ``--interleave`` times one run of every subnet per
round, so drift in machine load hits all subnets alike (at the cost of holding every
exported model in memory).

Counts per subnet:

* ``params`` / ``flops``: what the subnet keeps (non-zero weights; MACs of the weighted layers
  on the benchmark image, with the dense network's RoIs), as in ``tools/test.py``'s results.
* ``params_exported`` / ``flops_exported``: the exported model's tensor sizes and its
  FLOPs (multiply-adds) counted by ``mmengine.analysis.FlopAnalyzer`` over every operator
  (normalisation and upsampling too) of the tensor-mode forward, the RoI head on the dense
  network's proposals for every subnet (see ``mmsparse/evaluation/flops.py``): what dense
  kernels compute. For channel subnets the removed channels are gone (``params_exported``
  is slightly below ``params``: the exported model also drops the removed channels' inputs
  of the dense prediction layers, which hold no masks and so are not counted there); for
  unstructured and N:M subnets they are the dense counts (zeros are still multiplied unless
  a sparse kernel runs them). ``params`` / ``flops`` add what only mmsparse knows: the
  nonzero weights and MACs each subnet keeps.

Writes ``benchmark.json`` (read by ``tools/select_subnet.py --latency``) and ``benchmark.md``
to ``--out-dir``. The input is the test dataset's first image through the test pipeline, or
a synthetic ``--shape H W`` image. Existing output files are refused unless ``--force``
is given (checked before anything is measured); the inputs are never overwritten.
"""
import argparse
import os.path as osp
import platform
import statistics
import time
from pathlib import Path

import torch
from mmdet.registry import DATASETS
from mmdet.testing import demo_mm_inputs
from mmdet.utils import register_all_modules
from mmengine.config import DictAction
from mmengine.dataset import pseudo_collate
from mmengine.utils import ProgressBar

import mmsparse.datasets  # noqa: F401  (registers the datasets)
import mmsparse.engine  # noqa: F401  (allow-lists checkpoint globals)
from mmsparse.core import DENSE, record_positions, subnet_stats
from mmsparse.core.export.slimming import slim_subnet
from mmsparse.datasets import check_dataset_paths
from mmsparse.engine.runner.subnet_loops import resolve_subnets
from mmsparse.engine.sparse_checkpoint import load_sparse_detector, tool_config
from mmsparse.evaluation.flops import fixed_proposals, model_flops
from mmsparse.evaluation.selection import human
from mmsparse.models import detector_predict_run
from mmsparse.utils.safe_write import atomic_write_json, atomic_write_text, check_outputs


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('config')
    p.add_argument('checkpoint')
    p.add_argument('--subnets', '--subnet', dest='subnets', default='all',
                   help="'all' (every subnet the checkpoint holds) or comma-separated names; "
                   '--subnet is the same option')
    p.add_argument('--device', default='cpu', choices=['cpu', 'cuda'])
    p.add_argument('--repeat', type=int, default=10, help='timed runs per subnet')
    p.add_argument('--warmup', type=int, default=3, help='untimed runs before timing')
    p.add_argument('--shape', type=int, nargs=2, metavar=('H', 'W'),
                   help='synthetic input of this size instead of the first test image')
    p.add_argument('--interleave', action='store_true',
                   help='time the subnets round by round (one run of each in turn) so load '
                   'drift hits all alike; holds every exported model in memory')
    p.add_argument('--threads', type=int, help='torch CPU threads (default: torch\'s)')
    p.add_argument('--out-dir', help='where to write benchmark.json and benchmark.md '
                   '(default: work_dirs/<config name>/benchmark)')
    p.add_argument('--force', action='store_true',
                   help='overwrite benchmark.json / benchmark.md in --out-dir (never an input)')
    p.add_argument('--cfg-options', nargs='+', action=DictAction,
                   help='override config settings')
    args = p.parse_args(argv)
    if args.repeat < 1 or args.warmup < 0:
        p.error('--repeat must be >= 1 and --warmup >= 0')
    if not [s for s in args.subnets.split(',') if s.strip()]:
        p.error(f'--subnets {args.subnets!r} names no subnet; pass \'all\' or names the '
                'checkpoint holds')
    return args


def benchmark_batch(cfg, shape=None):
    """One collated test batch: the test dataset's first image, or a synthetic H x W one."""
    if shape is not None:
        packed = demo_mm_inputs(batch_size=1, image_shapes=[(3, *shape)], num_items=[1],
                                num_classes=2, with_mask=False)
        return packed, f'synthetic {shape[0]}x{shape[1]}'
    check_dataset_paths(cfg, ('test_dataloader', ))
    dataset = DATASETS.build(cfg.test_dataloader.dataset)
    sample = dataset[0]
    return pseudo_collate([sample]), f'test image {sample["data_samples"].img_path}'


def time_runs(fns, warmup, repeat, device='cpu', bar=None):
    """``{key: [ms, ...]}``: ``warmup`` untimed calls of each function, then ``repeat``
    rounds timing one call of every function in turn.

    With several functions the runs are interleaved, so drift in machine load (other jobs,
    CPU clock) hits them alike. Runs under ``torch.inference_mode``; on CUDA every timed
    call is bracketed by synchronisations, so the time is the kernels', not the launch's.
    """
    sync = torch.cuda.synchronize if torch.device(device).type == 'cuda' else (lambda: None)
    times = {key: [] for key in fns}
    with torch.inference_mode():
        for fn in fns.values():
            for _ in range(warmup):
                fn()
        sync()
        for _ in range(repeat):
            for key, fn in fns.items():
                start = time.perf_counter()
                fn()
                sync()
                times[key].append((time.perf_counter() - start) * 1e3)
            if bar is not None:
                bar.update()
    return times


def summarize(times):
    """Median, quartiles and IQR (ms) of a list of run times, and the runs themselves."""
    # 'inclusive' keeps the quartiles within the measured times even for a few runs.
    q1, _, q3 = (statistics.quantiles(times, n=4, method='inclusive') if len(times) > 1
                 else times * 3)
    return dict(latency_ms=statistics.median(times), latency_q1_ms=q1, latency_q3_ms=q3,
                latency_iqr_ms=q3 - q1, latency_runs_ms=times)


def predictor(model, batch, device, fp16=False):
    """A no-argument callable running inference on the batch (preprocessed once, here);
    ``fp16``: under fp16 autocast, as mmengine's ``TestLoop(fp16=True)`` runs it."""
    data = model.data_preprocessor(batch, False)
    inputs = data['inputs'].to(device)
    samples = data['data_samples']
    if not fp16:
        return lambda: model.predict(inputs, samples)

    def run():
        with torch.autocast(torch.device(device).type, dtype=torch.float16):
            return model.predict(inputs, samples)
    return run


def benchmark(model, network, specs, batch, device='cpu', warmup=3, repeat=10,
              interleave=False, progress=True):
    """``{subnet name: counts and latency}`` for the exported model of each subnet.

    Subnets are timed one after the other (one exported model in memory at a time), or,
    with ``interleave``, round by round across all exported models (all held in memory).
    """
    model.to(device)
    if network is not None:
        network.set_active(DENSE)
    positions = record_positions(model, detector_predict_run(batch))
    data = model.data_preprocessor(batch, False)
    inputs, samples = data['inputs'].to(device), data['data_samples']
    proposals = fixed_proposals(model, inputs, samples)  # one set of RoIs for every subnet
    rows, runs = {}, {}
    bar = ProgressBar(len(specs)) if progress and len(specs) > 1 else None
    for spec in specs:
        exported = slim_subnet(network, spec) if network is not None else model
        exported.to(device).eval()
        row = rows[spec.name] = {}
        if network is not None:
            stats = subnet_stats(network, spec, positions)
            row.update(sparsity=stats.sparsity, params=stats.params, flops=stats.flops)
        params = sum(p.numel() for p in exported.parameters())
        flops = model_flops(exported, inputs, samples, proposals)
        row.update(params_exported=params, flops_exported=flops)
        if network is None:
            row.update(sparsity=0.0, params=params, flops=flops)
        run = predictor(exported, batch, device)
        with torch.inference_mode():
            row['detections'] = len(run()[0].pred_instances)
        if interleave:
            runs[spec.name] = run
        else:
            row.update(summarize(time_runs({0: run}, warmup, repeat, device)[0]))
        if bar is not None:
            bar.update()
    if runs:
        print(f'\ntiming {len(runs)} models, interleaved, {repeat} rounds')
        bar = ProgressBar(repeat) if progress else None
        for name, times in time_runs(runs, warmup, repeat, device, bar).items():
            rows[name].update(summarize(times))
    if bar is not None:
        print()
    # Against dense (when measured): the measured speed-up, and the ideal one had latency
    # scaled with the exported model's MACs.
    dense = rows.get('dense')
    for row in rows.values():
        row['speedup'] = dense['latency_ms'] / row['latency_ms'] if dense else None
        row['ideal_speedup'] = (dense['flops_exported'] / row['flops_exported'] if dense
                                else None)
    return rows


def format_markdown(report):
    """The benchmark as a markdown table, with the setting it was measured in."""
    lines = [f'Device: {report["device_name"]} ({report["device"]}, {report["threads"]} '
             f'threads), torch {report["torch"]}. Input: {report["input"]}, '
             f'{report["warmup"]} warm-up + {report["repeat"]} timed runs'
             f'{" (interleaved across subnets)" if report["interleaved"] else ""}, '
             'median (IQR).', '',
             '| subnet | sparsity | params | FLOPs | exported params | exported FLOPs | '
             'latency ms | IQR ms | speed-up vs dense | FLOP ratio (exported) |',
             '|---' * 10 + '|']
    for name, r in report['subnets'].items():
        speed = f'{r["speedup"]:.2f}x' if r.get('speedup') is not None else '-'
        ideal = f'{r["ideal_speedup"]:.2f}x' if r.get('ideal_speedup') is not None else '-'
        lines.append(f'| {name} | {r["sparsity"]:.3f} | {human(r["params"])} | '
                     f'{human(r["flops"])} | {human(r["params_exported"])} | '
                     f'{human(r["flops_exported"])} | {r["latency_ms"]:.1f} | '
                     f'{r["latency_iqr_ms"]:.1f} | {speed} | {ideal} |')
    return '\n'.join(lines) + '\n'


def main(argv=None):
    args = parse_args(argv)
    if args.device == 'cuda' and not torch.cuda.is_available():
        raise SystemExit('benchmark_subnets: --device cuda, but torch sees no CUDA device')
    out_dir = Path(args.out_dir or osp.join(
        'work_dirs', osp.splitext(osp.basename(args.config))[0], 'benchmark'))
    outputs = [out_dir / 'benchmark.json', out_dir / 'benchmark.md']
    check_outputs(outputs, [args.config, args.checkpoint], args.force, '--out-dir')
    if args.threads:
        torch.set_num_threads(args.threads)
    register_all_modules()
    cfg = tool_config(args)
    model, network, _ = load_sparse_detector(cfg, args.checkpoint)
    specs = resolve_subnets(network, args.subnets)
    batch, source = benchmark_batch(cfg, args.shape)
    rows = benchmark(model, network, specs, batch, args.device, args.warmup, args.repeat,
                     args.interleave)
    device_name = (torch.cuda.get_device_name() if args.device == 'cuda'
                   else platform.processor() or platform.machine())
    report = dict(config=args.config, checkpoint=args.checkpoint, device=args.device,
                  device_name=device_name, threads=torch.get_num_threads(),
                  torch=torch.__version__, input=source, warmup=args.warmup,
                  repeat=args.repeat, interleaved=args.interleave,
                  timed='model.predict on the preprocessed input',
                  subnets=rows)
    atomic_write_json(outputs[0], report)
    table = format_markdown(report)
    atomic_write_text(outputs[1], table)
    print(table)
    print(f'written to {out_dir / "benchmark.json"} and {out_dir / "benchmark.md"}')


if __name__ == '__main__':
    main()
