#!/usr/bin/env bash
# LLaMA-Factory 0.9.5 (the training peer of benchmarks/train_vs_peer.py) in its own virtual environment,
# outside glmtune's: it never enters glmtune's requirements. CPU only.
#
#   bash benchmarks/peer/setup_llamafactory.sh VENV      # e.g. /tmp/lfvenv (about 2.1 GB, a few minutes)
#
# A plain `pip install llamafactory` resolves torchvision -> a CUDA torch that replaces the CPU build, so
# llamafactory goes in with --no-deps and its own requirements with torch pinned to the CPU 2.13.0.
# llamafactory imports torchaudio unconditionally; PyPI's torchaudio 2.11.0 is a CUDA build, so its native
# libraries are moved aside (it then imports in pure-Python mode; audio is unused here).
set -euo pipefail
VENV="${1:?usage: setup_llamafactory.sh VENV}"
LF_VERSION="${LF_VERSION:-0.9.5}"
PY="${PYTHON:-python3.11}"

"$PY" -m venv "$VENV"
# shellcheck disable=SC1091
. "$VENV/bin/activate"
pip install -q --upgrade pip
pip install -q torch==2.13.0
pip install -q --no-deps "llamafactory==$LF_VERSION" torchaudio==2.11.0
python - >"$VENV/lf_requirements.txt" <<'PY'
from importlib.metadata import requires
from pip._vendor.packaging.requirements import Requirement
for r in requires("llamafactory") or []:
    req = Requirement(r)
    if req.marker is not None and "extra" in str(req.marker):
        continue
    if req.name in ("torch", "torchvision", "torchaudio"):
        continue
    print(r)
PY
echo "torch==2.13.0" >"$VENV/torch_pin.txt"
pip install -q -c "$VENV/torch_pin.txt" -r "$VENV/lf_requirements.txt"
ta=$(python -c "import importlib.util,os;print(os.path.dirname(importlib.util.find_spec('torchaudio').origin))")
mkdir -p "$VENV/torchaudio_so_removed"
mv "$ta"/lib/*.so "$VENV/torchaudio_so_removed/" 2>/dev/null || true
python -c "import torch, llamafactory; print('llamafactory', llamafactory.__version__, 'torch', torch.__version__)"
