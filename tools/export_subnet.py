"""Export subnets of an mmsparse checkpoint as models a plain MMDetection install can run.

Examples::

    # unstructured / N:M / block / dense: an ordinary mmengine checkpoint (masks folded in)
    python tools/export_subnet.py CONFIG CKPT --subnet unstructured@0.50 --out u50.pth
    # channel: physically slimmed, saved as a pickled nn.Module (see docs/export.md)
    python tools/export_subnet.py CONFIG CKPT --subnet channel@0.30 --out c30.pth
    # several subnets into a folder, one file each
    python tools/export_subnet.py CONFIG CKPT --subnet nm@2:4,channel@0.30 --out exported/

Every export writes ``<out>.py`` next to ``<out>.pth``: the config with mmsparse's own types
replaced by MMDetection's (dataset classes by their MMDetection base class and metainfo,
mmsparse hooks and loops dropped), so loading and testing needs no mmsparse. The tool
prints how to load what it wrote. BatchNorm statistics are the checkpoint's (the subnet's
own when the checkpoint stores per-subnet statistics) unless ``--recalibrate-bn N`` is
given, so the exported model's metrics equal the subnet's in ``tools/test.py``.
"""
import argparse
import contextlib
import copy
import os
import os.path as osp
import textwrap

import torch
from mmdet.registry import DATASETS
from mmdet.utils import register_all_modules
from mmengine.config import Config, DictAction
from mmengine.utils import ProgressBar

import mmsparse.engine  # noqa: F401  (allow-lists mmengine checkpoint globals)
from mmsparse.core import DENSE, fold_masks, parse_subnet, parse_subnets, slim_subnet
from mmsparse.core.batchnorm.recalibration import recalibrated_bn, restore_bn_stats, save_bn_stats
from mmsparse.core.export.deploy import (ExportError, measured_sparsity, plain_value,
                                         semi_structured_needs_half, semi_structured_support,
                                         to_semi_structured)
from mmsparse.core.batchnorm.stored_stats import check_stored_bn_stats, stored_bn_stats
from mmsparse.core.subnets import SubnetNameError
from mmsparse.engine.runner.calibration import calibration_batches, forward_batches
from mmsparse.engine.sparse_checkpoint import load_sparse_detector, tool_config


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('config', help='the config the checkpoint was trained (or tested) with')
    p.add_argument('checkpoint', help='an mmsparse checkpoint holding the subnets\' masks')
    p.add_argument('--subnet', required=True,
                   help="subnet name, comma-separated names or 'all' (then --out is a folder)")
    p.add_argument('--out', required=True, help='output .pth file (one subnet) or folder')
    p.add_argument('--also', default='', metavar='NAME[,NAME]',
                   help='fold these subnets\' masks in too (ANDed), e.g. --subnet '
                   'channel@0.30 --also unstructured@0.50')
    p.add_argument('--semi-structured', action='store_true',
                   help='nm@2:4 only: convert 2:4 Linear layers with '
                   'torch.sparse.to_sparse_semi_structured (needs a CUDA GPU, compute '
                   'capability 8.0+)')
    p.add_argument('--recalibrate-bn', type=int, default=0, metavar='N',
                   help='re-estimate the exported model\'s BatchNorm statistics on N training '
                   'batches (off by default: metrics then equal tools/test.py\'s)')
    p.add_argument('--cfg-options', nargs='+', action=DictAction, help='override config settings')
    return p.parse_args()


def check_request(args):
    """Fail before loading anything on requests that cannot work here."""
    also = parse_subnets([s for s in args.also.split(',') if s.strip()])
    if args.subnet.strip() == 'all':  # resolved once the checkpoint is read
        if args.out.endswith('.pth') or args.semi_structured:
            raise ExportError('--subnet all needs --out to be a folder (and no --semi-structured)')
        return 'all', also
    subnets = parse_subnets([s for s in args.subnet.split(',') if s.strip()])
    if not subnets:
        raise SubnetNameError('--subnet needs at least one subnet name')
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


# -- the plain-MMDetection config -------------------------------------------------------------
def _is_mmsparse(value):
    return isinstance(value, str) and value.startswith('mmsparse.')


def _plain_dataset(dataset, renamed):
    """Replace an mmsparse dataset type by its nearest MMDetection base class + metainfo;
    record the replacement in ``renamed``."""
    if isinstance(dataset, dict):
        if _is_mmsparse(dataset.get('type')):
            cls = DATASETS.get(dataset['type'])
            base = next((c for c in cls.__mro__[1:] if c.__module__.startswith('mmdet.')
                         and DATASETS.get(c.__name__) is c), None)
            if base is None:
                raise ExportError(f'dataset {dataset["type"]} has no MMDetection base class; '
                                  'the exported config would need mmsparse')
            renamed[dataset['type']] = base.__name__
            dataset['type'] = base.__name__
            dataset.setdefault('metainfo', plain_value(dict(cls.METAINFO)))
        for key in ('dataset', 'datasets'):
            if key in dataset:
                _plain_dataset(dataset[key], renamed)
    elif isinstance(dataset, (list, tuple)):
        for item in dataset:
            _plain_dataset(item, renamed)


