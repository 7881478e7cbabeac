"""Fixtures of the tools/export_subnet.py tests: the tiny Mask R-CNN trained briefly with
three subnets' masks attached, its in-checkpoint metrics and its exports.

Test modules import the fixtures by name. Each is computed once per test session (cached
under pytest's base temporary folder), however many modules use it: the training run and
the tool runs are the slow part.
"""
import json
import textwrap
import types

import pytest
import torch

from conftest import TINY_CONFIG, assert_ok, load_tool, run_tool

SUBNETS = 'unstructured@0.3,nm@2:4,channel@0.25'
NAMES = ['unstructured@0.30', 'nm@2:4', 'channel@0.25']
ITERS = 100
_DONE = {}  # (base temporary folder, fixture name) -> value


def _once(tmp_path_factory, name, make):
    key = (str(tmp_path_factory.getbasetemp()), name)
    if key not in _DONE:
        _DONE[key] = make()
    return _DONE[key]


@pytest.fixture(scope='module')
def sparse_checkpoint(tmp_path_factory, tiny_data):
    """The tiny Mask R-CNN trained briefly on the 8 training images (and evaluated there, so
    every subnet's metrics are non-zero), with three subnets' masks attached."""
    def make():
        root = tmp_path_factory.mktemp('export')
        cfg = root / 'tiny_eval.py'
        cfg.write_text(textwrap.dedent(f'''
            _base_ = ['{TINY_CONFIG}']
            _ann = 'annotations/instances_train.json'
            train_cfg = dict(max_iters={ITERS}, val_interval=1000)
            default_hooks = dict(checkpoint=dict(interval={ITERS}), logger=dict(interval=50))
            param_scheduler = [dict(type='ConstantLR', factor=1.0, by_epoch=False, begin=0,
                                    end={ITERS})]
            val_dataloader = dict(dataset=dict(ann_file=_ann))
            test_dataloader = val_dataloader
            val_evaluator = dict(ann_file='{tiny_data}/' + _ann)
            test_evaluator = val_evaluator
        '''))
        assert_ok(run_tool(['tools/train.py', cfg, '--work-dir', root / 'train']))
        dense = root / 'train' / f'iter_{ITERS}.pth'
        sparse = root / 'sparse.pth'
        _attach_masks(cfg, dense, sparse)
        return dict(root=root, cfg=cfg, dense=dense, sparse=sparse)
    return _once(tmp_path_factory, 'sparse_checkpoint', make)


def _attach_masks(cfg, dense, out):
    """What tools/misc/attach_masks.py does, in this process (one interpreter start less)."""
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    from mmengine.config import Config
    from mmengine.runner import load_checkpoint

    import mmsparse.engine  # noqa: F401  (allow-lists mmengine checkpoint globals)
    from mmsparse.core import generate_masks
    from mmsparse.models import sparsify_detector
    register_all_modules()
    model = MODELS.build(Config.fromfile(str(cfg)).model)
    checkpoint = load_checkpoint(model, str(dense), map_location='cpu')
    generate_masks(sparsify_detector(model), SUBNETS.split(','))
    torch.save(dict(meta=checkpoint['meta'], state_dict=model.state_dict()), out)


@pytest.fixture(scope='module')
def in_checkpoint(sparse_checkpoint, tmp_path_factory):
    """tools/test.py's metrics of the three subnets inside the sparse checkpoint."""
    def make():
        root = sparse_checkpoint['root']
        result = run_tool(['tools/test.py', sparse_checkpoint['cfg'],
                           sparse_checkpoint['sparse'], '--subnets', SUBNETS, '--work-dir',
                           root / 'test', '--out', root / 'in_checkpoint.json'])
        assert_ok(result)
        return json.loads((root / 'in_checkpoint.json').read_text())
    return _once(tmp_path_factory, 'in_checkpoint', make)


@pytest.fixture(scope='module')
def exported(sparse_checkpoint, tmp_path_factory):
    """The three subnets exported into one folder: (the folder, the tool's output)."""
    def make():
        root = sparse_checkpoint['root']
        result = run_tool(['tools/export_subnet.py', sparse_checkpoint['cfg'],
                           sparse_checkpoint['sparse'], '--subnet', SUBNETS, '--out',
                           root / 'exported'])
        assert_ok(result)
        return root / 'exported', result.stdout + result.stderr
    return _once(tmp_path_factory, 'exported', make)


@pytest.fixture(scope='module')
def pickled(sparse_checkpoint, tmp_path_factory):
    """The channel subnet exported the opt-in way: the slimmed module pickled."""
    def make():
        out = sparse_checkpoint['root'] / 'pickled' / 'channel@0.25.pth'
        result = run_tool(['tools/export_subnet.py', sparse_checkpoint['cfg'],
                           sparse_checkpoint['sparse'], '--subnet', 'channel@0.25',
                           '--pickle-module', '--out', out])
        assert_ok(result)
        return out, result.stdout + result.stderr
    return _once(tmp_path_factory, 'pickled', make)


def export_api():
    """The tool's library side (the package modules it calls), its ``write_one`` and the
    script module itself (``script``: ``main``, ``check_request``, ``how_to_load``)."""
    from mmsparse.core.export.deploy import ExportError
    from mmsparse.engine import export_config, subnet_export
    from mmsparse.engine.sparse_checkpoint import load_sparse_detector
    script = load_tool('tools/export_subnet.py')
    return types.SimpleNamespace(
        ExportError=ExportError, load_sparse_detector=load_sparse_detector,
        export_model=subnet_export.export_model, bn_source=subnet_export.bn_source,
        plain_config=export_config.plain_config,
        find_mmsparse_types=export_config.find_mmsparse_types, write_one=script.write_one,
        script=script)


def export_args(checkpoint, **overrides):
    """The parsed command line ``write_one`` reads, for in-process exports."""
    import argparse
    values = dict(checkpoint=str(checkpoint), recalibrate_bn=0, semi_structured=False,
                  pickle_module=False, divisor=1)
    return argparse.Namespace(**{**values, **overrides})
