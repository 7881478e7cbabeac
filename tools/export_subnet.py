"""Export subnets of an mmsparse checkpoint as models a plain MMDetection install can run.

Examples::

    # unstructured / N:M / block / dense: an ordinary mmengine checkpoint (masks folded in)
    python tools/export_subnet.py CONFIG CKPT --subnet unstructured@0.50 --out u50.pth
    # channel: physically slimmed; a checkpoint + a config that rebuilds the slimmed model
    python tools/export_subnet.py CONFIG CKPT --subnet channel@0.30 --out c30.pth
    # ... or, opt-in, the slimmed nn.Module pickled (loads without mmsparse; trust needed)
    python tools/export_subnet.py CONFIG CKPT --subnet channel@0.30 --pickle-module --out c30.pth
    # several subnets into a folder, one file each
    python tools/export_subnet.py CONFIG CKPT --subnet nm@2:4,channel@0.30 --out exported/

Every export writes ``<out>.py`` next to ``<out>.pth``: the config with mmsparse's own types
replaced by MMDetection's (dataset classes by their MMDetection base class and metainfo,
mmsparse hooks and loops dropped), so loading and testing needs no mmsparse, except for a
slimmed channel subnet's model (``type='mmsparse.SlimmedDetector'``, which narrows the
detector the original keys build). The tool
prints how to load what it wrote. BatchNorm statistics are the checkpoint's (the subnet's
own when the checkpoint stores per-subnet statistics) unless ``--recalibrate-bn N`` is
given, so the exported model's metrics equal the subnet's in ``tools/test.py``.

This script parses the command line and orchestrates; the export itself is
``mmsparse.engine.subnet_export`` and the config translation ``mmsparse.engine.export_config``.

The tool never overwrites its inputs (the config, the checkpoint) and refuses existing
output files (the ``.pth`` and its ``.py``) unless ``--force`` is given; this is checked
before anything is loaded, and every file is written to a temporary name and renamed. With
several subnets the renames wait until all are written: one that fails leaves no file.
"""
import argparse
import contextlib
import os
import os.path as osp
import textwrap

from mmdet.utils import register_all_modules
from mmengine.config import DictAction
from mmengine.utils import ProgressBar

import mmsparse.engine  # noqa: F401  (allow-lists mmengine checkpoint globals)
from mmsparse.core import DENSE, parse_subnet, parse_subnets
from mmsparse.core.export.deploy import ExportError, semi_structured_support
from mmsparse.core.subnets import SubnetNameError
from mmsparse.engine.export_config import export_paths, exported_config_path, plain_config
from mmsparse.engine.runner.calibration import calibration_batches
from mmsparse.engine.sparse_checkpoint import (checkpoint_subnet_names, load_sparse_detector,
                                               read_checkpoint, tool_config)
from mmsparse.engine.subnet_export import export_subnet, needs_mmsparse
from mmsparse.utils.safe_write import check_outputs


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('config', help='the config the checkpoint was trained (or tested) with')
    p.add_argument('checkpoint', help='an mmsparse checkpoint holding the subnets\' masks')
    p.add_argument('--subnet', '--subnets', dest='subnet', required=True,
                   help="subnet name, comma-separated names or 'all' (then --out is a folder); "
                   '--subnets is the same option')
    p.add_argument('--out', required=True, help='output .pth file (one subnet) or folder')
    p.add_argument('--also', default='', metavar='NAME[,NAME]',
                   help='fold these subnets\' masks in too (ANDed), e.g. --subnet '
                   'channel@0.30 --also unstructured@0.50')
    p.add_argument('--semi-structured', action='store_true',
                   help='nm@2:4 only: convert 2:4 Linear layers with '
                   'torch.sparse.to_sparse_semi_structured (needs a CUDA GPU, compute '
                   'capability 8.0+)')
    p.add_argument('--pickle-module', action='store_true',
                   help='channel subnets: pickle the slimmed nn.Module ({"meta", "model"}, '
                   'loads with torch.load(weights_only=False), no mmsparse needed) instead of '
                   'a checkpoint + a config that rebuilds it')
    p.add_argument('--divisor', type=int, default=1, metavar='D',
                   help='channel subnets: round each slimmed layer\'s kept channels up to a '
                   'multiple of D, restoring the removed channels of largest L1 norm (the '
                   'model is then the subnet plus those channels; consider --recalibrate-bn)')
    p.add_argument('--recalibrate-bn', type=int, default=0, metavar='N',
                   help='re-estimate the exported model\'s BatchNorm statistics on N training '
                   'batches (off by default: metrics then equal tools/test.py\'s)')
    p.add_argument('--force', action='store_true',
                   help='overwrite existing output files (.pth and its .py); never the inputs')
    p.add_argument('--cfg-options', nargs='+', action=DictAction, help='override config settings')
    return p.parse_args(argv)


