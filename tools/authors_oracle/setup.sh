#!/usr/bin/env bash
# The generator's own environment: Python 3.9 (pyenv) with MXNet 1.9.1 on the CPU, from PyPI.
# Usage: tools/authors_oracle/setup.sh [VENV]   (default: tools/authors_oracle/.venv, git-ignored)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="${1:-$here/.venv}"
python="${PYTHON39:-$(pyenv root 2>/dev/null)/versions/3.9.18/bin/python}"
if [ ! -x "$python" ]; then
  echo "setup.sh: no Python 3.9 at $python; install one (pyenv install 3.9.18) or set PYTHON39" >&2
  exit 1
fi
"$python" -m venv "$venv"
# mxnet 1.9.1 needs numpy < 1.24 (it uses np.bool); tqdm is imported by the authors' train.py.
"$venv/bin/pip" install --quiet "mxnet==1.9.1" "numpy==1.23.5" "tqdm==4.66.5"
"$venv/bin/python" -c "import mxnet, numpy; print('mxnet', mxnet.__version__, 'numpy', numpy.__version__)"
