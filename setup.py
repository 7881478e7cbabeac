"""Install mmsparse: ``pip install -e .`` (tools/setup_env.sh does it for you)."""
from pathlib import Path

from setuptools import find_packages, setup


def read_requirements(name):
    """Requirement lines of ``requirements/<name>.txt`` without comments."""
    lines = Path(__file__).parent.joinpath('requirements', name).read_text().splitlines()
    return [line.split('#')[0].strip() for line in lines if line.split('#')[0].strip()]


version = {}
exec(Path(__file__).parent.joinpath('mmsparse', 'version.py').read_text(), version)

setup(
    name='mmsparse',
    version=version['__version__'],
    description='Switchable sparse subnetworks (dense, unstructured, channel, N:M) '
    'for MMDetection: train once, deploy any subnet.',
    long_description=Path(__file__).parent.joinpath('README.md').read_text(),
    long_description_content_type='text/markdown',
    license='Apache-2.0',
    packages=find_packages(exclude=('configs', 'tools', 'tests', 'benchmarks')),
    python_requires='>=3.8',
    install_requires=read_requirements('runtime.txt'),
    extras_require=dict(tests=read_requirements('tests.txt')),
    zip_safe=False,
)