def check_request(args):
    """Fail before loading anything on requests that cannot work here."""
    also = parse_subnets([s for s in args.also.split(',') if s.strip()])
    if args.divisor < 1:
        raise ExportError(f'--divisor must be a positive int, got {args.divisor}')
    if args.subnet.strip() == 'all':  # resolved once the checkpoint is read
        if args.out.endswith('.pth') or args.semi_structured:
            raise ExportError('--subnet all needs --out to be a folder (and no --semi-structured)')
        return 'all', also
    subnets = parse_subnets([s for s in args.subnet.split(',') if s.strip()])
    if not subnets:
        raise SubnetNameError(f'--subnet {args.subnet!r} names no subnet; pass \'all\' or one '
                              'or more names the checkpoint holds')
    check_channel_options(args, subnets, also)
    if args.semi_structured:
        wrong = [s.name for s in subnets if (s.pattern, s.n, s.m) != ('nm', 2, 4)]
        if wrong or also:
            raise ExportError(f'--semi-structured applies to nm@2:4 alone, got '
                              f'{", ".join(wrong + [s.name for s in also])}')
        reason = semi_structured_support()
        if reason is not None:
            raise ExportError(reason)
    if len(subnets) > 1 and args.out.endswith('.pth'):
        raise ExportError(f'{len(subnets)} subnets need --out to be a folder, got {args.out}')
    if len(subnets) == 1 and not args.out.endswith('.pth'):
        raise ExportError(f'--out must end with .pth for one subnet, got {args.out}')
    return subnets, also


def check_channel_options(args, subnets, also):
    """Refuse --divisor and --pickle-module when no channel subnet is requested: they would
    change nothing (called again for ``--subnet all`` once its names are known)."""
    if any(s.pattern == 'channel' for s in (*subnets, *also)):
        return
    names = ', '.join(s.name for s in (*subnets, *also))
    if args.divisor > 1:
        raise ExportError(f'--divisor rounds channel subnets\' widths, but none is requested '
                          f'({names})')
    if args.pickle_module:
        raise ExportError(f'--pickle-module applies to channel subnets (the others are always '
                          f'written as a state dict), but none is requested ({names})')


def write_one(args, cfg, model, network, spec, also, out, source_meta, batches, files=None):
    """Export one subnet as the command line asks (see ``export_subnet``)."""
    return export_subnet(cfg, model, network, spec, also, out, source_meta, batches,
                         args.checkpoint, args.semi_structured,
                         getattr(args, 'pickle_module', False), getattr(args, 'divisor', 1),
                         files)


