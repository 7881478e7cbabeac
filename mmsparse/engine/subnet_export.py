"""Export one subnet of a sparse detector as a model plain MMDetection runs.

``tools/export_subnet.py`` parses the command line and calls :func:`export_subnet` per
subnet. Every subnet is written as an ordinary mmengine checkpoint. Unstructured, N:M, block
and dense subnets keep the config's architecture: the masks are folded into the weights.
Channel subnets are physically slimmed; their config's model becomes
``mmsparse.SlimmedDetector`` with the narrowed widths (``export_config.slimmed_model_config``).
Only on request (``pickle_module``) and for 2:4 semi-structured tensors is the module itself
pickled. Beside each model the plain config (``export_config.plain_config``) is written.
Passing an ``ExitStack`` as ``files`` defers the renames of several exports until all are
written, so a failing subnet leaves none of them behind.
"""
import contextlib
import copy
import os.path as osp

import torch

from mmsparse.core import DENSE, fold_masks
from mmsparse.core.batchnorm.recalibration import recalibrated_bn, restore_bn_stats, save_bn_stats
from mmsparse.core.batchnorm.stored_stats import check_stored_bn_stats, stored_bn_stats
from mmsparse.core.export.deploy import (ExportError, measured_sparsity, plain_value,
                                         semi_structured_needs_half, to_semi_structured)
from mmsparse.core.export.narrowing import NarrowingError, narrowed_spec
from mmsparse.core.export.slimming import slim_subnet_restoring
from mmsparse.engine.export_config import (check_builds, exported_config_path, plain_config,
                                           slimmed_model_config)
from mmsparse.engine.runner.calibration import forward_batches
from mmsparse.utils.safe_write import atomic_path


def recalibrate(model, batches):
    """Re-estimate the exported model's BatchNorm statistics on ``batches`` (momentum kept)."""
    before = save_bn_stats(model)
    with recalibrated_bn(model, forward_batches(batches)):
        calibrated = save_bn_stats(model)
    restore_bn_stats(model, {n: (*calibrated[n][:3], before[n][3]) for n in calibrated})


def export_model(model, network, spec, also, divisor=1):
    """The exported nn.Module and whether its architecture differs from the config's
    (``divisor``: round slimmed layers' kept channels up to its multiples)."""
    return _exported(model, network, spec, also, divisor)[:2]


def _exported(model, network, spec, also, divisor):
    """:func:`export_model`'s pair and how many removed channels ``divisor`` restored."""
    if network is None:
        if spec != DENSE or also:
            raise ExportError(f'subnet {spec.name!r} requested, but the checkpoint holds no '
                              "sparse subnets (no mask buffers): only 'dense' can be exported")
        return copy.deepcopy(model), False, 0
    if any(s.pattern == 'channel' for s in (spec, *also)):
        slimmed, restored = slim_subnet_restoring(network, spec, also, divisor)
        return slimmed, True, restored
    return fold_masks(network, [spec, *also]), False, 0


def subnet_module(model, network, spec, also=(), divisor=1, recalibrating=False):
    """The exported eval-mode module of ``spec`` with the BatchNorm statistics it is
    exported with (the subnet's stored ones where :func:`bn_source` says so).

    Returns:
        (module, whether its architecture differs from the config's, channels ``divisor``
        restored, the BatchNorm source: ``'recalibrated'`` when ``recalibrating``, the
        statistics then left to the caller).
    """
    source = 'recalibrated' if recalibrating else bn_source(0, model, network, also, divisor)
    with stored_bn_stats(network, spec) if source == 'stored' else contextlib.nullcontext():
        exported, slimmed, restored = _exported(model, network, spec, also, divisor)
    return exported.eval(), slimmed, restored, source


def bn_source(recalibrate_bn, model, network, also, divisor=1):
    """Where the exported model's BatchNorm statistics come from: ``'recalibrated'``
    (``recalibrate_bn`` batches), ``'stored'`` (the subnet's own, stored in the checkpoint)
    or ``'trained'``. Stored statistics belong to one subnet, so ``also`` does not use them,
    nor does a ``divisor`` that restores channels (the subnet's statistics of a removed
    channel describe its zeroed output)."""
    if recalibrate_bn:
        return 'recalibrated'
    if (network is not None and not also and divisor == 1
            and check_stored_bn_stats(model, network)):
        return 'stored'
    return 'trained'