def _find_mmsparse_types(obj, path=''):
    if isinstance(obj, dict):
        for key, value in obj.items():
            if key == 'type' and _is_mmsparse(value):
                yield f'{path}.type={value}'
            yield from _find_mmsparse_types(value, f'{path}.{key}' if path else str(key))
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            yield from _find_mmsparse_types(value, f'{path}[{i}]')


# Top-level config keys mmengine's Runner (Runner.from_cfg) reads.
RUNNER_KEYS = frozenset({
    'model', 'work_dir', 'train_dataloader', 'val_dataloader', 'test_dataloader', 'train_cfg',
    'val_cfg', 'test_cfg', 'auto_scale_lr', 'optim_wrapper', 'param_scheduler',
    'val_evaluator', 'test_evaluator', 'default_hooks', 'custom_hooks', 'data_preprocessor',
    'load_from', 'resume', 'launcher', 'env_cfg', 'log_processor', 'log_level', 'visualizer',
    'default_scope', 'randomness', 'experiment_name', 'model_wrapper_cfg', 'runner_type',
    'custom_imports', 'compile', 'strategy'})


def plain_config(cfg, checkpoint=None):
    """A copy of ``cfg`` that plain MMDetection runs: mmsparse hooks, loops and imports
    dropped, optimizer wrappers and datasets mapped to MMDetection's own types."""
    cfg = Config(copy.deepcopy(cfg._cfg_dict.to_dict()))
    cfg.custom_hooks = [h for h in cfg.get('custom_hooks', None) or []
                        if not _is_mmsparse(h.get('type'))]
    for loop, plain in (('val_cfg', 'ValLoop'), ('test_cfg', 'TestLoop')):
        if _is_mmsparse((cfg.get(loop) or {}).get('type')):
            cfg[loop] = dict(type=plain, fp16=cfg[loop].get('fp16', False))
    wrapper = cfg.get('optim_wrapper') or {}
    if _is_mmsparse(wrapper.get('type')):
        amp = 'Amp' in wrapper['type']
        cfg.optim_wrapper = {k: v for k, v in wrapper.items() if k in (
            'optimizer', 'clip_grad', 'paramwise_cfg', 'accumulative_counts', 'loss_scale')}
        cfg.optim_wrapper['type'] = 'AmpOptimWrapper' if amp else 'OptimWrapper'
    if cfg.get('custom_imports'):
        imports = cfg.custom_imports.get('imports', [])
        imports = [imports] if isinstance(imports, str) else imports
        kept = [i for i in imports if i != 'mmsparse' and not i.startswith('mmsparse.')]
        if kept:
            cfg.custom_imports['imports'] = kept
        else:
            cfg.pop('custom_imports')
    renamed = {}
    for key in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        if cfg.get(key):
            _plain_dataset(cfg[key].get('dataset'), renamed)
    for key, value in list(cfg.items()):  # e.g. the base config's `dataset_type` variable
        if isinstance(value, str) and value in renamed:
            cfg[key] = renamed[value]
    for key in list(cfg.keys()):
        # Top-level helper variables (e.g. `cocktail_val_cfg`, interpolated into val_cfg by
        # the config itself) are not read by the Runner: drop the ones naming mmsparse types.
        if key not in RUNNER_KEYS and list(_find_mmsparse_types({key: cfg[key]})):
            cfg.pop(key)
    left = list(_find_mmsparse_types(cfg._cfg_dict.to_dict()))
    if left:
        raise ExportError(f'the exported config would still need mmsparse: {left}')
    cfg.load_from = checkpoint
    return cfg


# -- export -----------------------------------------------------------------------------------
def recalibrate(model, batches):
    """Re-estimate the exported model's BatchNorm statistics on ``batches`` (kept)."""
    before = save_bn_stats(model)
    with recalibrated_bn(model, forward_batches(batches)):
        calibrated = save_bn_stats(model)
    restore_bn_stats(model, {n: (*calibrated[n][:3], before[n][3]) for n in calibrated})


def export_model(model, network, spec, also):
    """The exported nn.Module and whether its architecture differs from the config's."""
    if network is None:
        if spec != DENSE or also:
            raise ExportError(f'subnet {spec.name!r} requested, but the checkpoint holds no '
                              "sparse subnets (no mask buffers): only 'dense' can be exported")
        return copy.deepcopy(model), False
    slimmed = any(s.pattern == 'channel' for s in (spec, *also))
    if slimmed:
        return slim_subnet(network, spec, also), True
    return fold_masks(network, [spec, *also]), False


