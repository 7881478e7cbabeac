"""Shared fixtures: the repository paths and the tests' tiny shapes dataset."""
import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from mmsparse.core import is_mask_key
from mmsparse.datasets.shapes import ShapesSpec, dataset_is_current, make_shapes_dataset

REPO = Path(__file__).resolve().parents[1]
# Test helpers (tiny models, trace hooks) import by bare name from every test folder.
sys.path.insert(0, str(REPO / 'tests/helpers'))
TINY_CONFIG = REPO / 'configs/shapes/mask-rcnn_r18_fpn_shapes_tiny.py'
TINY_DATA = REPO / 'data/shapes_tiny'
TINY_SPEC = ShapesSpec(image_size=64, num_train=8, num_val=4, max_objects=3, min_size=0.12,
                       max_size=0.3)


@pytest.fixture(scope='session')
def tiny_data():
    """The tiny shapes dataset the tiny config points at (written once, under data/)."""
    if not dataset_is_current(TINY_DATA, TINY_SPEC):
        make_shapes_dataset(TINY_DATA, TINY_SPEC)
    return TINY_DATA


def run_tool(args, cwd=REPO, env=None, timeout=600):
    """Run a command from the repository root with this interpreter; return the result.

    ``args[0]`` may be a ``tools/...py`` script (run with this Python) or ``bash``.
    """
    full_env = dict(os.environ, PYTHON=sys.executable, PYTHONPATH=str(REPO / 'tests/helpers'),
                    OMP_NUM_THREADS='1', **(env or {}))
    cmd = [sys.executable, *args] if str(args[0]).endswith('.py') else list(args)
    return subprocess.run([str(c) for c in cmd], cwd=cwd, env=full_env, capture_output=True,
                          text=True, timeout=timeout)


def assert_ok(result):
    """Fail with the tool's own output when it exited non-zero."""
    assert result.returncode == 0, (f'exit {result.returncode}\nSTDOUT:\n{result.stdout[-4000:]}'
                                    f'\nSTDERR:\n{result.stderr[-6000:]}')


def tiny_cocktail_config(path, cocktail_args, helper_module, helper_hook, extra=''):
    """Write a Sparse Cocktail config of the tests' tiny detector to ``path`` and return it.

    Args:
        path: The config file to write.
        cocktail_args: ``SparseCocktailHook``'s keyword arguments as config source text,
            e.g. ``"joint_dense=True"``.
        helper_module: The tests/helpers module to import, e.g. ``'loss_keys_hook'``.
        helper_hook: The hook it registers, added after the two mmsparse hooks.
        extra: More config lines (e.g. ``train_cfg``), appended as written.
    """
    path.write_text(textwrap.dedent(f'''
        _base_ = ['{TINY_CONFIG}', '{REPO}/configs/_base_/sparsity/cocktail.py']
        custom_imports = dict(imports=['{helper_module}'])
        custom_hooks = [
            dict(type='mmsparse.SparseSubnetsHook', subnets='cocktail'),
            dict(type='mmsparse.SparseCocktailHook', {cocktail_args}),
            dict(type='{helper_hook}'),
        ]
    ''') + textwrap.dedent(extra))
    return path


def train(cfg, work, *args):
    """Run ``tools/train.py cfg --work-dir work *args``; fail with the tool's own output on
    error; return its log (stdout + stderr)."""
    result = run_tool(['tools/train.py', cfg, '--work-dir', work, *args])
    assert_ok(result)
    return result.stdout + result.stderr


def train_two_ranks(cfg, work, port):
    """Train ``cfg`` in two gloo processes with ``tools/dist_train.sh``.

    Returns:
        (the log, ``[rank 0, rank 1]`` dumps of tests/helpers' SubnetTraceHook
        (``trace_rank<r>.pth``), the same of RankWeightDumpHook (``rank<r>_params.pth``));
        a dump is None when the config has no such hook.
    """
    result = run_tool(['bash', 'tools/dist_train.sh', cfg, '2', '--work-dir', work],
                      env={'PORT': str(port)})
    assert_ok(result)

    def dumps(pattern):
        files = [work / pattern.format(rank) for rank in (0, 1)]
        return [torch.load(f, weights_only=True) for f in files] if files[0].exists() else None
    return (result.stdout + result.stderr, dumps('trace_rank{}.pth'),
            dumps('rank{}_params.pth'))


def assert_same_tensors(a, b):
    """Two non-empty ``{name: tensor}`` dicts with the same names and equal tensors."""
    assert a and a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def checkpoint_state(path, masks=None):
    """A checkpoint's state dict: every entry (``masks=None``), only the mask buffers
    (True) or only the rest (False)."""
    state = torch.load(path, map_location='cpu', weights_only=True)['state_dict']
    if masks is None:
        return state
    return {k: v for k, v in state.items() if is_mask_key(k) == masks}


def load_tool(path):
    """A script under tools/ (e.g. ``'tools/select_subnet.py'``) imported as a module, so
    tests can call its functions and ``main``."""
    path = REPO / path
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