def how_to_load(info, out, config_path):
    if needs_mmsparse(info):
        return textwrap.dedent(f'''\
            # like any MMDetection model (mmsparse must be installed: the config's model is
            # mmsparse.SlimmedDetector, which rebuilds the slimmed architecture)
            python tools/test.py {config_path} {out}
            Runner.from_cfg(Config.fromfile('{config_path}')).test()    # load_from is set
            mmdet.apis.init_detector('{config_path}', '{out}')''')
    if info['format'] == 'state_dict':
        return textwrap.dedent(f'''\
            # plain MMDetection (no mmsparse): MMDetection's tools/test.py, the Runner, or
            python tools/test.py {config_path} {out}    # MMDetection's own tools/test.py
            Runner.from_cfg(Config.fromfile('{config_path}')).test()    # load_from is set
            mmdet.apis.init_detector('{config_path}', '{out}')''')
    # Unpickling a 2:4 tensor does not load torch's dispatch table for it (creating one does).
    semi = ('torch.sparse.SparseSemiStructuredTensorCUSPARSELT._load_dispatch_table()\n        '
            if info.get('semi_structured') else '')
    return textwrap.dedent(f'''\
        # plain MMDetection (no mmsparse); a pickled module: load only files you trust
        import torch
        from mmengine.config import Config
        from mmengine.runner import Runner
        cfg = Config.fromfile('{config_path}')
        {semi}model = torch.load('{out}', weights_only=False)['model']
        Runner(model=model, work_dir='work_dirs/exported', test_dataloader=cfg.test_dataloader,
               test_evaluator=cfg.test_evaluator, test_cfg=cfg.test_cfg,
               default_scope='mmdet').test()
        # inference: mmdet.apis.inference_detector(model, 'image.jpg')''')


def check_outputs_of(args, subnets):
    """The model files to write; refuses, before anything slow, outputs that would
    overwrite an input or an existing file (without ``--force``)."""
    outs = export_paths(args.out, subnets)
    check_outputs([*outs, *map(exported_config_path, outs)], [args.config, args.checkpoint],
                  args.force)
    return outs


def main(argv=None):
    args = parse_args(argv)
    subnets, also = check_request(args)
    state, _ = read_checkpoint(args.checkpoint)  # memory-mapped: cheap; names a torn file
    if not isinstance(subnets, list):  # 'all'
        subnets = [parse_subnet(n) for n in checkpoint_subnet_names(state)]
        check_channel_options(args, subnets, also)
    outs = check_outputs_of(args, subnets)
    del state
    register_all_modules()
    cfg = tool_config(args)
    plain_config(cfg)  # fails now, not after loading, if the config cannot be made plain
    model, network, source_meta = load_sparse_detector(cfg, args.checkpoint)
    for spec in (*subnets, *also):  # unknown names fail before anything is written
        if network is not None and spec != DENSE:
            network.resolve(spec)
    os.makedirs(osp.dirname(osp.abspath(outs[0])), exist_ok=True)
    batches = (calibration_batches(cfg.train_dataloader, args.recalibrate_bn)
               if args.recalibrate_bn else [])
    bar = ProgressBar(len(subnets)) if len(subnets) > 1 else None
    written = []
    with contextlib.ExitStack() as files:  # renamed into place once every subnet is written
        for spec, out in zip(subnets, outs):
            info, config_path = write_one(args, cfg, model, network, parse_subnet(spec), also,
                                          out, source_meta, batches, files)
            written.append((info, out, config_path))
            if bar is not None:
                bar.update()
    for info, out, config_path in written:
        label = ' + '.join([info['subnet'], *info['also']])
        if info.get('divisor'):
            label += (f' (widths rounded up to multiples of {info["divisor"]}: '
                      f'{info["restored_channels"]} removed channels restored)')
        if info['recalibrated_bn_batches']:
            label += f' (BatchNorm recalibrated on {info["recalibrated_bn_batches"]} batches)'
        elif info['bn_stats'] == 'stored':
            label += ' (its own BatchNorm statistics, stored in the checkpoint)'
        print(f'\n{label}: sparsity {info["sparsity"]:.4f}, params {info["params"]} '
              f'({info["params_nonzero"]} nonzero; dense {info["params_dense"]}) -> {out} '
              f'[{info["format"]}], config {config_path}')
        print(how_to_load(info, out, config_path))


if __name__ == '__main__':
    main()
