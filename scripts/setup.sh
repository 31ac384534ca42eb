#!/usr/bin/env bash
# Set up modeldiff in ./.venv: torch 2.13 (CPU), the project with its test extras, and auto_LiRPA 0.3.
# auto_LiRPA 0.3 (the only PyPI release usable here) declares torch<1.13, so it is installed with --no-deps;
# modeldiff._lirpa patches it for torch 2 and numpy 2. Safe to run again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
PIP=(.venv/bin/python -m pip install -q --disable-pip-version-check)
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  "${PIP[@]}" "torch==2.13.0"
fi
"${PIP[@]}" -e ".[dev]"
if ! .venv/bin/python -c "import importlib.metadata as m; m.version('auto_LiRPA')" 2>/dev/null; then
  "${PIP[@]}" --no-deps "auto_LiRPA==0.3"
fi
.venv/bin/python -c "import modeldiff._lirpa as l; l.load(); print('modeldiff set up: auto_LiRPA', l.installed_version(), 'patches', l.applied_patches())"
