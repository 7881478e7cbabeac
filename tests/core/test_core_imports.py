"""mmsparse.core is framework-free: importing any of its modules pulls in no mmengine, mmdet
or mmcv."""
import subprocess
import sys


def test_core_imports_torch_only():
    code = ('import importlib, pkgutil, sys, mmsparse.core as core\n'
            "names = [m.name for m in pkgutil.walk_packages(core.__path__, 'mmsparse.core.')]\n"
            'for name in names:\n'
            '    importlib.import_module(name)\n'
            "assert len(names) > 20, names\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
            "('mmengine', 'mmdet', 'mmcv'))\n"
            'print(bad)\n'
            'assert not bad, bad\n')
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
