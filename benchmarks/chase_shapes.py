"""Chase on the shapes Mask R-CNN: the masked model, its physically slimmed version (before
and after BatchNorm recalibration) and the dense model: COCO mAP, parameters, MACs and CPU
inference latency, all measured in this one process with the same evaluation code.

Usage (after the Chase run of configs/chase/mask-rcnn_r18_fpn_chase_shapes.py)::

    python benchmarks/chase_shapes.py --out benchmarks/results/chase_shapes.json

* mAP: MMDetection's CocoMetric on the shapes val set (64 images), via an mmengine Runner
  holding the model object (a slimmed model has no config of its own).
* params: parameters stored (and how many are non-zero: the unstructured zeros stay stored
  in an ordinary dense model).
* MACs: multiply-accumulates of the conv / linear layers on the first val image; every
  model is counted with the dense model's per-layer call positions (same number of RoIs),
  so the figures differ only by the layers' shapes (and, for the non-zero count, zeros).
* latency: ``model.predict`` on val images one at a time (batch 1), the models interleaved
  image by image after a warm-up, median milliseconds, ``torch.set_num_threads(--threads)``.
"""
import argparse
import copy
import json
import os.path as osp
import statistics
import tempfile
import time

import torch
from mmdet.registry import MODELS
from mmdet.utils import register_all_modules
from mmengine.config import Config
from mmengine.runner import Runner

import mmsparse.datasets  # noqa: F401  (registers the shapes dataset)
import mmsparse.engine  # noqa: F401  (allow-lists mmengine checkpoint globals)
from mmsparse.core import slim_subnet
from mmsparse.core.batchnorm.recalibration import recalibrated_bn
from mmsparse.core.stats import record_positions
from mmsparse.engine.sparse_checkpoint import checkpoint_network
from mmsparse.models import detector_predict_run


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--config', default='configs/chase/mask-rcnn_r18_fpn_chase_shapes.py')
    p.add_argument('--checkpoint', default='work_dirs/chase/iter_600.pth')
    p.add_argument('--dense-config', default='configs/shapes/mask-rcnn_r18_fpn_shapes.py')
    p.add_argument('--dense-checkpoint', default='work_dirs/demo/iter_600.pth')
    p.add_argument('--subnet', default='channel@0.30', help='the channel subnet to slim')
    p.add_argument('--also', default='unstructured@0.50', help='masks folded in too')
    p.add_argument('--recalibrate-bn', type=int, default=20, metavar='N',
                   help='training batches for BatchNorm recalibration of the slimmed model')
    p.add_argument('--latency-images', type=int, default=60)
    p.add_argument('--threads', type=int, default=1)
    p.add_argument('--out', default='benchmarks/results/chase_shapes.json')
    return p.parse_args()


def load_detector(cfg, checkpoint):
    """The detector with the checkpoint's weights and, when it holds masks, its network."""
    model = MODELS.build(cfg.model)
    network = checkpoint_network(model, checkpoint)
    state = torch.load(checkpoint, map_location='cpu', weights_only=True)['state_dict']
    missing, _ = model.load_state_dict(state, strict=False)
    if missing:
        raise RuntimeError(f'{checkpoint} does not match {cfg.filename}: missing {missing[:5]}')
    return model.eval(), network


def evaluate(model, cfg, tag, work_dir):
    """COCO metrics of a model object on the config's test set."""
    runner = Runner(model=model, work_dir=osp.join(work_dir, tag),
                    test_dataloader=copy.deepcopy(cfg.test_dataloader),
                    test_cfg=dict(type='TestLoop'),
                    test_evaluator=copy.deepcopy(cfg.test_evaluator), default_scope='mmdet',
                    experiment_name=f'chase_shapes_{tag}_{time.time_ns()}',
                    log_level='WARNING')
    metrics = runner.test()
    return {k: float(v) for k, v in metrics.items() if k.startswith('coco/')}


def calibration_batches(cfg, count):
    batches = []
    # Seeded: the same calibration images (and flips) on every run.
    for batch in Runner.build_dataloader(copy.deepcopy(cfg.train_dataloader), seed=0):
        batches.append(batch)
        if len(batches) >= count:
            return batches
    return batches


def test_batches(cfg, count):
    loader = Runner.build_dataloader(copy.deepcopy(cfg.test_dataloader))
    dataset = loader.dataset
    return [loader.collate_fn([dataset[i]]) for i in range(min(count, len(dataset)))]


def macs(model, positions):
    """(MACs as stored, MACs of non-zero weights) with the given per-layer positions."""
    modules = dict(model.named_modules())
    stored = nonzero = 0
    for name, count in positions.items():
        weight = modules[name].weight
        stored += weight.numel() * count
        nonzero += int(torch.count_nonzero(weight)) * count
    return stored, nonzero


