#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment in .venv/ at the repository root.
#
# Idempotent and fast when nothing changed: a stamp file records a hash of the
# requirements, so a set-up checkout starts real work within seconds.
# mmcv 2.1.0 (mmdet 3.3.0 accepts mmcv < 2.2.0) has no wheel for recent torch on PyPI, so it is
# compiled from source against the installed torch: about 20 minutes on 2 CPU cores, once per
# machine, because pip caches the built wheel under ~/.cache/pip.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
venv="$root/.venv"
py="${PYTHON:-python3}"
stamp="$venv/.mmsparse-setup"
want="$(cat requirements/*.txt setup.py tools/setup_env.sh | sha256sum | cut -d' ' -f1)"

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$venv/bin/python" ]; then
  exit 0
fi
echo "[setup] creating the environment in $venv (mmcv compiles once: ~20 min on 2 cores)"
[ -x "$venv/bin/python" ] || "$py" -m venv "$venv"
pip=("$venv/bin/python" -m pip install --disable-pip-version-check)
"${pip[@]}" -q --upgrade pip
# torch first, because mmcv's ops compile against it. The project is tested with torch 2.13.0
# (CPU build) and needs torch >= 2.1; TORCH_SPEC picks another version or build (e.g. CUDA),
# and a torch already importable in the environment is kept.
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
"$venv/bin/python" -c "import torch" 2>/dev/null || "${pip[@]}" "$TORCH_SPEC"
"${pip[@]}" -r requirements/build.txt
# mmcv's ops compile against the installed torch, so no build isolation.
"$venv/bin/python" -c "import mmcv.ops" 2>/dev/null || \
  MAX_JOBS="${MAX_JOBS:-2}" "${pip[@]}" --no-build-isolation "mmcv==2.1.0"
"${pip[@]}" -r requirements/runtime.txt -r requirements/tests.txt
"${pip[@]}" --no-build-isolation --no-deps -e .
"$venv/bin/python" -c "import mmcv.ops, mmdet, mmsparse; print('[setup] ok: mmcv', mmcv.__version__, 'mmdet', mmdet.__version__)"
echo "$want" > "$stamp"
