#!/usr/bin/env bash
# Create (or update) the project's virtual environment: scripts/setup.sh [VENV_DIR]
#
# torch goes in first and by hand, because the right build depends on the machine:
# with an NVIDIA GPU we take PyPI's default (CUDA) wheel; without one we take the
# CPU build from PyTorch's CPU index, so a CPU-only machine never downloads the
# several-GB CUDA build. Everything else comes from pyproject.toml.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${1:-.venv}"
python="${PYTHON:-python3}"

if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "error: hybridnas needs Python >= 3.11, but $python is $("$python" -V 2>&1)" >&2
    exit 1
fi
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
pip="$venv/bin/python -m pip"
$pip install --quiet --upgrade pip

if ! "$venv/bin/python" -c 'import torch' 2>/dev/null; then
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
        echo "setup: NVIDIA GPU found, installing the CUDA build of torch"
        $pip install --quiet "torch>=2.4"
    else
        cpu_torch="${HYBRIDNAS_CPU_TORCH:-torch==2.13.0}"
        cpu_index=https://download.pytorch.org/whl/cpu
        if "$python" -c "import urllib.request as u; u.urlopen('$cpu_index/', timeout=5)" 2>/dev/null; then
            echo "setup: no NVIDIA GPU, installing $cpu_torch from PyTorch's CPU index"
            $pip install --quiet --index-url "$cpu_index" --extra-index-url https://pypi.org/simple "$cpu_torch"
        else
            # No CPU index reachable: only a CPU wheel that pip already knows locally
            # (find-links) will do; PyPI's Linux wheel would be the CUDA build.
            echo "setup: no NVIDIA GPU and no PyTorch CPU index; using a local CPU wheel of $cpu_torch"
            if ! $pip install --quiet --no-index --no-deps "$cpu_torch"; then
                echo "error: no CPU build of $cpu_torch reachable; install a CPU torch into $venv first" >&2
                exit 1
            fi
            $pip install --quiet "$cpu_torch"  # its pure-Python dependencies, from PyPI
        fi
    fi
fi

$pip install --quiet -e ".[dev,postgres]"
"$venv/bin/python" - <<'PY'
import torch
print(f"setup: torch {torch.__version__} (CUDA build: {torch.version.cuda is not None})")
PY