def latency(models, batches, warmup=3):
    """Median ms per image of each model, interleaved image by image."""
    times = {tag: [] for tag in models}
    with torch.no_grad():
        for i, batch in enumerate(batches):
            for tag, model in models.items():
                start = time.perf_counter()
                detector_predict_run(batch)(model)
                if i >= warmup:
                    times[tag].append((time.perf_counter() - start) * 1000)
    return {tag: statistics.median(t) for tag, t in times.items()}


def main():
    args = parse_args()
    register_all_modules()
    torch.set_num_threads(args.threads)
    cfg = Config.fromfile(args.config)
    dense_cfg = Config.fromfile(args.dense_config)
    work_dir = tempfile.mkdtemp(prefix='chase_shapes_')

    model, network = load_detector(cfg, args.checkpoint)
    if network is None:
        raise RuntimeError(f'{args.checkpoint} holds no masks')
    network.set_active(args.also)  # the trained (masked) network
    slim = slim_subnet(network, args.subnet, also=[args.also]).eval()
    dense, _ = load_detector(dense_cfg, args.dense_checkpoint)

    # The slimmed model computes what the masked one does (before recalibration).
    sample = test_batches(cfg, 1)[0]
    with torch.no_grad():
        data = model.data_preprocessor(sample, False)
        masked_feats = model.extract_feat(data['inputs'])
        slim_feats = slim.extract_feat(data['inputs'])
    feature_diff = max(float((a - b).abs().max()) for a, b in zip(masked_feats, slim_feats))

    positions = record_positions(dense, detector_predict_run(sample))
    models = {'dense': dense, 'chase_masked': model, 'chase_slimmed': slim}
    results = {}
    for tag, m in models.items():
        stored, nonzero = macs(m, positions)
        results[tag] = dict(params=sum(p.numel() for p in m.parameters()),
                            params_nonzero=sum(int(torch.count_nonzero(p))
                                               for p in m.parameters()),
                            macs=stored, macs_nonzero=nonzero)
    results['dense'].update(evaluate(dense, dense_cfg, 'dense', work_dir))
    results['chase_masked'].update(evaluate(model, cfg, 'masked', work_dir))
    results['chase_slimmed'].update(evaluate(slim, cfg, 'slimmed', work_dir))
    batches = calibration_batches(cfg, args.recalibrate_bn)
    recal = f'chase_slimmed_bn{args.recalibrate_bn}'
    with recalibrated_bn(slim, lambda m: [detector_predict_run(b)(m) for b in batches]):
        results[recal] = dict(results['chase_slimmed'])
        results[recal].update(evaluate(slim, cfg, 'slimmed_recal', work_dir))
    speed = latency(models, test_batches(cfg, args.latency_images))
    for tag, ms in speed.items():
        results[tag]['latency_ms'] = ms
    results[recal]['latency_ms'] = speed['chase_slimmed']
    results['layers'] = {
        name: dict(density=float(layer.mask_for(args.also).float().mean()),
                   channels=layer.out_channels_count,
                   channels_kept=(int(layer.channel_keep(network.resolve(args.subnet)).sum())
                                  if name in network.channel_layers else None))
        for name, layer in network.layers.items()}
    results['meta'] = dict(config=args.config, checkpoint=args.checkpoint,
                           dense_checkpoint=args.dense_checkpoint, subnet=args.subnet,
                           also=args.also, recalibrate_bn=args.recalibrate_bn,
                           threads=args.threads, latency_images=args.latency_images,
                           slim_vs_masked_max_feature_diff=feature_diff)
    with open(args.out, 'w') as f:
        json.dump(results, f, indent=2)
    print(f'slimmed vs masked: max |feature difference| {feature_diff:.2e}')
    print('| model | bbox mAP | segm mAP | params (M) | non-zero params (M) | GMACs | '
          'non-zero GMACs | CPU ms/img |')
    print('|---|---|---|---|---|---|---|---|')
    for tag, r in results.items():
        if tag in ('meta', 'layers'):
            continue
        nan = float('nan')  # an untrained model can have no detections, hence no mAP
        print(f"| {tag} | {r.get('coco/bbox_mAP', nan):.3f} | "
              f"{r.get('coco/segm_mAP', nan):.3f} | "
              f"{r['params'] / 1e6:.2f} | {r['params_nonzero'] / 1e6:.2f} | "
              f"{r['macs'] / 1e9:.3f} | {r['macs_nonzero'] / 1e9:.3f} | "
              f"{r['latency_ms']:.1f} |")
    print('per layer: unstructured density, kept/all channels')
    for name, r in results['layers'].items():
        kept = '' if r['channels_kept'] is None else f"  {r['channels_kept']}/{r['channels']}"
        print(f"  {name}: {r['density']:.3f}{kept}")
    print(f'written to {args.out}')


if __name__ == '__main__':
    main()
