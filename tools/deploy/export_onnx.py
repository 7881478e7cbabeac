"""Export a detector's (or a subnet's) tensor parts to ONNX, runnable in ONNX Runtime (CPU).

Examples::

    # a subnet of an mmsparse checkpoint (dense and unstructured / N:M / block folded,
    # channel slimmed, exactly as tools/export_subnet.py does)
    python tools/deploy/export_onnx.py CONFIG CKPT --subnet nm@2:4 --out onnx/nm24
    # several subnets: one folder each under --out (a progress bar runs)
    python tools/deploy/export_onnx.py CONFIG CKPT --subnet dense,channel@0.30 --out onnx/
    # a model tools/export_subnet.py wrote (its config + weights): no --subnet
    python tools/deploy/export_onnx.py u50.py u50.pth --out onnx/u50

Each folder gets ``features.onnx`` (backbone, neck, dense head), for two-stage detectors
``bbox_head.onnx`` and ``mask_head.onnx`` (RoI heads, dynamic RoI count), ``config.py``
(the model config whose post-processing runs around them) and ``manifest.json``. Run it
with ``mmsparse.deploy.OrtDetector.from_dir(folder)`` (for a pickled module, whose config has
no model entry: ``OrtDetector(module, folder)``). The export is written to a temporary
folder beside the target, run in ONNX Runtime on a random input and compared with PyTorch
(the largest difference per graph is printed); only when it is within ``--tolerance`` is it
moved into place, so a failed run leaves the target as it was.

Existing outputs are refused unless ``--force`` is given, inputs are never overwritten; the
check runs before anything is loaded.
"""
import argparse
import os
import os.path as osp
import shutil
import tempfile

from mmdet.utils import register_all_modules
from mmengine.config import DictAction
from mmengine.utils import ProgressBar

import mmsparse.engine  # noqa: F401  (allow-lists mmengine checkpoint globals)
from mmsparse.core import parse_subnet, parse_subnets
from mmsparse.core.subnets import SubnetNameError
from mmsparse.deploy.onnx_export import MANIFEST, OnnxExportError, export_onnx
from mmsparse.deploy.ort_detector import compare_with_torch
from mmsparse.deploy.subnet_model import default_shape, plain_model, subnet_models
from mmsparse.engine.export_config import plain_config
from mmsparse.engine.sparse_checkpoint import (checkpoint_subnet_names, read_checkpoint,
                                               tool_config)
from mmsparse.utils.safe_write import atomic_write_json, atomic_write_text, check_outputs

FILES = ('features.onnx', 'bbox_head.onnx', 'mask_head.onnx', 'config.py', MANIFEST)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('config', help='an mmsparse training config (with --subnet) or the '
                   'config of an exported model')
    p.add_argument('checkpoint', help='a sparse checkpoint (with --subnet) or exported weights')
    p.add_argument('--subnet', '--subnets', dest='subnet', default=None,
                   help="subnet name(s), comma-separated, or 'all'; leave out for a plain model")
    p.add_argument('--out', required=True, help='output folder (one subfolder per subnet when '
                   'several are exported)')
    p.add_argument('--shape', type=int, nargs=2, metavar=('H', 'W'), default=None,
                   help='preprocessed input size of the features graph (default: the test '
                   "pipeline's Resize scale, with keep_ratio a square of its long side, padded "
                   "to the preprocessor's divisor)")
    p.add_argument('--legacy-exporter', action='store_true',
                   help='use the TorchScript-based exporter (torch.onnx.export(dynamo=False)) '
                   'instead of the dynamo one')
    p.add_argument('--tolerance', type=float, default=1e-3,
                   help='fail when ONNX Runtime differs from PyTorch by more than this, '
                   'relative to the largest PyTorch output magnitude (at least 1)')
    p.add_argument('--force', action='store_true', help='overwrite existing outputs')
    p.add_argument('--cfg-options', nargs='+', action=DictAction, help='override config settings')
    return p.parse_args(argv)


def requested_subnets(args):
    """The subnets named on the command line (``'all'`` resolved later), or None."""
    if args.subnet is None:
        return None
    if args.subnet.strip() == 'all':
        return 'all'
    subnets = parse_subnets([s for s in args.subnet.split(',') if s.strip()])
    if not subnets:
        raise SubnetNameError(f'--subnet {args.subnet!r} names no subnet')
    return subnets


def out_dirs(out, subnets):
    """One folder per subnet (``out`` itself for one subnet or a plain model)."""
    if subnets is None or len(subnets) == 1:
        return [out]
    return [osp.join(out, s.name.replace(':', '-')) for s in subnets]


