"""Shared fixtures: the repository paths and the tests' tiny shapes dataset."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mmsparse.datasets.shapes import ShapesSpec, dataset_is_current, make_shapes_dataset

REPO = Path(__file__).resolve().parents[1]
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
