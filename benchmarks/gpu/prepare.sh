#!/usr/bin/env bash
# Run HERE (a machine with PyPI), before a GPU session: downloads the wheels the GPU image lacks into
# benchmarks/gpu/wheels (git-ignored; a device run carries it: carry ["benchmarks/gpu/wheels"]).
#
#   benchmarks/gpu/prepare.sh                  # for the GPU image's Python (3.12)
#   GPU_PYTHON=3.11 benchmarks/gpu/prepare.sh  # for another Python
#
# The image has torch (CUDA), JAX (CUDA), pytorch-lightning, tensorboard, numpy, scipy, flax, chex, optax,
# matplotlib and pillow; it lacks what is listed below (the versions setup.py pins, and what they import).
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
GPU_PYTHON=${GPU_PYTHON:-3.12}
WHEELS=(
  torchrl==0.14.1 tensordict==0.14.3 hoptorch==0.1.4 pyvers==0.2.3 orjson==3.13.0 importlib_metadata==10.2.0
  jsonargparse==4.53.0 docstring_parser==0.18.0 typeshed_client==2.15.0
  jaxmarl==0.2.0
)
rm -rf wheels.partial && mkdir wheels.partial
"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --dest wheels.partial \
  --python-version "$GPU_PYTHON" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
  "${WHEELS[@]}"
count=$(ls wheels.partial/*.whl | wc -l)
if [ "$count" -ne "${#WHEELS[@]}" ]; then
  echo "prepare.sh: expected ${#WHEELS[@]} wheels, got $count" >&2
  exit 1
fi
rm -rf wheels && mv wheels.partial wheels
size=$(du -sm wheels | cut -f1)
echo "benchmarks/gpu/wheels: $count wheels for CPython $GPU_PYTHON, ${size} MiB (a device run carries at most 64 MiB)"
if [ "$size" -gt 60 ]; then
  echo "prepare.sh: the wheels are too large to travel" >&2
  exit 1
fi