def bn_source(args, model, network, also):
    """Where the exported model's BatchNorm statistics come from: ``'recalibrated'``
    (``--recalibrate-bn``), ``'stored'`` (the subnet's own, stored in the checkpoint) or
    ``'trained'``. Stored statistics belong to one subnet, so ``--also`` does not use them."""
    if args.recalibrate_bn:
        return 'recalibrated'
    if network is not None and not also and check_stored_bn_stats(model, network):
        return 'stored'
    return 'trained'


def write_one(args, cfg, model, network, spec, also, out, source_meta, batches):
    source = bn_source(args, model, network, also)
    with stored_bn_stats(network, spec) if source == 'stored' else contextlib.nullcontext():
        exported, slimmed = export_model(model, network, spec, also)
    exported.eval()
    if batches:
        recalibrate(exported, batches)
    layer_names = list(network.layers) if network is not None else []
    dense_counts = {n: network.layers[n].dense_weight.numel() for n in layer_names}
    info = dict(subnet=spec.name, also=[s.name for s in also],
                sparsity=measured_sparsity(exported, layer_names, dense_counts),
                params=sum(p.numel() for p in exported.parameters()),
                params_nonzero=sum(int((p != 0).sum()) for p in exported.parameters()),
                params_dense=sum(p.numel() for p in model.parameters()),
                source_checkpoint=osp.abspath(args.checkpoint),
                recalibrated_bn_batches=args.recalibrate_bn, bn_stats=source,
                format='pickled-module' if slimmed or args.semi_structured else 'state_dict')
    meta = {k: v for k, v in plain_value(source_meta).items() if not k.startswith('mmsparse')}
    meta['mmsparse'] = info
    config_path = osp.splitext(out)[0] + '.py'
    plain = plain_config(cfg, None if info['format'] == 'pickled-module' else osp.abspath(out))
    if args.semi_structured:
        exported.cuda()
        # cuSPARSELt has no fp32 kernels: fp32 layers become fp16, and the exported config
        # runs inference under fp16 autocast.
        dtype = torch.float16 if semi_structured_needs_half(exported, layer_names) else None
        if dtype is not None:
            info['semi_structured_dtype'] = 'float16'
            plain.test_cfg = dict(type='TestLoop', fp16=True)
            plain.val_cfg = dict(type='ValLoop', fp16=True)
        info['semi_structured'], skipped = to_semi_structured(exported, layer_names, dtype)
        info['semi_structured_skipped'] = skipped  # layer -> why it stays dense
        if not info['semi_structured']:
            raise ExportError(f'no layer could be converted to 2:4 semi-structured: {skipped}')
    if info['format'] == 'state_dict':
        torch.save(dict(meta=meta, state_dict=exported.state_dict()), out)
    else:
        # The architecture is no longer the config's: save the module itself (its classes
        # are torch / MMCV / MMDetection ones) with the plain config for inference_detector.
        plain.pop('model', None)
        exported.cfg = plain
        exported.dataset_meta = meta.get('dataset_meta')
        torch.save(dict(meta=meta, model=exported), out)
    header = (f'# Exported by mmsparse tools/export_subnet.py: subnet {spec.name}'
              f'{" + " + ",".join(info["also"]) if also else ""} -> {osp.basename(out)} '
              f'({info["format"]}).\n# Loads with MMDetection alone; see docs/export.md.\n')
    with open(config_path, 'w') as f:
        f.write(header + plain.pretty_text)
    return info, config_path


def how_to_load(info, out, config_path):
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


def main():
    args = parse_args()
    subnets, also = check_request(args)
    register_all_modules()
    cfg = tool_config(args)
    plain_config(cfg)  # fails now, not after loading, if the config cannot be made plain
    model, network, source_meta = load_sparse_detector(cfg, args.checkpoint)
    if subnets == 'all':
        subnets = network.subnets() if network is not None else [DENSE]
    for spec in (*subnets, *also):  # unknown names fail before anything is written
        if network is not None and spec != DENSE:
            network.resolve(spec)
    if len(subnets) > 1 or not args.out.endswith('.pth'):
        os.makedirs(args.out, exist_ok=True)
        outs = [osp.join(args.out, s.name.replace(':', '-') + '.pth') for s in subnets]
    else:
        os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
        outs = [args.out]
    batches = (calibration_batches(cfg.train_dataloader, args.recalibrate_bn)
               if args.recalibrate_bn else [])
    bar = ProgressBar(len(subnets)) if len(subnets) > 1 else None
    written = []
    for spec, out in zip(subnets, outs):
        info, config_path = write_one(args, cfg, model, network, parse_subnet(spec), also, out,
                                      source_meta, batches)
        written.append((info, out, config_path))
        if bar is not None:
            bar.update()
    for info, out, config_path in written:
        label = ' + '.join([info['subnet'], *info['also']])
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