def write_one(model, cfg_text, out_dir, shape, args, meta):
    """Export ``model`` into a temporary folder beside ``out_dir``, check it against PyTorch
    and only then move it into place (see ``publish``); return the manifest.

    A failed export or check leaves ``out_dir`` as it was: no folder that looks valid but
    differs from PyTorch, no mix of an old and a new export after ``--force``.
    """
    parent = osp.dirname(osp.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f'.{osp.basename(osp.abspath(out_dir))}.', suffix='.tmp',
                           dir=parent)
    umask = os.umask(0)  # mkdtemp's folder is private; the export folder should not be
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)
    try:
        manifest = export_onnx(model, tmp, shape, dynamo=not args.legacy_exporter,
                               extra_meta=meta)
        atomic_write_text(osp.join(tmp, 'config.py'), cfg_text)
        diffs = compare_with_torch(model, tmp)
        bad = {g: d for g, d in diffs.items() if d['relative'] > args.tolerance}
        if bad:
            raise OnnxExportError(f'{out_dir}: ONNX Runtime differs from PyTorch beyond '
                                  f'--tolerance {args.tolerance}: {bad}; the folder is left as it was')
        manifest['check'] = diffs
        atomic_write_json(osp.join(tmp, MANIFEST), manifest)
        publish(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return manifest


def publish(tmp, out_dir):
    """Move the checked export in ``tmp`` to ``out_dir``: one rename when ``out_dir`` does
    not exist, else file by file (the folder may hold other files, even this run's inputs),
    the old manifest removed first and the new one moved last, so the folder is never a
    valid-looking mix of two exports; outputs of the old export the new one lacks (a mask
    head) are removed."""
    if not osp.exists(out_dir):
        os.rename(tmp, out_dir)
        return
    manifest = osp.join(out_dir, MANIFEST)
    if osp.exists(manifest):
        os.remove(manifest)
    for name in FILES[:-1]:
        src, dst = osp.join(tmp, name), osp.join(out_dir, name)
        if osp.exists(src):
            os.replace(src, dst)
        elif osp.exists(dst):
            os.remove(dst)
    os.replace(osp.join(tmp, MANIFEST), manifest)


def main(argv=None):
    args = parse_args(argv)
    subnets = requested_subnets(args)
    if subnets == 'all':
        state, _ = read_checkpoint(args.checkpoint)
        subnets = [parse_subnet(n) for n in checkpoint_subnet_names(state)]
        del state
    dirs = out_dirs(args.out, subnets)
    check_outputs([osp.join(d, f) for d in dirs for f in FILES],
                  [args.config, args.checkpoint], args.force)
    register_all_modules()
    cfg = tool_config(args)
    meta = dict(config=osp.abspath(args.config), checkpoint=osp.abspath(args.checkpoint))
    if subnets is None:
        models = [(None, plain_model(cfg, args.checkpoint))]
        cfg_text = cfg.pretty_text
    else:
        models = subnet_models(cfg, args.checkpoint, subnets)
        cfg_text = plain_config(cfg).pretty_text
    bar = ProgressBar(len(dirs)) if len(dirs) > 1 else None
    written = []
    for (spec, model), out_dir in zip(models, dirs):
        shape = tuple(args.shape) if args.shape else default_shape(cfg, model)
        info = dict(meta, subnet=spec.name if spec is not None else None)
        written.append((out_dir, write_one(model, cfg_text, out_dir, shape, args, info)))
        if bar is not None:
            bar.update()
    # A pickled module's config has no model entry: from_dir cannot build the detector.
    buildable = cfg.get('model') is not None
    for out_dir, manifest in written:
        label = manifest['subnet'] or osp.basename(args.checkpoint)
        shape = manifest['graphs']['features']['input_shape']
        diffs = ', '.join(f'{g} {d["max_abs_diff"]:.2e}' for g, d in manifest['check'].items())
        run = (f'OrtDetector.from_dir({out_dir!r}).predict(inputs, data_samples)'
               if buildable else
               f'OrtDetector(model, {out_dir!r}).predict(inputs, data_samples) with the '
               f'pickled module of {args.checkpoint} as model (config.py has no model entry)')
        print(f'\n{label} -> {out_dir} ({manifest["kind"]}, input {shape[2]}x{shape[3]}, '
              f'{manifest["exporter"]} exporter)\n  ONNX Runtime vs PyTorch, max abs diff: '
              f'{diffs}\n  run: {run}  # mmsparse.deploy')

if __name__ == '__main__':
    main()