def export_subnet(cfg, model, network, spec, also, out, source_meta, batches,
                  source_checkpoint, semi_structured=False, pickle_module=False, divisor=1,
                  files=None):
    """Write subnet ``spec`` (masks of ``also`` ANDed in) to ``out`` and its plain config
    beside it; both go through a temporary file renamed into place.

    Args:
        batches: Training batches to recalibrate BatchNorm on (empty: keep the statistics).
        source_checkpoint: The checkpoint's path, recorded in the exported meta.
        semi_structured: Convert 2:4 layers to ``torch.sparse`` semi-structured tensors.
        pickle_module: Pickle a channel-slimmed module (``{"meta", "model"}``) instead of
            writing its state dict and a config that rebuilds it.
        divisor: Round each slimmed layer's kept-channel count up to a multiple of it.
        files: An ``ExitStack`` that renames the temporary files into place when it closes
            (and removes them when it closes on an error); ``None``: rename them now.

    Returns:
        (the info dict stored under ``meta['mmsparse']``, the config's path).
    """
    exported, slimmed, restored, source = subnet_module(
        model, network, spec, also, divisor, recalibrating=bool(batches))
    if batches:
        recalibrate(exported, batches)
    layer_names = list(network.layers) if network is not None else []
    dense_counts = {n: network.layers[n].dense_weight.numel() for n in layer_names}
    info = dict(subnet=spec.name, also=[s.name for s in also],
                sparsity=measured_sparsity(exported, layer_names, dense_counts),
                params=sum(p.numel() for p in exported.parameters()),
                params_nonzero=sum(int((p != 0).sum()) for p in exported.parameters()),
                params_dense=sum(p.numel() for p in model.parameters()),
                source_checkpoint=osp.abspath(source_checkpoint),
                recalibrated_bn_batches=len(batches), bn_stats=source,
                format=('pickled-module' if (slimmed and pickle_module) or semi_structured
                        else 'state_dict'), slimmed=slimmed)
    if slimmed and divisor != 1:
        info.update(divisor=divisor, restored_channels=restored)
    meta = {k: v for k, v in plain_value(source_meta).items() if not k.startswith('mmsparse')}
    meta['mmsparse'] = info
    config_path = exported_config_path(out)
    plain = plain_config(cfg, None if info['format'] == 'pickled-module' else osp.abspath(out))
    if slimmed and info['format'] == 'state_dict':
        info['narrowed_modules'] = _slimmed_config(plain, model, exported)
    if semi_structured:
        _to_semi_structured(exported, layer_names, info, plain)
    if info['format'] == 'state_dict':
        payload = dict(meta=meta, state_dict=exported.state_dict())
    else:
        # The architecture is no longer the config's: save the module itself (its classes
        # are torch / MMCV / MMDetection ones) with the plain config for inference_detector.
        plain.pop('model', None)
        exported.cfg = plain
        exported.dataset_meta = meta.get('dataset_meta')
        payload = dict(meta=meta, model=exported)
    needs = ('Loads like any MMDetection model; its slimmed architecture needs mmsparse '
             'installed' if needs_mmsparse(info) else 'Loads with MMDetection alone')
    header = (f'# Exported by mmsparse tools/export_subnet.py: subnet {spec.name}'
              f'{" + " + ",".join(info["also"]) if also else ""} -> {osp.basename(out)} '
              f'({info["format"]}).\n# {needs}; see docs/export.md.\n')
    with contextlib.ExitStack() if files is None else contextlib.nullcontext(files) as stack:
        torch.save(payload, stack.enter_context(atomic_path(out)))
        with open(stack.enter_context(atomic_path(config_path)), 'w') as f:
            f.write(header + plain.pretty_text)
    return info, config_path


def needs_mmsparse(info):
    """Whether an export's config builds ``mmsparse.SlimmedDetector`` (some module narrowed;
    a ``divisor`` that restores every channel leaves the detector's own type)."""
    return bool(info.get('narrowed_modules'))


def _slimmed_config(plain, model, exported):
    """Point ``plain``'s model at the slimmed architecture (unless nothing was narrowed) and
    return how many modules it narrows; refuse (naming the layer) a slimming the config
    could not rebuild, before anything is written."""
    try:
        narrowed = narrowed_spec(model, exported)
    except NarrowingError as err:
        raise ExportError(f'{err}; --pickle-module writes the module itself instead') from err
    if narrowed:  # else the detector's own type builds it: no mmsparse needed to load
        slimmed_model_config(plain, narrowed)
    check_builds(plain, exported.state_dict())
    return len(narrowed)


def _to_semi_structured(exported, layer_names, info, plain):
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
